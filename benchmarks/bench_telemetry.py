"""Telemetry: what the ``telemetry`` plugin adds to a single-row write transaction, with the
OpenTelemetry SDK's ``MeterProvider`` and a periodic reader installed (not the no-op API).

Both sides run the ``default`` profile (WAL, ``synchronous=NORMAL``) on their own file with the
same statement as ``hotpath``; the corestore side adds ``telemetry``. The reader exports every
60 s to an exporter that drops the data, so no collection falls inside a sample.

* ``telemetry.path``: ``buffer_size`` larger than a sample, so no sample reaches the SDK inside
  the timed loop (they are recorded between samples): what the transaction's own path adds.
  Target: at most 1 µs added per transaction.
* ``telemetry.default``: the plugin as shipped (samples buffered; the store's telemetry thread
  records them into the SDK every ``buffer_size`` = 1024 samples, off the caller's thread but
  inside the timed loop, under the same GIL, so most of the SDK's cost shows here). Reported.
* ``telemetry.sync``: ``buffer_size = 0``, each sample recorded into the SDK at once on the
  caller's thread (the behaviour before issue 21's fix). Reported.

Instruction counts: ``python -m benchmarks.bench_telemetry --instructions`` counts them with
callgrind, as ``benchmarks.instructions`` does (a child process per case, (run of 1200 - run
of 200) / 1000, databases on ``/dev/shm``, callgrind's ``--separate-threads=yes``): the caller's
thread alone for the transaction's path, and a case where every sample is recorded on the
caller's thread for the whole cost the process pays. The numbers are on site/performance.md.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import attrs

import corestore
from corestore.profiles import resolve_profile

from ._runner import bench_dir, measure_pairs, missing_plugins, pair_row, skipped_row
from .bench_hotpath import INSERT, PAYLOAD, PRAGMAS, SCHEMA

__all__ = ["run"]


def _install_sdk() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(_drop_exporter(), export_interval_millis=60_000)])
    from corestore_plugins import telemetry

    telemetry.use_meter_provider(provider)
    return provider


def _added_us(samples: Any, n: int) -> float:
    return statistics.median((c - b) / n * 1e6 for b, c in zip(samples.baseline, samples.corestore, strict=True))


def run(quick: bool) -> dict[str, Any]:
    why = missing_plugins(("telemetry", "wal_guard", "wal_invariants", "circuit_breaker", "health"))
    try:
        import opentelemetry.sdk.metrics  # noqa: F401
    except ImportError as err:
        why = why or f"opentelemetry-sdk not installed ({err})"
    if why:
        return {"rows": [skipped_row("telemetry.path", why, target="<= 1 µs added"),
                         skipped_row("telemetry.default", why, target="report"),
                         skipped_row("telemetry.sync", why, target="report")]}
    n = 500 if quick else 5000
    pairs = 7 if quick else 11
    root = bench_dir("telemetry")
    provider = _install_sdk()
    rows = []
    try:
        shipped = resolve_profile("default", config=None, path=os.path.join(root, "plain.db"))
        plain = attrs.evolve(shipped, pragmas={**shipped.pragmas, **PRAGMAS})
        with_tel = attrs.evolve(plain, path=os.path.join(root, "telemetry.db"), plugins=plain.plugins + ("telemetry",))
        sync = attrs.evolve(with_tel, path=os.path.join(root, "sync.db"),
                            settings={**with_tel.settings, "telemetry": {"buffer_size": 0}})
        path = attrs.evolve(with_tel, path=os.path.join(root, "path.db"),
                            settings={**with_tel.settings, "telemetry": {"buffer_size": 1_000_000}})
        stores = [corestore.open(plain), corestore.open(with_tel), corestore.open(sync), corestore.open(path)]
        try:
            for store in stores:
                store.database.execute_sql(SCHEMA)
            def loop(store: corestore.Store) -> float:
                store.checkpoint("TRUNCATE")
                if "telemetry" in store.plugins:
                    store.plugin("telemetry").flush()  # outside the timed loop
                transaction, execute = store.transaction, store.database.execute_sql
                start = time.perf_counter()
                for i in range(n):
                    with transaction():
                        execute(INSERT, ("hot", i, PAYLOAD))
                return time.perf_counter() - start

            variants = (("path", stores[3], "<= 1 µs added", ", no sample recorded inside the loop"),
                        ("default", stores[1], "report", " as shipped (its thread records inside the loop)"),
                        ("sync", stores[2], "report", ", buffer_size = 0"))
            for label, store, target, what in variants:
                samples = measure_pairs(lambda: loop(stores[0]), lambda store=store: loop(store), pairs=pairs)
                added = _added_us(samples, n)
                row = pair_row(f"telemetry.{label}", samples, target=None, unit="µs/tx", scale=1e6 / n,
                               baseline="default profile, synchronous=NORMAL",
                               corestore="default + telemetry (SDK MeterProvider, periodic reader)" + what,
                               transactions_per_sample=n, added_us_per_tx=round(added, 3))
                row["target"] = target
                row["met"] = (added <= 1.0) if label == "path" else None
                rows.append(row)
        finally:
            for store in stores:
                store.close()
    finally:
        provider.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "notes": [f"{n} single-row transactions per sample; added_us_per_tx = median of "
                                    "(telemetry - plain) per pair"]}


# -- instruction counts (callgrind) ------------------------------------------------------------
#: case -> (telemetry settings or None for no plugin, collect at the end, threads counted, what).
#: "caller": the main thread only; "all": every thread of the process.
CASES: dict[str, tuple[dict[str, Any] | None, bool, str, str]] = {
    "plain": (None, True, "caller", "default profile, SDK installed, no telemetry"),
    "telemetry.path": ({"buffer_size": 1_000_000}, False, "caller",
                       "+ telemetry, no sample recorded during the run: the transaction's path"),
    "telemetry.total": ({"buffer_size": 1_000_000}, True, "caller",
                        "+ telemetry, every sample recorded by a collection at the end on the main thread: "
                        "the whole CPU cost"),
    "telemetry": ({}, True, "all", "+ telemetry as shipped (its thread records every 1024), every thread counted"),
    "telemetry.sync": ({"buffer_size": 0}, True, "caller", "+ telemetry, buffer_size = 0 (recorded at once)"),
    "telemetry.hook": ({"buffer_size": 1_000_000}, False, "caller",
                       "the plugin's after_operation alone, called directly (no transaction, no dispatch)"),
    "telemetry.sync.exemplars_off": ({"buffer_size": 0}, True, "caller",
                                     "+ telemetry, buffer_size = 0, MeterProvider(exemplar_filter=AlwaysOff)"),
    "minimal.plain": (None, True, "caller", "minimal profile (no plugin), SDK installed, no telemetry"),
    "minimal.telemetry.path": ({"buffer_size": 1_000_000}, False, "caller",
                               "minimal + telemetry, no sample recorded during the run: the path when telemetry is "
                               "the only plugin (the core builds an Operation for it)"),
}
_WARMUP = 1100  # past one buffer_size, so the telemetry thread has started and drained once
_NO_TIMEOUT_MS = 3_600_000  # a collection under valgrind on a loaded machine outlasts the SDK's default 10 s


def _child(case: str, n: int, directory: str) -> None:
    """Set up ``case``, warm it up, run ``n`` transactions, end without closing (a close or the
    SDK's exit-time collection would record the waiting samples on this thread)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from corestore_plugins import telemetry

    from . import instructions as counted

    settings, collect, _threads, _what = CASES[case]
    # exports hourly: no collection on the reader's thread inside a slow valgrind run
    periodic = PeriodicExportingMetricReader(_drop_exporter(), export_interval_millis=_NO_TIMEOUT_MS)
    kwargs: dict[str, Any] = {}
    if case.endswith("exemplars_off"):
        from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOffExemplarFilter

        kwargs["exemplar_filter"] = AlwaysOffExemplarFilter()
    provider = MeterProvider(metric_readers=[periodic], **kwargs)  # one reader: each reader is a second aggregation
    telemetry.use_meter_provider(provider)
    name = "minimal" if case.startswith("minimal.") else "default"
    profile = resolve_profile(name, config=None, path=os.path.join(directory, "t.db"))
    profile = attrs.evolve(profile, pragmas={**profile.pragmas, **counted.PRAGMAS})
    if settings is not None:
        profile = attrs.evolve(profile, plugins=profile.plugins + ("telemetry",),
                               settings={**profile.settings, "telemetry": settings})
    store = corestore.open(profile)
    execute = store.database.execute_sql
    execute(counted.SCHEMA)
    for i in range(_WARMUP):
        with store.transaction():
            execute(counted.INSERT, ("warm", i, counted.PAYLOAD))
    provider.force_flush(_NO_TIMEOUT_MS)  # a collection on this thread: the warm-up's samples are recorded first
    if case == "telemetry.hook":
        from corestore.operation import SUCCEEDED, Operation

        hook, operation = store.plugin("telemetry").after_operation, Operation(kind="write")
        for _ in range(n):
            hook(store, operation, SUCCEEDED)
        os._exit(0)
    for i in range(n):
        with store.transaction():
            execute(counted.INSERT, ("hot", i, counted.PAYLOAD))
    if collect:
        provider.force_flush(_NO_TIMEOUT_MS)
    sys.stdout.flush()
    os._exit(0)


def _drop_exporter() -> Any:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class Drop(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    return Drop()


def _count(case: str, n: int, directory: str) -> int:
    """Instructions of one child run under callgrind: its main thread, or every thread."""
    from .instructions import _instructions

    work = tempfile.mkdtemp(prefix=f"corestore-tel-{case}-", dir=directory)
    out = os.path.join(work, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", sys.executable,
           "-m", "benchmarks.bench_telemetry", "--child", case, str(n), work]
    try:
        proc = subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED="0"), capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{case} n={n}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        files = sorted(glob.glob(out + "-*"))  # one file per thread: callgrind.out-01 is the main thread
        main = [f for f in files if f.endswith("-01")]
        if not main:
            raise RuntimeError(f"{case} n={n}: callgrind wrote no per-thread output in {work}")
        return _instructions(main[0]) if CASES[case][2] == "caller" else sum(_instructions(f) for f in files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def instructions(cases: list[str], directory: str = "/dev/shm", repeat: int = 1) -> dict[str, list[float]]:
    """Instructions per transaction of each case (its threads, see :data:`CASES`): (1200 - 200) /
    1000, measured ``repeat`` times (the default profile has time-driven work, health probes and
    write-gate turns, that a slow valgrind run meets more or less often: repeat and take the
    median)."""
    return {case: [(_count(case, 1200, directory) - _count(case, 200, directory)) / 1000 for _ in range(repeat)]
            for case in cases}


# -- timed, in one process (the conversion from instructions to time) ---------------------------
def timed(pairs: int = 15, n: int = 2000, calls: int = 20_000, directory: str = "/dev/shm") -> dict[str, Any]:
    """The caller's path timed: ``plain`` against ``telemetry.path`` (the instruction cases'
    setup: ``default`` profile, the SDK's ``MeterProvider`` with one periodic reader) in one
    process, ``pairs`` alternated pairs of ``n`` write transactions each (the samples recorded
    into the SDK between pairs, untimed); best of the pairs per side and the median of the
    per-pair differences. Then the plugin's ``after_operation`` alone (best of 7 x ``calls``)
    and the same loop of ``plain`` transactions: with the instruction counts of the same cases
    they give this machine's nanoseconds per instruction. Then the plugin as shipped, with an
    in-memory reader: every attempt of a run is in the histogram's count, none dropped."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from corestore.operation import SUCCEEDED, new_operation
    from corestore_plugins import telemetry

    from . import instructions as counted

    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="corestore-tel-timed-", dir=directory)
    periodic = PeriodicExportingMetricReader(_drop_exporter(), export_interval_millis=_NO_TIMEOUT_MS)
    provider = MeterProvider(metric_readers=[periodic])
    telemetry.use_meter_provider(provider)
    out: dict[str, Any] = {}
    stores: list[corestore.Store] = []
    try:
        def open_case(name: str, settings: dict[str, Any] | None) -> corestore.Store:
            profile = resolve_profile("default", config=None, path=os.path.join(work, f"{name}.db"))
            profile = attrs.evolve(profile, pragmas={**profile.pragmas, **counted.PRAGMAS})
            if settings is not None:
                profile = attrs.evolve(profile, plugins=profile.plugins + ("telemetry",),
                                       settings={**profile.settings, "telemetry": settings})
            store = corestore.open(profile)
            stores.append(store)
            store.database.execute_sql(counted.SCHEMA)
            return store

        plain, path = open_case("plain", None), open_case("path", {"buffer_size": 1_000_000})

        def loop(store: corestore.Store) -> float:
            store.checkpoint("TRUNCATE")
            if "telemetry" in store.plugins:
                store.plugin("telemetry").flush()  # the previous sample's, outside the timed loop
            transaction, execute = store.transaction, store.database.execute_sql
            start = time.perf_counter()
            for i in range(n):
                with transaction():
                    execute(counted.INSERT, ("hot", i, counted.PAYLOAD))
            return (time.perf_counter() - start) / n

        for store in (plain, path):  # warm-up, as the instruction cases
            loop(store)
        samples = measure_pairs(lambda: loop(plain), lambda: loop(path), pairs=pairs)
        out["plain_us_per_tx_best"] = min(samples.baseline) * 1e6
        out["path_us_per_tx_best"] = min(samples.corestore) * 1e6
        out["added_us_best_minus_best"] = out["path_us_per_tx_best"] - out["plain_us_per_tx_best"]
        out["added_us_median_of_pairs"] = statistics.median(
            (c - b) * 1e6 for b, c in zip(samples.baseline, samples.corestore, strict=True))
        plugin = path.plugin("telemetry")
        hook, operation = plugin.after_operation, new_operation("write", None)
        best = float("inf")
        for _ in range(7):
            plugin.flush()
            start = time.perf_counter()
            for _ in range(calls):
                hook(path, operation, SUCCEEDED)
            best = min(best, (time.perf_counter() - start) / calls)
        plugin.flush()
        out["hook_ns_per_call_best"] = best * 1e9
    finally:
        for store in stores:
            store.close()
        provider.shutdown()
        telemetry.use_meter_provider(None)
    out["load_average_before"] = load_before
    out["load_average_after"] = os.getloadavg()
    out["shipped"] = _shipped_check(work)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _write_count(reader: Any, namespace: str) -> tuple[int, Any]:
    """A collection now: the duration histogram's count of ``write`` attempts of ``namespace``
    and the ``corestore.telemetry.dropped`` value."""
    count, dropped = 0, None
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    attributes = point.attributes
                    if metric.name == "db.client.operation.duration" and attributes.get("db.namespace") == namespace \
                            and attributes.get("db.operation.name") == "write":
                        count += point.count
                    elif metric.name == "corestore.telemetry.dropped" and attributes.get("db.namespace") == namespace:
                        dropped = point.value
    return count, dropped


def _shipped_check(work: str, runs: int = 5000, threads: int = 4) -> dict[str, Any]:
    """The plugin as shipped (``buffer_size`` 1024, its thread recording) under ``threads``
    threads of ``store.run()``: the histogram's count of ``write`` attempts after one collection
    equals the attempts made (every ``run()`` retry is an attempt, so the count is taken from
    the store's own counters), and nothing was dropped."""
    import threading

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from corestore_plugins import telemetry

    from . import instructions as counted

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.use_meter_provider(provider)
    profile = resolve_profile("default", config=None, path=os.path.join(work, "shipped.db"))
    profile = attrs.evolve(profile, plugins=profile.plugins + ("telemetry",),
                           pragmas={**profile.pragmas, **counted.PRAGMAS})
    store = corestore.open(profile)
    try:
        store.database.execute_sql(counted.SCHEMA)
        before = store.stats()
        recorded_before, _ = _write_count(reader, str(store.path))  # the schema's statement: a write too

        def worker(t: int) -> None:
            for i in range(runs):
                store.run(lambda i=i: store.database.execute_sql(counted.INSERT, (f"t{t}", i, counted.PAYLOAD)))

        start = time.perf_counter()
        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(600)
            if w.is_alive():
                raise RuntimeError(f"a writer thread did not finish its {runs} runs within 600 s")
        elapsed = time.perf_counter() - start
        waiting = store.plugin("telemetry").stats()["buffered"]  # not yet recorded by its thread
        after = store.stats()
        attempts = (after["transactions"] - before["transactions"]) + (after["retries"] - before["retries"])
        count, dropped = _write_count(reader, str(store.path))
        count -= recorded_before
        return {"threads": threads, "runs_per_thread": runs, "attempts": attempts, "write_samples_recorded": count,
                "waiting_before_collection": waiting, "dropped": dropped, "seconds": round(elapsed, 3)}
    finally:
        store.close()
        provider.shutdown()
        telemetry.use_meter_provider(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_telemetry")
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="only this case (repeatable)")
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--repeat", type=int, default=1, help="measure each case this many times (median shown)")
    parser.add_argument("--timed", action="store_true",
                        help="time plain against telemetry.path in one process (alternated pairs), the hook alone, "
                             "and check the shipped plugin records every attempt")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timed:
        for key, value in timed(directory=args.dir).items():
            print(f"{key:<28} {value}", flush=True)
        return 0
    if args.child:
        case, n, directory = args.child
        _child(case, int(n), directory)
        return 0
    if args.instructions:
        runs = instructions(args.only or list(CASES), args.dir, args.repeat)
        for case, counts in runs.items():
            spread = ", ".join(f"{c:,.0f}" for c in counts)
            print(f"{case:<30} {statistics.median(counts):>10,.0f}  [{spread}]  {CASES[case][3]}", flush=True)
        return 0
    for r in run(quick=True)["rows"]:
        print(r["name"], r.get("added_us_per_tx"), "µs/tx added; ratio", r.get("ratio"))
    return 0


if __name__ == "__main__":  # pragma: no cover - python -m benchmarks.bench_telemetry [--instructions]
    sys.exit(main())
