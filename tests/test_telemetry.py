"""The telemetry plugin on the OpenTelemetry SDK's in-memory reader: every documented instrument
and attribute after real operations, including a real BUSY from another process and an IOERR
injected through the failpoint VFS."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import Profile

from helpers import fork_report

pytest.importorskip("opentelemetry.sdk.metrics", reason="the telemetry tests need opentelemetry-sdk (the test extra)")

import otel_fixtures  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from corestore_plugins import telemetry  # noqa: E402

PRAGMAS = {"busy_timeout": 50, "journal_mode": "wal", "synchronous": "normal"}
reader = otel_fixtures.reader  # the fixture: the SDK's in-memory reader as the meter provider
points = otel_fixtures.points


def hold_write_lock(path: str) -> subprocess.Popen[str]:
    """Another process holding the write lock (BEGIN IMMEDIATE) until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('begin immediate'); print('held', flush=True); time.sleep(60)", path],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_operation_duration_per_attempt_with_a_real_busy(tmp_path: Path, reader: InMemoryMetricReader) -> None:
    path = str(tmp_path / "t.db")
    store = corestore.open(Profile(path=path, plugins=("circuit_breaker", "accounting", "quarantine", "telemetry"),
                                   pragmas=PRAGMAS, retry={"busy_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.002}))
    store.database.execute_sql("create table t(x unique)")
    for i in range(3):
        with store.transaction():
            store.database.execute_sql("insert into t values (?)", (i,))
    with store.read():
        store.database.execute_sql("select count(*) from t").fetchone()
    with pytest.raises(corestore.ConstraintError):
        with store.transaction():
            store.database.execute_sql("insert into t values (1)")
    holder = hold_write_lock(path)
    try:
        with pytest.raises(corestore.BusyError):  # two attempts, both BUSY: one retried, one final
            store.run(lambda: store.database.execute_sql("insert into t values (99)"))
    finally:
        holder.kill()
        holder.wait()
    store.checkpoint("PASSIVE")
    store.plugin("accounting").submit("t", {"x": 1000})
    assert store.plugin("accounting").flush(10)
    got = points(reader)
    for name in telemetry.INSTRUMENTS:
        assert name in got, f"{name} not exported"
    durations = got["db.client.operation.duration"]
    by_attrs = {tuple(sorted(p.attributes.items())): p for p in durations}
    base = {"db.system.name": "sqlite", "db.namespace": path}
    ok_write = by_attrs[tuple(sorted({**base, "db.operation.name": "write"}.items()))]
    assert ok_write.count >= 4  # three transactions + the CREATE statement (+ accounting's batch)
    assert list(ok_write.explicit_bounds) == [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    busy = by_attrs[tuple(sorted({**base, "db.operation.name": "write", "error.type": "SQLITE_BUSY",
                                   "db.response.status_code": "SQLITE_BUSY", "corestore.error.kind": "BUSY"}.items()))]
    assert busy.count == 2  # each attempt recorded: the retried one and the final one
    constraint = [p for p in durations if p.attributes.get("corestore.error.kind") == "CONSTRAINT"]
    assert len(constraint) == 1 and constraint[0].attributes["error.type"].startswith("SQLITE_CONSTRAINT")
    retries = got["corestore.retries"]
    assert sum(p.value for p in retries) == 1 and retries[0].attributes["error.type"] == "SQLITE_BUSY"
    assert got["corestore.busy.time"][0].value > 0.04  # the two attempts each waited busy_timeout (50 ms)
    assert {p.attributes["corestore.checkpoint.result"]: p.value for p in got["corestore.checkpoints"]} == {"ok": 1}
    states = {p.attributes["corestore.breaker.state"]: p.value for p in got["corestore.breaker.state"]}
    assert states == {"closed": 1, "open": 0, "half_open": 0, "isolated": 0}
    rows = {p.attributes["corestore.accounting.outcome"]: p.value for p in got["corestore.accounting.rows"]}
    assert rows["written"] == 1 and rows["dead_lettered"] == 0
    assert got["corestore.accounting.queue.depth"][0].value == 0
    assert got["corestore.quarantine.state"][0].value == 0
    assert got["corestore.wal.size"][0].value >= 0
    assert got["corestore.sqlite.version"][0].attributes["corestore.sqlite.version"] == __import__("sqlite3").sqlite_version
    assert got["corestore.health.status"][0].value in (1, 2, 3)
    store.close()


def test_injected_ioerr_opens_the_breaker_and_is_counted(tmp_path: Path, reader: InMemoryMetricReader,
                                                          failpoint: Any) -> None:
    store = corestore.open(Profile(path=str(tmp_path / "f.db"), plugins=("circuit_breaker", "telemetry"),
                                   driver="apsw", vfs=failpoint.name, pragmas=PRAGMAS,
                                   settings={"circuit_breaker": {"failure_threshold": 2}}))
    store.database.execute_sql("create table t(x)")
    with failpoint.armed(op="write", file="wal", code="IOERR_WRITE"):
        for _ in range(2):
            with pytest.raises(corestore.FatalError):
                with store.transaction():
                    store.database.execute_sql("insert into t values (1)")
    with pytest.raises(corestore.CircuitOpenError):
        with store.transaction():
            pass
    got = points(reader)
    errors = {p.attributes["error.type"]: p for p in got["db.client.operation.duration"] if "error.type" in p.attributes}
    ioerr = errors["SQLITE_IOERR_WRITE"]
    assert ioerr.count == 2 and ioerr.attributes["corestore.error.kind"] == "FATAL_IO"
    assert ioerr.attributes["db.response.status_code"] == "SQLITE_IOERR_WRITE"
    refused = errors["CircuitOpenError"]  # not SQLite's: the exception class, and no status code
    assert "db.response.status_code" not in refused.attributes
    states = {p.attributes["corestore.breaker.state"]: p.value for p in got["corestore.breaker.state"]}
    assert states["open"] == 1
    transitions = {p.attributes["corestore.breaker.state"]: p.value for p in got["corestore.breaker.transitions"]}
    assert transitions["open"] == 1
    assert got["corestore.health.status"][0].value == 3  # DOWN
    store.close()


def test_spans_when_enabled(tmp_path: Path, reader: InMemoryMetricReader) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        store = corestore.open(Profile(path=str(tmp_path / "s.db"), plugins=("telemetry",), pragmas=PRAGMAS,
                                       settings={"telemetry": {"spans": True}}))
        store.database.execute_sql("create table t(x unique)")
        store.database.execute_sql("insert into t values (1)")
        with pytest.raises(corestore.ConstraintError):
            store.database.execute_sql("insert into t values (1)")
        store.close()
    finally:
        telemetry.use_tracer_provider(None)
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    assert spans[0].attributes["db.system.name"] == "sqlite"
    assert spans[2].attributes["error.type"].startswith("SQLITE_CONSTRAINT")
    assert spans[2].status.is_ok is False


def test_buffered_samples_reach_the_sdk_at_collection(tmp_path: Path, reader: InMemoryMetricReader) -> None:
    store = corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("telemetry",), pragmas=PRAGMAS,
                                   settings={"telemetry": {"buffer_size": 100}}))
    store.database.execute_sql("create table t(x)")
    for i in range(10):
        with store.transaction():
            store.database.execute_sql("insert into t values (?)", (i,))
    assert len(store.plugin("telemetry")._buffer) == 12  # the open, the CREATE, 10 writes: nothing recorded yet
    writes = [p for p in points(reader)["db.client.operation.duration"] if p.attributes["db.operation.name"] == "write"]
    assert writes[0].count == 11  # the CREATE and 10 writes: the collection drained the buffer first
    assert store.plugin("telemetry")._buffer == []
    store.close()


def test_spans_are_off_by_default_and_settings_are_checked(tmp_path: Path) -> None:
    assert telemetry.Telemetry.Settings().spans is False
    with pytest.raises(corestore.ConfigError, match="buffer_size = -1 must be an integer >= 0"):
        corestore.open(Profile(path=str(tmp_path / "x.db"), plugins=("telemetry",), settings={"telemetry": {"buffer_size": -1}}))


def test_stats_clock_and_fork_child(tmp_path: Path, reader: InMemoryMetricReader) -> None:
    """``stats()``; the ``clock`` attribute times each attempt (a clock 5 s ahead of
    ``time.monotonic`` shows as 5 s); a real ``os.fork()``: the child starts with an empty buffer
    (the parent's samples are not recorded twice) while the parent keeps its own."""
    import time

    store = corestore.open(Profile(path=str(tmp_path / "f.db"), plugins=("telemetry",), pragmas=PRAGMAS,
                                   settings={"telemetry": {"buffer_size": 1000}}))
    plugin = store.plugin("telemetry")
    store.database.execute_sql("create table t(x)")
    assert plugin.stats() == {"buffered": 2, "buffer_size": 1000, "spans": False, "attached": True,
                              "checkpoint_age_s": None}  # the open and the CREATE wait for a collection
    plugin.clock = lambda: time.monotonic() + 5.0
    with store.transaction(name="late"):
        store.database.execute_sql("insert into t values (1)")
    assert plugin._buffer[-1][0] >= 5.0
    plugin.clock = time.monotonic
    assert fork_report(lambda: store.plugin("telemetry").stats())["buffered"] == 0
    assert plugin.stats()["buffered"] == 3
    store.checkpoint()
    age = plugin.stats()["checkpoint_age_s"]
    assert age is not None and 0 <= age < 30
    store.close()
