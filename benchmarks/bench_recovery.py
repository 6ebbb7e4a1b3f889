"""Recovery: how soon a store writes again after its disk heals (incident 000's wedged queue).

The store runs the default profile plus ``accounting`` over the failpoint VFS (apsw driver,
``synchronous=NORMAL``), with ``circuit_breaker.cooldown_s = 1``. Each repetition, on a fresh file:

1. one good write, then a persistent ``SQLITE_IOERR`` is armed on every write to the database
   and its ``-wal``: the wedge;
2. ``store.run()`` writes fail until the breaker opens (``CircuitOpenError``), and rows are
   submitted to accounting, whose writer fails and keeps them (the backlog);
3. the fault is healed at ``t0``; the caller retries a write every 5 ms (what a service's next
   requests do) until one succeeds: **first write** = its time - ``t0``;
4. ``accounting.flush()`` waits for the backlog: **drained** = its return - ``t0``; every
   accepted row must be in the table.

Target for both: at most cooldown + 1 s. No baseline: a store without a breaker never stops
writing, and one without accounting loses the rows (incident 000); the number to watch is how
long corestore's own protection keeps a healed disk idle.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import Any

import attrs

import corestore
from corestore.profiles import resolve_profile

from ._runner import bench_dir, missing_plugins, skipped_row, value_row

__all__ = ["run", "COOLDOWN_S"]

COOLDOWN_S = 1.0
TARGET = f"<= {COOLDOWN_S + 1:g}"
SCHEMA = "CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, ts REAL)"
INSERT = "INSERT INTO usage (n) VALUES (?)"
_RETRY_EVERY_S = 0.005
_BACKLOG_ROWS = 200
_GIVE_UP_S = 30.0


def _setup(store: corestore.Store) -> None:
    store.database.execute_sql(SCHEMA)


def _profile(path: str, vfs: str) -> corestore.Profile:
    base = resolve_profile("default", config=None, path=path)
    settings = {k: dict(v) for k, v in base.settings.items()}
    settings.setdefault("circuit_breaker", {})["cooldown_s"] = COOLDOWN_S
    return attrs.evolve(
        base,
        name="bench-recovery",
        driver="apsw",
        vfs=vfs,
        plugins=tuple(base.plugins) + ("accounting",),
        pragmas={**base.pragmas, "synchronous": "normal"},
        settings=settings,
    )


def _once(fp: Any, root: str, rep: int) -> dict[str, float]:
    path = os.path.join(root, f"recovery-{rep}.db")
    store = corestore.open(_profile(path, fp.name), setup=_setup)
    try:
        accounting = store.plugin("accounting")
        execute = store.database.execute_sql
        store.run(lambda: execute(INSERT, (0,)))

        fault = fp.arm(op=("write", "sync"), file="any", code="IOERR", database=path)
        tripped_after = None
        for attempt in range(1, 100):
            try:
                store.run(lambda n=attempt: execute(INSERT, (n,)))
            except corestore.CircuitOpenError:
                tripped_after = attempt
                break
            except corestore.StoreError:
                continue
        if tripped_after is None:
            raise RuntimeError("the circuit breaker never opened under a persistent SQLITE_IOERR")
        accepted = sum(bool(accounting.submit("usage", {"n": 1000 + i})) for i in range(_BACKLOG_ROWS))
        if accepted != _BACKLOG_ROWS:
            raise RuntimeError(f"accounting accepted {accepted}/{_BACKLOG_ROWS} rows")

        t0 = time.monotonic()
        fp.heal(fault)
        first_write = None
        while time.monotonic() - t0 < _GIVE_UP_S:
            try:
                store.run(lambda: execute(INSERT, (-1,)))
                first_write = time.monotonic() - t0
                break
            except corestore.StoreError:
                time.sleep(_RETRY_EVERY_S)
        if first_write is None:
            raise RuntimeError(f"no successful write within {_GIVE_UP_S:.0f} s of healing")
        if not accounting.flush(_GIVE_UP_S):
            raise RuntimeError(f"the accounting backlog did not drain within {_GIVE_UP_S:.0f} s of healing: {accounting.stats()}")
        drained = time.monotonic() - t0
        backlog = store.database.execute_sql("SELECT count(*) FROM usage WHERE n >= 1000").fetchone()[0]
        if backlog != _BACKLOG_ROWS:
            raise RuntimeError(f"{backlog}/{_BACKLOG_ROWS} backlog rows written: {accounting.stats()}")
        return {"first_write": first_write, "drained": drained, "tripped_after": tripped_after}
    finally:
        store.close()


def run(quick: bool) -> dict[str, Any]:
    reps = 3 if quick else 7
    names = ("recovery.first_write", "recovery.drained")
    base = resolve_profile("default", config=None, path="")
    why = missing_plugins(tuple(base.plugins) + ("accounting",))
    if why is None:
        try:
            from corestore_contrib.failpoint import FailpointVFS
        except ImportError as err:
            why = f"the failpoint harness is not importable ({type(err).__name__}: {err})"
    if why:
        return {"rows": [skipped_row(n, why, target=TARGET) for n in names]}

    root = bench_dir("recovery")
    results = []
    try:
        with FailpointVFS(f"bench-recovery-{uuid.uuid4().hex[:8]}") as fp:
            for rep in range(reps):
                results.append(_once(fp, root, rep))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    common = dict(target=TARGET, unit="s", cooldown_s=COOLDOWN_S, backlog_rows=_BACKLOG_ROWS,
                  tripped_after=[r["tripped_after"] for r in results])
    return {
        "rows": [
            value_row("recovery.first_write", [r["first_write"] for r in results],
                      label="heal -> first successful store.run()", **common),
            value_row("recovery.drained", [r["drained"] for r in results],
                      label="heal -> accounting backlog written", **common),
        ],
        "notes": [f"cooldown_s = {COOLDOWN_S:g}; the fault is healed right after the breaker opens, so the "
                  "first write waits out (almost) the whole cooldown; the 'pairs' column counts repetitions"],
    }
