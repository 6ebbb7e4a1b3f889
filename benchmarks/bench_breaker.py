"""Circuit breaker: what a refused call costs while the breaker is open, and the breaker's share of
the default profile's hot path.

* ``breaker.rejected_call``: a ``store.transaction()`` refused by an open breaker (the store's
  breaker is forced open with ``isolate()``), against the same store committing a single-row
  transaction. Both in µs per call; the ratio is what a refusal costs relative to a real write.
  The refusal happens in ``before_operation``: no connection, no SQLite call.
* ``breaker.hotpath_share``: the built-in ``default`` profile (``synchronous`` evolved to NORMAL)
  against the same profile with ``circuit_breaker`` disabled: single-row write transactions, WAL,
  one ``INSERT`` each through ``execute_sql``, two files with identical pragmas. The ratio minus
  one is the breaker's share of the default profile's hot-path cost (its three hooks per
  transaction: ``before_operation``, ``on_success``, ``after_operation``).

Reported, no target asserted: benchmarks are not tests.
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any

import attrs

import corestore
from corestore.profiles import resolve_profile

from ._runner import bench_dir, measure_pairs, missing_plugins, pair_row, skipped_row

__all__ = ["run", "rejected_call_seconds", "SCHEMA", "INSERT"]

SCHEMA = "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER NOT NULL, payload TEXT)"
INSERT = "INSERT INTO event (kind, n, payload) VALUES (?, ?, ?)"
PAYLOAD = "x" * 64


def rejected_call_seconds(store: corestore.Store, calls: int) -> float:
    """Seconds per refused ``store.transaction()`` on ``store``, whose breaker must be open.

    The whole caller's path is timed: entering the transaction, ``before_operation`` raising
    :class:`~corestore.CircuitOpenError`, the exception reaching the caller.
    """
    transaction, execute = store.transaction, store.database.execute_sql
    refused = 0
    start = time.perf_counter()
    for i in range(calls):
        try:
            with transaction():
                execute(INSERT, ("refused", i, PAYLOAD))
        except corestore.CircuitOpenError:
            refused += 1
    elapsed = time.perf_counter() - start
    if refused != calls:
        raise RuntimeError(f"{calls - refused} of {calls} calls were admitted: the breaker is not open")
    return elapsed / calls


def _committed_seconds(store: corestore.Store, n: int) -> float:
    store.checkpoint("TRUNCATE")  # each sample starts from an empty -wal (not timed)
    transaction, execute = store.transaction, store.database.execute_sql
    start = time.perf_counter()
    for i in range(n):
        with transaction():
            execute(INSERT, ("hot", i, PAYLOAD))
    return (time.perf_counter() - start) / n


def _default_profile(path: str) -> corestore.Profile:
    default = resolve_profile("default", config=None, path=path)
    return attrs.evolve(default, pragmas={**default.pragmas, "synchronous": "normal"})


def _rejected_row(root: str, *, n: int, calls: int, pairs: int) -> dict[str, Any]:
    store = corestore.open(_default_profile(os.path.join(root, "rejected.db")))
    try:
        store.database.execute_sql(SCHEMA)
        plugin = store.plugin("circuit_breaker")

        def committed() -> float:
            return _committed_seconds(store, n)

        def refused() -> float:
            plugin.isolate("bench_breaker: measuring refusals")
            try:
                return rejected_call_seconds(store, calls)
            finally:
                plugin.reset()

        samples = measure_pairs(committed, refused, pairs=pairs)
        rejected = plugin.snapshot()["rejected"]
    finally:
        store.close()
    return pair_row(
        "breaker.rejected_call", samples, unit="µs/call", scale=1e6,
        baseline="store.transaction(), committed [default]", corestore="store.transaction(), refused (breaker open)",
        note="ratio = cost of a refusal relative to a committed single-row write", calls_per_sample=calls,
        transactions_per_sample=n, refusals_counted=rejected,
    )


def _share_row(root: str, *, n: int, pairs: int) -> dict[str, Any]:
    with_breaker = _default_profile(os.path.join(root, "with-breaker.db"))
    without = attrs.evolve(_default_profile(os.path.join(root, "without-breaker.db")), name="default-no-breaker",
                           plugins=tuple(p for p in with_breaker.plugins if p != "circuit_breaker"))
    a = corestore.open(with_breaker)
    b = corestore.open(without)
    try:
        for store in (a, b):
            store.database.execute_sql(SCHEMA)
        pragmas = [{k: s.database.execute_sql(f"PRAGMA {k}").fetchone()[0] for k in ("journal_mode", "synchronous")}
                   for s in (a, b)]
        if pragmas[0] != pragmas[1]:
            raise RuntimeError(f"pragmas differ: {pragmas}")
        samples = measure_pairs(lambda: _committed_seconds(b, n), lambda: _committed_seconds(a, n), pairs=pairs)
        counts = [s.database.execute_sql("SELECT count(*) FROM event").fetchone()[0] for s in (a, b)]
        if counts != [n * (pairs + 1)] * 2:
            raise RuntimeError(f"row counts {counts}, expected {n * (pairs + 1)} each")
    finally:
        a.close()
        b.close()
    share = statistics.median(samples.ratios) - 1
    return pair_row(
        "breaker.hotpath_share", samples, unit="µs/tx", scale=1e6,
        baseline="default without circuit_breaker", corestore="default (with circuit_breaker)",
        note=f"the breaker's share of the default hot path: {share * 100:+.1f}%", transactions_per_sample=n,
        plugins=list(with_breaker.plugins), pragmas=pragmas[0],
    )


def run(quick: bool) -> dict[str, Any]:
    n = 500 if quick else 5000
    calls = 2000 if quick else 20000
    pairs = 7 if quick else 11
    root = bench_dir("breaker")
    rows = []
    try:
        default = resolve_profile("default", config=None, path=os.path.join(root, "probe.db"))
        why = missing_plugins(default.plugins)
        if why:
            rows.append(skipped_row("breaker.rejected_call", why))
            rows.append(skipped_row("breaker.hotpath_share", why))
        else:
            rows.append(_rejected_row(root, n=n, calls=calls, pairs=pairs))
            rows.append(_share_row(root, n=n, pairs=pairs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "notes": [
        f"rejected_call: {calls} refused transactions per sample (breaker isolated) vs {n} committed ones",
        f"hotpath_share: {n} single-row transactions per sample, WAL + synchronous=NORMAL, default profile +/- circuit_breaker",
    ]}
