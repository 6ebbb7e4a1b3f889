"""CPU instructions per transaction, counted by callgrind: ``python -m benchmarks.instructions``.

Wall-clock ratios on a shared two-core machine wander by a few per cent; an instruction count
does not. Each case runs in a child process under ``valgrind --tool=callgrind`` twice, once with
200 and once with 1200 transactions after the same set-up; the difference divided by 1000 is the
cost of one transaction, start-up and imports cancelled out. The database lives on ``/dev/shm``
(a RAM file system, so no fsync wait hides anything) with WAL, ``synchronous=NORMAL``,
``busy_timeout=5000`` and ``wal_autocheckpoint=1000``, as ``benchmarks.bench_hotpath`` uses.

Cases: single-row write transactions (one ``INSERT`` through ``execute_sql``) with bare peewee
``db.atomic("IMMEDIATE")``, ``store.transaction()`` on the ``minimal`` and the ``default`` profile
(synchronous evolved to NORMAL; the default keeps its own ``wal_autocheckpoint``, 0 where it
carries the WAL-reset mitigation), and on ``minimal`` plus each of the default's plugins alone
(``+wal_guard.write`` ...: what each policy costs); the same unit through ``store.run()``
(``*.run``); read transactions (one ``SELECT`` by primary key) with bare peewee
``db.atomic("DEFERRED")`` and ``store.read()`` on both profiles; and ``mixed``: a write
transaction then a read transaction per iteration (a read that follows a write pays for
switching ``PRAGMA query_only`` on, and the next write for switching it off).

``*.open`` (issue 18's ``open.fresh``, counted): per open, (run of 60 - run of 10) / 50, each
open a WAL database (made with plain ``sqlite3``) this process has not opened before, after 5
such opens warmed it up, then closed: a peewee connect + the default profile's pragmas + the
schema's ``CREATE ... IF NOT EXISTS`` (``peewee.open``) against ``corestore.open(setup=)`` on
``minimal`` (no plugins) and ``default``. Closing is counted on both sides; ``--dumps`` does not
apply (two runs as usual).

System calls per transaction are counted the same way with ``strace -c -f`` (every thread:
the checkpoint governor's included) when strace is installed: (calls in the run of 1200 - calls
in the run of 200) / 1000. callgrind counts user-space instructions only; the system calls show
what moved into the kernel.

Not part of ``python -m benchmarks`` (it needs valgrind and takes minutes). Options:
``--only NAME`` (repeatable), ``--dir DIR`` (default ``/dev/shm``), ``--json FILE``,
``--no-syscalls``, ``--jobs N`` (cases measured side by side; the counts do not depend on it),
``--dumps`` (one callgrind run per case instead of two: the counts are dumped after 200 and after
1000 more transactions in the same process, and the difference is divided by 800; it agrees with
the two-run figure within about 0.5 %).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ["CASES", "count_child", "measure", "main"]

#: the default profile's plugins, each measured alone on top of ``minimal`` (``+NAME.write``)
POLICIES = ("wal_guard", "wal_invariants", "circuit_breaker", "health", "checkpoint_governor")
CASES: dict[str, str] = {
    "peewee.write": 'bare peewee db.atomic("IMMEDIATE") + INSERT',
    "minimal.write": "store.transaction() + INSERT, minimal profile",
    "default.write": "store.transaction() + INSERT, default profile (synchronous=NORMAL)",
    **{f"+{p}.write": f"store.transaction() + INSERT, minimal + {p} alone" for p in POLICIES},
    "minimal.run": "store.run(fn), fn = one INSERT, minimal profile",
    "default.run": "store.run(fn), fn = one INSERT, default profile (synchronous=NORMAL)",
    "peewee.read": 'bare peewee db.atomic("DEFERRED") + SELECT by id',
    "minimal.read": "store.read() + SELECT by id, minimal profile",
    "default.read": "store.read() + SELECT by id, default profile (synchronous=NORMAL)",
    "peewee.mixed": 'bare peewee: a write transaction, then a read transaction (per pair)',
    "minimal.mixed": "store.transaction() then store.read() (per pair), minimal profile",
    "default.mixed": "store.transaction() then store.read() (per pair), default profile (synchronous=NORMAL)",
    **{f"{who}.open": f"{what}, then close it (per open)" for who, what in (
        ("peewee", "peewee connect + the default profile's pragmas + the schema's CREATE ... IF NOT EXISTS"),
        ("minimal", "corestore.open(setup=) of a database this process has not opened, minimal profile"),
        ("default", "corestore.open(setup=) of a database this process has not opened, default profile"),
    )},
}
SMALL, LARGE = 200, 1200
#: ``*.open`` cases: fewer, costlier units (per open = (run of 60 - run of 10) / 50)
OPEN_SMALL, OPEN_LARGE = 10, 60
PRAGMAS: dict[str, Any] = {"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal", "wal_autocheckpoint": 1000}
SCHEMA = "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER NOT NULL, payload TEXT)"
INSERT = "INSERT INTO event (kind, n, payload) VALUES (?, ?, ?)"
SELECT = "SELECT kind, n FROM event WHERE id = ?"
PAYLOAD = "x" * 64
_WARMUP = 50
_OPEN_WARMUP = 5


def _child(case: str, n: int, directory: str) -> None:
    """Set up ``case`` in ``directory``, warm it up, then run ``n`` transactions (``n`` = 0: the
    ``--dumps`` variant: 200 then 1000 more, callgrind dumping its counts before, between, after)."""
    import attrs
    import peewee

    import corestore
    from corestore.profiles import resolve_profile

    who, what = case.split(".")
    if what == "open":
        _child_open(who, n, directory)
        return
    path = os.path.join(directory, f"{who}.db")
    if who == "peewee":
        ordered = sorted(PRAGMAS.items(), key=lambda kv: kv[0] != "busy_timeout")
        db = peewee.SqliteDatabase(path, pragmas=ordered)
        db.connect()
        execute = db.execute_sql
        execute(SCHEMA)
        write_cm = lambda: db.atomic("IMMEDIATE")  # noqa: E731
        read_cm = lambda: db.atomic("DEFERRED")  # noqa: E731
        close = db.close
        store: Any = None
    else:
        if who.startswith("+"):  # one policy alone on top of minimal
            profile = resolve_profile("minimal", config=None, path=path)
            profile = attrs.evolve(profile, plugins=(who[1:],))
        else:
            profile = resolve_profile(who, config=None, path=path)
        pragmas = {**profile.pragmas, **PRAGMAS}
        if "wal_autocheckpoint" in profile.pragmas:  # the default's own (0 with the WAL-reset mitigation)
            pragmas["wal_autocheckpoint"] = profile.pragmas["wal_autocheckpoint"]
        profile = attrs.evolve(profile, pragmas=pragmas)
        store = corestore.open(profile)
        execute = store.database.execute_sql
        execute(SCHEMA)
        write_cm = store.transaction
        read_cm = store.read
        close = store.close
    for i in range(_WARMUP):
        with write_cm():
            execute(INSERT, ("warm", i, PAYLOAD))
    if n == 0:  # --dumps: one process, callgrind's counts dumped at each boundary
        def dump() -> None:
            subprocess.run(["callgrind_control", "--dump", str(os.getpid())], capture_output=True, check=False)

        dump()
        _loop(what, SMALL, write_cm, read_cm, execute, store)
        dump()
        _loop(what, LARGE - SMALL, write_cm, read_cm, execute, store)
        dump()
        close()
        return
    _loop(what, n, write_cm, read_cm, execute, store)
    close()


def _child_open(who: str, n: int, directory: str) -> None:
    """``*.open``: ``n`` opens (and closes) of databases this process has not opened before, after
    ``_OPEN_WARMUP`` of the same (imports, entry points, hook tables warm: the ``open.fresh``
    situation of ``benchmarks.bench_open``). Every run makes the same ``OPEN_LARGE + _OPEN_WARMUP``
    WAL databases with plain ``sqlite3`` first, so making them cancels out of the difference.
    The default profile's pragmas (``synchronous=FULL``) for all three; the schema is
    ``bench_open.DDL``, run by ``setup=`` (corestore) or after connecting (peewee)."""

    import attrs
    import peewee

    import corestore
    from corestore.profiles import resolve_profile

    from .bench_open import DDL, _existing_databases, create_schema

    paths = _existing_databases(directory, OPEN_LARGE + _OPEN_WARMUP)
    default = resolve_profile("default", config=None, path=paths[0])
    if who == "peewee":
        ordered = sorted(default.pragmas.items(), key=lambda kv: kv[0] != "busy_timeout")

        def open_close(path: str) -> None:
            db = peewee.SqliteDatabase(path, pragmas=ordered)
            db.connect()
            for statement in DDL:
                db.execute_sql(statement)
            db.close()
    else:
        profile = resolve_profile(who, config=None, path=paths[0])
        # one profile per path, made beforehand for every path (the same work in every run):
        # what is counted is open() and close(), as bench_open times open() alone
        profiles = {path: attrs.evolve(profile, path=path) for path in paths}

        def open_close(path: str) -> None:
            corestore.open(profiles[path], setup=create_schema).close()
    for path in paths[:_OPEN_WARMUP]:
        open_close(path)
    for path in paths[_OPEN_WARMUP:_OPEN_WARMUP + n]:
        open_close(path)


def _loop(what: str, n: int, write_cm: Any, read_cm: Any, execute: Any, store: Any) -> None:
    if what == "write":
        for i in range(n):
            with write_cm():
                execute(INSERT, ("hot", i, PAYLOAD))
    elif what == "run":
        run = store.run
        for i in range(n):
            run(lambda i=i: execute(INSERT, ("hot", i, PAYLOAD)))
    elif what == "read":
        for i in range(n):
            with read_cm():
                execute(SELECT, (1 + i % _WARMUP,)).fetchone()
    else:  # mixed: every read follows a write (the read path's worst case: query_only switches twice)
        for i in range(n):
            with write_cm():
                execute(INSERT, ("hot", i, PAYLOAD))
            with read_cm():
                execute(SELECT, (1 + i % _WARMUP,)).fetchone()


def _instructions(outfile: str) -> int:
    with open(outfile, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"{outfile}: no instruction total found")


def count_child(module: str, what: str, child_args: Callable[[str], list[str]], directory: str | None = None) -> int:
    """Instructions of ``python -m module --child *child_args(work)`` under callgrind
    (``PYTHONHASHSEED=0``), ``work`` a fresh directory (under ``directory``) removed afterwards;
    ``what`` names the run in its temporary directory and in the error of a failed child."""
    work = tempfile.mkdtemp(prefix=f"corestore-instr-{what}-", dir=directory)
    out = os.path.join(work, "callgrind.out")
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
           module, "--child", *child_args(work)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{what}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        return _instructions(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_once(case: str, n: int, directory: str) -> int:
    return count_child("benchmarks.instructions", f"{case}-{n}", lambda work: [case, str(n), work], directory)


def _sizes(case: str) -> tuple[int, int]:
    return (OPEN_SMALL, OPEN_LARGE) if case.endswith(".open") else (SMALL, LARGE)


def measure(case: str, directory: str = "/dev/shm") -> float:
    """Instructions per transaction of ``case``: (run of 1200 - run of 200) / 1000 (``*.open``:
    per open, (run of 60 - run of 10) / 50)."""
    small, large = _sizes(case)
    return (_run_once(case, large, directory) - _run_once(case, small, directory)) / (large - small)


def measure_dumps(case: str, directory: str = "/dev/shm") -> float:
    """``--dumps``: one process under callgrind, its counts dumped (``callgrind_control --dump``)
    after the warm-up, after 200 transactions and after 1000 more: (last part - middle part) / 800.
    Half the valgrind time of :func:`measure`; the same quantity (start-up cancelled by the
    difference, the dump's own cost in both parts)."""
    work = tempfile.mkdtemp(prefix=f"corestore-instr-{case}-", dir=directory)
    out = os.path.join(work, "callgrind.out")
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
           "benchmarks.instructions", "--child", case, "0", work]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{case} (dumps): exit {proc.returncode}\n{proc.stderr[-2000:]}")
        parts = [_instructions(f"{out}.{i}") for i in (1, 2, 3)]
        return (parts[2] - parts[1]) / (LARGE - 2 * SMALL)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _syscalls_once(case: str, n: int, directory: str) -> int:
    work = tempfile.mkdtemp(prefix=f"corestore-strace-{case}-", dir=directory)
    out = os.path.join(work, "strace.out")
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = ["strace", "-c", "-f", "-o", out, sys.executable, "-m", "benchmarks.instructions", "--child", case,
           str(n), work]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{case} n={n}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        with open(out, encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if fields and fields[-1] == "total":
                    return int(fields[3])
        raise RuntimeError(f"{out}: no strace total found")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_syscalls(case: str, directory: str = "/dev/shm") -> float:
    """System calls per transaction of ``case`` (every thread): (run of 1200 - run of 200) / 1000
    (``*.open``: per open, as :func:`measure`)."""
    small, large = _sizes(case)
    return (_syscalls_once(case, large, directory) - _syscalls_once(case, small, directory)) / (large - small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="measure only this case (repeatable)")
    parser.add_argument("--dir", default="/dev/shm", help="where the databases live (default /dev/shm)")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--no-syscalls", action="store_true", help="do not count system calls (strace)")
    parser.add_argument("--jobs", type=int, default=1, help="measure this many cases at once (counts do not change)")
    parser.add_argument("--dumps", action="store_true",
                        help="one callgrind run per case, counts dumped between 200 and 1000 more transactions")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, n, directory = args.child
        _child(case, int(n), directory)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    strace = not args.no_syscalls and shutil.which("strace") is not None
    results: dict[str, float] = {}
    syscalls: dict[str, float] = {}
    print(f"{'case':<26} {'instructions/txn':>17} {'x peewee':>9} {'syscalls/txn':>13}  what")
    cases = args.only or list(CASES)

    def both(case: str) -> tuple[float, float | None]:
        count = measure_dumps(case, args.dir) if args.dumps and not case.endswith(".open") else measure(case, args.dir)
        calls = measure_syscalls(case, args.dir) if strace else None
        print(f"  measured {case}: {count:,.0f} instructions, {calls} system calls per transaction", file=sys.stderr,
              flush=True)
        return count, calls

    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        measured = dict(zip(cases, pool.map(both, cases), strict=True))
    for case in cases:
        results[case], calls_or_none = measured[case]
        if calls_or_none is not None:
            syscalls[case] = calls_or_none
    for case in cases:
        what = case.split(".")[1]
        base = results.get(f"peewee.{'write' if what == 'run' else what}")
        ratio = f"{results[case] / base:.3f}" if base else "-"
        calls = f"{syscalls[case]:.2f}" if case in syscalls else ""
        print(f"{case:<26} {results[case]:>17,.0f} {ratio:>9} {calls:>13}  {CASES[case]}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"instructions": results, "syscalls": syscalls}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
