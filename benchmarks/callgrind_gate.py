"""Instructions per uncontended write transaction with and without ``write_gate`` (issue 19).

Not a benchmark module (no ``run``): a measurement script for valgrind's callgrind, which counts
user-space instructions (the gate's fcntl and futex system calls are kernel time, not counted:
the wall-time row ``contention.single_writer`` covers them). Usage::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.callgrind_gate PROFILE N DIR

``PROFILE`` is ``default`` (the default profile without write_gate, whether or not this SQLite's
default carries it), ``gate`` (the default profile + write_gate), ``minimal`` or ``minimal+gate``;
``N`` the number of single-row ``store.run()`` inserts; the instructions per transaction are the
difference between ``N`` and ``0`` divided by ``N`` (``python -m benchmarks.callgrind_gate
--compare DIR [CASE ...]`` does it, every case by default, with ``PYTHONHASHSEED=0``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import attrs

import corestore
from corestore.profiles import resolve_profile

__all__ = ["main"]


#: case -> (profile, with write_gate). ``default`` may carry write_gate already (on a SQLite with the
#: WAL-reset bug): the cases name it explicitly either way.
CASES = {"default": ("default", False), "gate": ("default", True), "minimal": ("minimal", False),
         "minimal+gate": ("minimal", True), "gate.steady": ("default", True), "minimal+gate.steady": ("minimal", True)}
#: ``*.steady``: the gate with a turn that never ends during the run. Under callgrind a transaction
#: takes ~60 times as long as it does (about 1.5 ms instead of 23 µs), so with the shipped turn
#: length a lone writer's turn would end every few transactions and renew through the slow path
#: (two fcntl calls under META), which in real time happens once per turn (once per ~50-200
#: transactions): the steady cases count what every transaction that resumes its kept place
#: costs; the plain ``gate`` cases show the slow clock's artefact as well.
STEADY_TURN_S = 3600.0


def _workload(which: str, n: int, directory: str) -> None:
    profile_name, gated = CASES[which]
    base = resolve_profile(profile_name, config=None, path="")
    plugins = tuple(p for p in base.plugins if p != "write_gate") + (("write_gate",) if gated else ())
    path = os.path.join(directory, f"cg-{which.replace('+', '-').replace('.', '-')}-{n}-{os.getpid()}.db")
    settings = dict(base.settings)
    if which.endswith(".steady"):
        settings["write_gate"] = {**settings.get("write_gate", {}), "turn_s": STEADY_TURN_S, "round_s": STEADY_TURN_S}
    profile = attrs.evolve(base, path=path, plugins=plugins, pragmas={**base.pragmas, "synchronous": "normal"},
                           settings=settings)
    store = corestore.open(profile)
    ex = store.database.execute_sql
    ex("CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, n INTEGER, payload TEXT)")
    for _ in range(50):  # warm: every code path imported and cached
        store.run(lambda: ex("INSERT INTO event (n, payload) VALUES (?, ?)", (0, "y" * 64)))
    for i in range(n):
        store.run(lambda i=i: ex("INSERT INTO event (n, payload) VALUES (?, ?)", (i, "y" * 64)))
    store.close()
    for suffix in ("", "-wal", "-shm", ".corestore-lock", ".corestore-gate"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def _instructions(which: str, n: int, directory: str) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
         "benchmarks.callgrind_gate", which, str(n), directory],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = re.search(r"Collected\s*:\s*([\d,]+)", proc.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {proc.stderr[-500:]}")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--compare":
        directory = argv[1] if len(argv) > 1 else tempfile.gettempdir()
        n = 2000
        cases = argv[2:] or list(CASES)
        for which in cases:
            per = (_instructions(which, n, directory) - _instructions(which, 0, directory)) / n
            print(f"{which}: {per:,.0f} instructions per transaction", flush=True)
        return 0
    _workload(argv[0], int(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
