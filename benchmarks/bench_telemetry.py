"""Telemetry: what the ``telemetry`` plugin adds to a single-row write transaction, with the
OpenTelemetry SDK's ``MeterProvider`` and a periodic reader installed (not the no-op API).

Both sides run the ``default`` profile (WAL, ``synchronous=NORMAL``) on their own file with the
same statement as ``hotpath``; the corestore side adds ``telemetry``. The reader exports every
60 s to an exporter that drops the data, so no collection falls inside a sample.

* ``telemetry.default``: the plugin as shipped (each sample recorded into the SDK at once).
  Target: at most 1 µs added per transaction.
* ``telemetry.buffered``: ``buffer_size`` larger than a sample, so no sample reaches the SDK
  inside the timed loop: the cost left on the transaction's path when collections drain the
  buffer on the reader's thread. Reported.

Instruction counts (callgrind) are on site/performance.md.
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
from .bench_hotpath import INSERT, PAYLOAD, PRAGMAS, SCHEMA

__all__ = ["run"]


def _install_sdk() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader

    class Drop(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(Drop(), export_interval_millis=60_000)])
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
        return {"rows": [skipped_row("telemetry.default", why, target="<= 1 µs added"),
                         skipped_row("telemetry.buffered", why, target="report")]}
    n = 500 if quick else 5000
    pairs = 7 if quick else 11
    root = bench_dir("telemetry")
    provider = _install_sdk()
    rows = []
    try:
        shipped = resolve_profile("default", config=None, path=os.path.join(root, "plain.db"))
        plain = attrs.evolve(shipped, pragmas={**shipped.pragmas, **PRAGMAS})
        with_tel = attrs.evolve(plain, path=os.path.join(root, "telemetry.db"), plugins=plain.plugins + ("telemetry",))
        buffered = attrs.evolve(with_tel, path=os.path.join(root, "buffered.db"),
                                settings={**with_tel.settings, "telemetry": {"buffer_size": 1_000_000}})
        stores = [corestore.open(plain), corestore.open(with_tel), corestore.open(buffered)]
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

            for label, store, target in (("default", stores[1], "<= 1 µs added"), ("buffered", stores[2], "report")):
                samples = measure_pairs(lambda: loop(stores[0]), lambda store=store: loop(store), pairs=pairs)
                added = _added_us(samples, n)
                row = pair_row(f"telemetry.{label}", samples, target=None, unit="µs/tx", scale=1e6 / n,
                               baseline="default profile, synchronous=NORMAL",
                               corestore="default + telemetry (SDK MeterProvider, periodic reader)"
                                         + (", samples buffered" if label == "buffered" else ""),
                               transactions_per_sample=n, added_us_per_tx=round(added, 3))
                row["target"] = target
                row["met"] = (added <= 1.0) if label == "default" else None
                rows.append(row)
        finally:
            for store in stores:
                store.close()
    finally:
        provider.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "notes": [f"{n} single-row transactions per sample; added_us_per_tx = median of "
                                    "(telemetry - plain) per pair"]}


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m benchmarks.bench_telemetry
    for r in run(quick=True)["rows"]:
        print(r["name"], r.get("added_us_per_tx"), "µs/tx added; ratio", r.get("ratio"))
