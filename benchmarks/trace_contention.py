"""``python -m benchmarks.trace_contention``: per-transaction traces of the gated side of the
``contention.*`` rows (issue 19), to find *where* a sample's tail, spread and wall time come from.

Each sample is the ``contention`` workload (P processes × N single-row ``store.run()`` inserts,
fresh file, a start barrier, each finished worker waiting for the others before it closes) with
the gated side only: every worker records when each of its transactions started and ended
(``time.monotonic``, system-wide on Linux). Printed per sample: the wall time, how late the last
worker's first transaction started, the first and last finish and the spread, p99/p99.9/max, the
slowest transactions with *when* they started (ms into the sample) and *which* (worker, index),
and the hand-offs (``write_gate``'s ``waited``). With several ``--variant``\\ s the samples
alternate between them and a median line per variant ends the run.

Examples (the fourth round's, site/performance.md)::

    flock /tmp/bench.lock python -m benchmarks.trace_contention --profile minimal --samples 4
    flock /tmp/bench.lock python -m benchmarks.trace_contention --profile minimal --samples 15 \\
        --variant base= --variant t1=turn_s=0.001 --variant t2=turn_s=0.002
    flock /tmp/bench.lock python -m benchmarks.trace_contention --profile default --samples 9 \\
        --variant default= --variant nothread=governor.check_every=1000000

A variant is ``NAME=K=V,K=V``: ``K`` a ``write_gate`` setting, or ``PLUGIN.K`` another plugin's
(e.g. ``checkpoint_governor.defer_max_s=0``; ``governor.`` is short for ``checkpoint_governor.``).
Benchmarks never assert a time: this prints, nothing more.
"""
from __future__ import annotations

import argparse
import array
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any

import attrs

import corestore

from .bench_multiprocess import INSERT, PAYLOAD, SCHEMA, _gated_profile

__all__ = ["main", "sample", "summarise"]

_LIMIT_S = 120.0


def _worker(profile: corestore.Profile, worker: int, n: int, barrier: Any, done: Any, out: Any) -> None:
    try:
        store = corestore.open(profile)
        execute = store.database.execute_sql
        starts, ends = array.array("d", bytes(8 * n)), array.array("d", bytes(8 * n))
        clock = time.monotonic
        barrier.wait(_LIMIT_S)
        for i in range(n):
            t0 = clock()
            store.run(lambda i=i: execute(INSERT, (worker, i, PAYLOAD)))
            starts[i], ends[i] = t0, clock()
        done.wait(_LIMIT_S)
        gate = store.plugin("write_gate") if "write_gate" in profile.plugins else None
        waited = gate.stats()["waited"] if gate is not None else 0
        store.close()
        out.put((worker, starts.tobytes(), ends.tobytes(), waited, None))
    except BaseException as err:  # reported to the parent
        out.put((worker, b"", b"", 0, f"{type(err).__name__}: {err}"))


def sample(profile: corestore.Profile, processes: int, inserts: int) -> list[tuple[int, list[float], list[float], int]]:
    """One traced sample: per worker (worker, start times, end times, hand-offs)."""
    ctx = multiprocessing.get_context("fork")
    directory = tempfile.mkdtemp(prefix="corestore-trace-")
    try:
        path = os.path.join(directory, "trace.db")
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode = wal")
        conn.execute(SCHEMA)
        conn.close()
        profile = attrs.evolve(profile, path=path)
        barrier, done, out = ctx.Barrier(processes), ctx.Barrier(processes), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(profile, w, inserts, barrier, done, out), daemon=True)
                 for w in range(processes)]
        for p in procs:
            p.start()
        got = [out.get(timeout=_LIMIT_S) for _ in procs]
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        errors = [g[4] for g in got if g[4]]
        if errors:
            raise RuntimeError(f"workers failed: {errors[:3]}")
        result = []
        for worker, starts_b, ends_b, waited, _err in got:
            starts, ends = array.array("d"), array.array("d")
            starts.frombytes(starts_b)
            ends.frombytes(ends_b)
            result.append((worker, list(starts), list(ends), waited))
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def summarise(trace: list[tuple[int, list[float], list[float], int]], top: int = 8) -> dict[str, Any]:
    """The figures of one traced sample (times in ms, relative to its first transaction's start)."""
    t0 = min(w[1][0] for w in trace)
    wall = max(w[2][-1] for w in trace) - t0
    finishes = sorted(w[2][-1] - t0 for w in trace)
    lat = sorted(((e - s), s - t0, w[0], i) for w in trace for i, (s, e) in enumerate(zip(w[1], w[2], strict=True)))
    n = len(lat)
    return {
        "wall_ms": wall * 1e3,
        "last_start_ms": max(w[1][0] - t0 for w in trace) * 1e3,
        "finish_ms": (finishes[0] * 1e3, finishes[-1] * 1e3),
        "spread": (finishes[-1] - finishes[0]) / wall if wall else float("nan"),
        "p99_ms": lat[int(n * 0.99)][0] * 1e3,
        "p999_ms": lat[int(n * 0.999)][0] * 1e3,
        "max_ms": lat[-1][0] * 1e3,
        "slowest": [(round(d * 1e3, 1), round(at * 1e3, 1), w, i) for d, at, w, i in lat[-top:]],
        "handoffs": sum(w[3] for w in trace),
    }


