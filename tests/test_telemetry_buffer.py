"""The telemetry plugin's sample buffer on the OpenTelemetry SDK's in-memory reader: samples
reach the SDK off the caller's thread (at every collection, or on the store's telemetry thread
when ``buffer_size`` wait), a collection includes every attempt that ended before it, memory
stays bounded (drops are counted), and ``buffer_size = 0`` records at once."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import Profile
from corestore_contrib.waiting import wait_until

pytest.importorskip("opentelemetry.sdk.metrics", reason="the telemetry tests need opentelemetry-sdk (the test extra)")

import otel_fixtures  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from corestore_plugins import telemetry  # noqa: E402

PRAGMAS = {"busy_timeout": 50, "journal_mode": "wal", "synchronous": "normal"}
reader = otel_fixtures.reader  # the fixture: the SDK's in-memory reader as the meter provider
points = otel_fixtures.points


def count(reader: InMemoryMetricReader, kind: str) -> int:
    """Successful attempts of ``kind`` in a collection made now (cumulative)."""
    return sum(p.count for p in points(reader).get("db.client.operation.duration", [])
               if p.attributes["db.operation.name"] == kind and "error.type" not in p.attributes)


def open_store(tmp_path: Path, **settings: Any) -> corestore.Store:
    store = corestore.open(Profile(path=str(tmp_path / "t.db"), plugins=("telemetry",), pragmas=PRAGMAS,
                                   settings={"telemetry": settings}))
    store.database.execute_sql("create table t(x)")
    return store


def telemetry_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("corestore-telemetry[")]


def test_a_collection_includes_every_attempt_that_ended_before_it(tmp_path: Path) -> None:
    """A collection that starts while the telemetry thread is recording a batch waits for that
    batch: every attempt that ended before the collection is in its export. To meet the batch
    in the middle every time (a GIL switch will not do that reliably), the histogram's
    ``record`` is wrapped (the SDK's still runs) so that the thread stops after its first
    sample until a collection has begun (an observable gauge created before the store's
    instruments runs first in the collection), then gives that collection 0.3 s to finish
    without it: one that did not wait for the batch would miss most of it."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    collecting, in_batch, collected = threading.Event(), threading.Event(), threading.Event()

    def started(options: Any) -> list[Any]:
        collecting.set()
        return []

    provider.get_meter("test").create_observable_gauge("test.collecting", callbacks=[started])
    telemetry.use_meter_provider(provider)
    try:
        store = open_store(tmp_path, buffer_size=300)
        plugin = store.plugin("telemetry")
        assert count(reader, "write") == 1  # the CREATE; the buffer is empty now
        collecting.clear()
        record = plugin._pending._record

        def pausing(value: float, attributes: dict[str, Any]) -> None:
            record(value, attributes)
            if threading.current_thread().name.startswith("corestore-telemetry[") and not in_batch.is_set():
                in_batch.set()
                assert collecting.wait(10), "no collection began"
                collected.wait(0.3)  # set only if the collection finished without this batch

        plugin._pending.bind(pausing)
        for i in range(301):  # the last one finds 300 waiting and wakes the thread
            with store.transaction():
                store.database.execute_sql("insert into t values (?)", (i,))
        wait_until(in_batch.is_set, "the telemetry thread to start recording its batch")
        got = count(reader, "write")
        collected.set()
        assert got == 1 + 301
        store.close()
        assert telemetry_threads() == []
    finally:
        telemetry.use_meter_provider(None)
        provider.shutdown()


def test_the_telemetry_thread_records_a_full_buffer_without_a_collection(tmp_path: Path,
                                                                          reader: InMemoryMetricReader) -> None:
    store = open_store(tmp_path, buffer_size=10)
    plugin = store.plugin("telemetry")
    caller = threading.get_ident()
    recorded_on: set[int] = set()
    record = plugin._pending._record  # to see which thread records (the SDK's own record still runs)

    def watching(value: float, attributes: dict[str, Any]) -> None:
        recorded_on.add(threading.get_ident())
        record(value, attributes)

    plugin._pending.bind(watching)
    for i in range(25):
        with store.transaction():
            store.database.execute_sql("insert into t values (?)", (i,))
    wait_until(lambda: plugin.stats()["buffered"] < 10, "the telemetry thread to record the full buffer")
    assert recorded_on and caller not in recorded_on  # the transactions never recorded into the SDK
    assert count(reader, "write") == 26
    store.close()


def test_overflow_drops_and_counts(tmp_path: Path, reader: InMemoryMetricReader,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """At most ``max_buffered`` samples wait. The SDK cannot be made slow from outside, so the
    test holds the lock a recording in progress holds (the thread and the collections wait for
    it) while the transactions run: the samples beyond the limit are dropped and counted."""
    store = open_store(tmp_path, buffer_size=4, max_buffered=6)
    plugin = store.plugin("telemetry")
    assert count(reader, "write") == 1  # the CREATE; the buffer is empty now
    with caplog.at_level(logging.WARNING, logger="corestore_plugins._telemetry_buffer"):
        with plugin._pending._drain_lock:
            for i in range(10):
                with store.transaction():
                    store.database.execute_sql("insert into t values (?)", (i,))
            assert plugin.stats()["buffered"] == 6
    warnings = [r for r in caplog.records if "dropping new ones" in r.getMessage()]
    assert len(warnings) == 1 and "t.db" in warnings[0].getMessage()
    got = points(reader)
    assert [p.value for p in got["corestore.telemetry.dropped"]] == [4]
    writes = [p for p in got["db.client.operation.duration"] if p.attributes["db.operation.name"] == "write"]
    assert sum(p.count for p in writes) == 1 + 6
    store.close()


def test_buffer_size_zero_records_at_once_and_the_open_has_its_attributes(tmp_path: Path,
                                                                           reader: InMemoryMetricReader) -> None:
    store = open_store(tmp_path, buffer_size=0)
    plugin = store.plugin("telemetry")
    for i in range(5):
        with store.transaction():
            store.database.execute_sql("insert into t values (?)", (i,))
    assert plugin.stats()["buffered"] == 0 and telemetry_threads() == []
    got = points(reader)["db.client.operation.duration"]
    by_kind = {p.attributes["db.operation.name"]: p for p in got}
    assert by_kind["write"].count == 6
    # the store's open ran before on_store_open knew the path: its sample still carries it
    assert by_kind["open"].attributes["db.namespace"] == str(tmp_path / "t.db")
    assert by_kind["open"].attributes["db.system.name"] == "sqlite"
    store.close()


def test_max_buffered_is_checked(tmp_path: Path) -> None:
    with pytest.raises(corestore.ConfigError, match="max_buffered = 0 must be an integer >= 1"):
        corestore.open(Profile(path=str(tmp_path / "x.db"), plugins=("telemetry",),
                               settings={"telemetry": {"max_buffered": 0}}))
