"""The asyncio front door: what ``await store.arun(fn)`` costs per unit of work.

* ``asyncio.arun_vs_to_thread``: ``await store.arun(fn)`` against what an application writes
  without it, ``await asyncio.to_thread(store.run, fn)``, one unit after another on one event
  loop (each unit's round trip loop -> worker thread -> loop). Target ratio <= 1.0.
* ``asyncio.arun_gather``: 100 units at once (``asyncio.gather``, what a busy service sees)
  against 100 ``to_thread`` calls at once, per unit. Target ratio <= 1.0.
* ``asyncio.overhead_gather``: ``arun`` (100 at once) minus ``run`` (the same unit called
  synchronously, one after another), per unit: what the front door adds to a unit's cost in a
  loaded service (admission, hand-over to a worker and back, the cancellation checks).
  Target <= 30 µs per unit.
* ``asyncio.overhead_sequential``: the same, one unit at a time: the latency of the round trip
  loop -> worker thread -> loop (two thread wake-ups), which ``to_thread`` pays as well. Reported.

The unit is a read transaction with one small SELECT (``read=True``) on a WAL file: the cheapest
real unit, so the overhead is not hidden behind I/O.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import corestore

from ._runner import bench_dir, measure_pairs, pair_row, value_row

__all__ = ["run"]


def run(quick: bool) -> dict[str, Any]:
    path = os.path.join(bench_dir("asyncio"), "asyncio.db")
    store = corestore.open(corestore.Profile(path=path, pragmas={"journal_mode": "wal", "synchronous": "normal"}))
    store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    store.database.execute_sql("INSERT OR REPLACE INTO t VALUES (1, 'x')")
    units = 300 if quick else 3000
    pairs = 7 if quick else 15
    loop = asyncio.new_event_loop()

    def unit() -> Any:
        return store.database.execute_sql("SELECT v FROM t WHERE id = 1").fetchone()

    def sync_run() -> float:
        start = time.perf_counter()
        for _ in range(units):
            store.run(unit, read=True)
        return (time.perf_counter() - start) / units

    async def seq_arun() -> None:
        for _ in range(units):
            await store.arun(unit, read=True)

    async def seq_to_thread() -> None:
        for _ in range(units):
            await asyncio.to_thread(store.run, unit, read=True)

    async def gather_arun() -> None:
        for _ in range(units // 100):
            await asyncio.gather(*[store.arun(unit, read=True) for _ in range(100)])

    async def gather_to_thread() -> None:
        for _ in range(units // 100):
            await asyncio.gather(*[asyncio.to_thread(store.run, unit, read=True) for _ in range(100)])

    def timed(coro_fn: Any) -> Any:
        def sample() -> float:
            start = time.perf_counter()
            loop.run_until_complete(coro_fn())
            return (time.perf_counter() - start) / units
        return sample

    try:
        seq = measure_pairs(timed(seq_to_thread), timed(seq_arun), pairs=pairs)
        over = measure_pairs(sync_run, timed(seq_arun), pairs=pairs)
        gathered = measure_pairs(timed(gather_to_thread), timed(gather_arun), pairs=pairs)
        over_gather = measure_pairs(sync_run, timed(gather_arun), pairs=pairs)
    finally:
        loop.run_until_complete(store.aclose())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    overhead = [c - b for b, c in zip(over.baseline, over.corestore, strict=True)]
    overhead_gather = [c - b for b, c in zip(over_gather.baseline, over_gather.corestore, strict=True)]
    return {"rows": [
        pair_row("asyncio.arun_vs_to_thread", seq, target="<= 1.0", unit="µs", scale=1e6,
                 baseline="to_thread(run)", corestore="arun", note=f"{units} units one after another"),
        pair_row("asyncio.arun_gather", gathered, target="<= 1.0", unit="µs", scale=1e6, baseline="to_thread(run)",
                 corestore="arun", note="100 units at once, per unit"),
        value_row("asyncio.overhead_gather", overhead_gather, target="<= 30", unit="µs", scale=1e6,
                  label="arun - run", note="per unit, 100 at once, against store.run one after another"),
        value_row("asyncio.overhead_sequential", overhead, target="report", unit="µs", scale=1e6,
                  label="arun - run", note="per unit, one at a time: the thread round trip"),
    ], "notes": [f"default executor: {store.stats()['asyncio']['threads']} threads"]}
