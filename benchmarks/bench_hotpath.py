"""Hot path: single-row write transactions, ``store.transaction()`` against bare peewee
``db.atomic("IMMEDIATE")``.

Both sides get their own database file with the same schema and exactly the same pragmas
(WAL, ``synchronous=NORMAL``, ``busy_timeout=5000``, ``wal_autocheckpoint=1000``; read back and
compared before measuring), and run the same statement through peewee's ``execute_sql``: one
``INSERT`` per transaction, the strictest view of corestore's per-transaction overhead (a model
call would add the same cost on both sides and hide it).

* ``hotpath.minimal``: the ``minimal`` profile (no plugins): the core's own cost. Target <= 1.05.
* ``hotpath.default``: the built-in ``default`` profile (wal_guard, wal_invariants,
  circuit_breaker, health) with ``synchronous`` evolved to NORMAL. Target <= 1.15.
* ``hotpath.default_full``: the ``default`` profile as shipped (``synchronous=FULL``: an fsync of
  ``-wal`` per commit) against peewee with the same pragmas. Reported: what durability costs per
  transaction, and how much of it is corestore's (fewer transactions per sample: each one waits
  for the disk).
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs
import peewee

import corestore
from corestore.profiles import resolve_profile

from ._runner import bench_dir, measure_pairs, missing_plugins, pair_row, skipped_row

__all__ = ["run", "breakdown", "PRAGMAS", "SCHEMA", "INSERT"]

PRAGMAS: dict[str, Any] = {"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal", "wal_autocheckpoint": 1000}
SCHEMA = "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER NOT NULL, payload TEXT)"
INSERT = "INSERT INTO event (kind, n, payload) VALUES (?, ?, ?)"
PAYLOAD = "x" * 64
_READBACK = ("journal_mode", "synchronous", "busy_timeout", "wal_autocheckpoint")


def _effective(execute: Callable[[str], Any]) -> dict[str, Any]:
    return {name: execute(f"PRAGMA {name}").fetchone()[0] for name in _READBACK}


def baseline_database(path: str, pragmas: dict[str, Any]) -> peewee.SqliteDatabase:
    """Bare peewee, as a user would write it: the same pragmas, busy_timeout first."""
    ordered = sorted(pragmas.items(), key=lambda kv: kv[0] != "busy_timeout")
    db = peewee.SqliteDatabase(path, pragmas=ordered)
    db.connect()
    db.execute_sql(SCHEMA)
    return db


def _pair(label: str, profile: corestore.Profile, *, n: int, pairs: int, target: str, root: str) -> dict[str, Any]:
    store_path = profile.path
    db = baseline_database(os.path.join(root, f"{label}-peewee.db"), dict(profile.pragmas))
    store = corestore.open(profile)
    try:
        store.database.execute_sql(SCHEMA)
        pragmas_b = _effective(db.execute_sql)
        pragmas_c = _effective(store.database.execute_sql)
        if pragmas_b != pragmas_c:
            raise RuntimeError(f"pragmas differ: peewee {pragmas_b} vs corestore {pragmas_c}")

        # Each sample starts from an empty -wal (a TRUNCATE checkpoint, not timed), so both sides
        # meet the same automatic checkpoints at the same points of the loop.
        def baseline() -> float:
            db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            atomic, execute = db.atomic, db.execute_sql
            start = time.perf_counter()
            for i in range(n):
                with atomic("IMMEDIATE"):
                    execute(INSERT, ("hot", i, PAYLOAD))
            return time.perf_counter() - start

        def with_corestore() -> float:
            store.checkpoint("TRUNCATE")
            transaction, execute = store.transaction, store.database.execute_sql
            start = time.perf_counter()
            for i in range(n):
                with transaction():
                    execute(INSERT, ("hot", i, PAYLOAD))
            return time.perf_counter() - start

        samples = measure_pairs(baseline, with_corestore, pairs=pairs)
        rows_b = db.execute_sql("SELECT count(*) FROM event").fetchone()[0]
        rows_c = store.database.execute_sql("SELECT count(*) FROM event").fetchone()[0]
        expected = n * (pairs + 1)  # + the warm-up pair
        if rows_b != expected or rows_c != expected:
            raise RuntimeError(f"row counts: peewee {rows_b}, corestore {rows_c}, expected {expected}")
        stats = store.stats()
    finally:
        store.close()
        db.close()
    return pair_row(
        f"hotpath.{label}", samples, target=target, unit="µs/tx", scale=1e6 / n,
        baseline=f'peewee db.atomic("IMMEDIATE"), synchronous={profile.pragmas["synchronous"]}',
        corestore=f"store.transaction(), {profile.name} profile, synchronous={profile.pragmas['synchronous']}",
        transactions_per_sample=n, pragmas=pragmas_c, plugins=list(profile.plugins),
        store_path=os.path.basename(store_path), corestore_transactions=stats.get("transactions"),
    )


def run(quick: bool) -> dict[str, Any]:
    n = 500 if quick else 5000
    n_full = 50 if quick else 1000
    pairs = 7 if quick else 11
    root = bench_dir("hotpath")
    rows = []
    try:
        minimal = resolve_profile("minimal", config=None, path=os.path.join(root, "minimal-corestore.db"))
        minimal = attrs.evolve(minimal, pragmas=PRAGMAS)
        rows.append(_pair("minimal", minimal, n=n, pairs=pairs, target="<= 1.05", root=root))

        shipped = resolve_profile("default", config=None, path=os.path.join(root, "default-corestore.db"))
        why = missing_plugins(shipped.plugins)
        if why:
            rows.append(skipped_row("hotpath.default", why, target="<= 1.15"))
            rows.append(skipped_row("hotpath.default_full", why, target="report"))
        else:
            default = attrs.evolve(shipped, pragmas={**shipped.pragmas, "synchronous": "normal"})
            rows.append(_pair("default", default, n=n, pairs=pairs, target="<= 1.15", root=root))
            full = attrs.evolve(shipped, path=os.path.join(root, "default_full-corestore.db"))
            rows.append(_pair("default_full", full, n=n_full, pairs=pairs, target="report", root=root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "notes": [f"{n} single-row transactions per sample ({n_full} with synchronous=FULL), "
                                    "one INSERT each through execute_sql"]}


# -- where the default profile's time goes (a diagnostic, not part of the run) --------------------
def breakdown(*, n: int = 2000, loops: int = 21, directory: str | None = None) -> list[tuple[str, float]]:
    """Attribute the default profile's per-transaction cost: each core hook call replaced by a
    no-op in turn (knock-out), best of ``loops`` loops of ``n`` transactions, in µs/tx.

    Run it on a RAM file system (``directory="/dev/shm"``) so the disk does not hide CPU costs:
    ``python -m benchmarks.bench_hotpath --breakdown /dev/shm``. The hook methods are replaced on
    the store's own :class:`~corestore.registry.HookCaller` instance only, for the timed loop.
    """
    root = bench_dir("breakdown") if directory is None else tempfile.mkdtemp(prefix="corestore-breakdown-", dir=directory)
    shipped = resolve_profile("default", config=None, path=os.path.join(root, "default.db"))
    default = attrs.evolve(shipped, pragmas={**shipped.pragmas, "synchronous": "normal"})
    minimal = attrs.evolve(default, name="bench-minimal", plugins=(), path=os.path.join(root, "minimal.db"))
    db = baseline_database(os.path.join(root, "peewee.db"), dict(default.pragmas))
    stores = [corestore.open(default), corestore.open(minimal)]
    noop: dict[str, Callable[..., Any]] = {
        "before_operation": lambda *a: None,
        "on_commit_invariant": lambda *a: ([], False),
        "on_success": lambda *a: None,
        "after_operation": lambda *a: None,
    }
    try:
        full, bare = stores
        for store in stores:
            store.database.execute_sql(SCHEMA)
        hooks = full.hooks

        def loop(store: corestore.Store, knocked: tuple[str, ...] = ()) -> float:
            for name in knocked:
                setattr(hooks, name, noop[name])
            transaction, execute = store.transaction, store.database.execute_sql
            try:
                start = time.perf_counter()
                for i in range(n):
                    with transaction():
                        execute(INSERT, ("hot", i, PAYLOAD))
                return time.perf_counter() - start
            finally:
                for name in knocked:
                    del hooks.__dict__[name]

        def peewee_loop() -> float:
            atomic, execute = db.atomic, db.execute_sql
            start = time.perf_counter()
            for i in range(n):
                with atomic("IMMEDIATE"):
                    execute(INSERT, ("hot", i, PAYLOAD))
            return time.perf_counter() - start

        variants: dict[str, Callable[[], float]] = {
            "peewee db.atomic": peewee_loop,
            "minimal profile": lambda: loop(bare),
            "default profile": lambda: loop(full),
        }
        for name in noop:
            variants[f"default without {name}"] = lambda name=name: loop(full, (name,))
        variants["default without all four"] = lambda: loop(full, tuple(noop))
        best = {name: math.inf for name in variants}
        items = list(variants.items())
        for rep in range(loops):
            for name, fn in (items if rep % 2 == 0 else items[::-1]):
                best[name] = min(best[name], fn())
    finally:
        for store in stores:
            store.close()
        db.close()
        shutil.rmtree(root, ignore_errors=True)
    return [(name, value / n * 1e6) for name, value in best.items()]


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "--breakdown":
        print("usage: python -m benchmarks.bench_hotpath --breakdown [DIR]", file=sys.stderr)
        return 2
    results = breakdown(directory=argv[1] if len(argv) > 1 else None)
    default = dict(results)["default profile"]
    for name, us in results:
        print(f"{name:34s} {us:6.2f} µs/tx   {default - us:+5.2f} µs/tx vs the default profile")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