def _parse_variant(text: str) -> tuple[str, dict[str, dict[str, float]]]:
    name, _, spec = text.partition("=")
    settings: dict[str, dict[str, float]] = {}
    for kv in filter(None, spec.split(",")):
        key, _, value = kv.partition("=")
        plugin, _, field = key.rpartition(".")
        plugin = {"": "write_gate", "governor": "checkpoint_governor"}.get(plugin, plugin)
        settings.setdefault(plugin, {})[field] = int(value) if value.isdigit() else float(value)
    return name or "base", settings


def main(argv: list[str] | None = None) -> int:
    """Trace gated contention samples (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trace_contention", description=main.__doc__)
    parser.add_argument("--profile", choices=("default", "minimal"), default="minimal",
                        help="the profile, plus write_gate (default: minimal)")
    parser.add_argument("--sync", choices=("normal", "full"), default="normal")
    parser.add_argument("--shape", default="20x220", metavar="PxN", help="processes x inserts (default 20x220)")
    parser.add_argument("--samples", type=int, default=4, help="samples per variant (default 4)")
    parser.add_argument("--variant", action="append", metavar="NAME=K=V,...",
                        help="settings to compare (repeatable; samples alternate between variants)")
    args = parser.parse_args(argv)
    processes, inserts = (int(x) for x in args.shape.lower().split("x"))
    base = _gated_profile(args.profile, args.sync)
    variants = dict(_parse_variant(v) for v in (args.variant or ["base="]))
    print(f"trace_contention: {args.profile} + write_gate, synchronous={args.sync}, {args.shape}, "
          f"load average {os.getloadavg()}, {time.strftime('%H:%M:%S', time.gmtime())} UTC", flush=True)
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(args.samples):
        for name, settings in variants.items():
            profile = attrs.evolve(base, settings={**base.settings, **{
                plugin: {**base.settings.get(plugin, {}), **values} for plugin, values in settings.items()}})
            got = summarise(sample(profile, processes, inserts))
            figures[name].append(got)
            print(f"[{name}] wall {got['wall_ms']:.1f} ms; last first-start {got['last_start_ms']:.1f} ms; "
                  f"finish {got['finish_ms'][0]:.1f}..{got['finish_ms'][1]:.1f} ms, spread {got['spread']:.2f}; "
                  f"p99 {got['p99_ms']:.1f} p99.9 {got['p999_ms']:.1f} max {got['max_ms']:.1f} ms; "
                  f"hand-offs {got['handoffs']}; slowest (ms, at ms, worker, i) {got['slowest']}", flush=True)
    for name, rows in figures.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("wall_ms", "spread", "p999_ms", "max_ms")}
        print(f"median [{name}] over {len(rows)}: wall {med['wall_ms']:.0f} ms, spread {med['spread']:.2f} "
              f"({min(r['spread'] for r in rows):.2f}-{max(r['spread'] for r in rows):.2f}), "
              f"p99.9 {med['p999_ms']:.1f} ms, max {med['max_ms']:.1f} ms", flush=True)
    print(f"load average at the end {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
