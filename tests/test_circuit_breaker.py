"""circuit_breaker: one breaker per file, honest counting, half-open probes, re-arming.

Faults are real: the failpoint VFS (apsw) fails SQLite's own writes, contention comes from another
process holding the write lock, constraint and syntax errors from real statements. Time-based rules
use the breaker's replaceable clock (a :class:`FakeClock`), so no test sleeps through a cooldown.
"""
from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import (
    BusyError,
    CircuitOpenError,
    ConfigError,
    ConstraintError,
    ErrorKind,
    FatalError,
    HealthStatus,
    Profile,
    QueryError,
    hookimpl,
)
from corestore_plugins.circuit_breaker import Breaker, BreakerState, CircuitBreaker, breaker_for

from helpers import child_env
from plugin_fixtures import EVENTS

ROOT = Path(__file__).resolve().parent.parent
PRAGMAS = {"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal"}
CB = "circuit_breaker"


class FakeClock:
    """A monotonic clock the test moves by hand (installed as ``breaker.clock``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NoTrip:
    """Classifies BUSY as a FATAL_IO fault that does *not* trip breakers (``trips_breaker`` False)."""

    name = "t_no_trip"

    @hookimpl
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Any:
        import attrs

        from corestore.classify import classify_exception

        base = classify_exception(error)
        if base.kind is ErrorKind.BUSY:
            return attrs.evolve(base, kind=ErrorKind.FATAL_IO, retryable=False, trips_breaker=False)
        return None


# -- helpers -------------------------------------------------------------------------------------
def open_store(path: Path | str, *plugins: str, settings: dict[str, Any] | None = None, name: str = "cb",
               vfs: str | None = None, pragmas: dict[str, Any] | None = None, **kw: Any) -> corestore.Store:
    fields: dict[str, Any] = dict(path=str(path), name=name, plugins=plugins or (CB,), pragmas=pragmas or PRAGMAS,
                                  settings={CB: settings or {}}, **kw)
    if vfs is not None:
        fields.update(driver="apsw", vfs=vfs)
    return corestore.open(Profile(**fields))


def with_clock(store: corestore.Store) -> tuple[Breaker, FakeClock]:
    breaker = store.plugin(CB).breaker
    clock = FakeClock()
    breaker.clock = clock
    breaker.reset()  # the windows start empty on the new clock
    return breaker, clock


def create_table(store: corestore.Store) -> None:
    store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")


def write(store: corestore.Store, value: Any = None) -> None:
    with store.transaction():
        store.database.execute_sql("INSERT INTO t (v) VALUES (?)", (value,))


def read(store: corestore.Store) -> int:
    with store.read():
        return store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]


def lane(breaker: Breaker, name: str = "write") -> dict[str, int]:
    return breaker.snapshot()["lanes"][name]


def outcome(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except CircuitOpenError:
        return "rejected"
    except FatalError:
        return "fault"
    return "ok"


def hold_write_lock(path: str) -> subprocess.Popen[str]:
    """Another process holding the database's write lock (BEGIN IMMEDIATE) until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('begin immediate'); print('held', flush=True); time.sleep(60)", path],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def fp_store(tmp_path: Path, failpoint: Any) -> Iterator[Callable[..., corestore.Store]]:
    """Open stores with the circuit breaker over the failpoint VFS."""

    def make(settings: dict[str, Any] | None = None, *plugins: str, **kw: Any) -> corestore.Store:
        store = open_store(tmp_path / "wedge.db", *plugins, settings=settings, vfs=failpoint.name, **kw)
        create_table(store)
        return store

    yield make


# -- settings and sharing --------------------------------------------------------------------------
def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    s = CircuitBreaker.Settings()
    assert (s.failure_threshold, s.cooldown_s, s.backoff_factor, s.max_cooldown_s) == (3, 30.0, 2.0, 300.0)
    assert (s.half_open_probes, s.success_threshold, s.window_s, s.min_calls, s.failure_rate) == (1, 1, None, 10, 0.5)
    bad = [({"failure_threshold": 0}, "failure_threshold = 0 must be an integer >= 1"),
           ({"cooldown_s": 0}, "cooldown_s = 0 must be a number > 0"),
           ({"cooldown_s": "30"}, "cooldown_s = '30' must be a number"),
           ({"backoff_factor": 0.5}, "backoff_factor = 0.5 must be a number >= 1"),
           ({"cooldown_s": 60, "max_cooldown_s": 10}, "max_cooldown_s = 10 must be >= cooldown_s = 60"),
           ({"failure_rate": 1.5}, "failure_rate = 1.5 must be a fraction in (0, 1]"),
           ({"window_s": -1}, "window_s = -1 must be a number > 0"),
           ({"half_open_probes": True}, "half_open_probes = True must be an integer >= 1"),
           ({"cooldown": 3}, "unknown key 'cooldown'")]
    for raw, message in bad:
        with pytest.raises(ConfigError, match="settings.circuit_breaker") as info:
            open_store(tmp_path / "bad.db", settings=raw)
        assert message in str(info.value)
    # help text for `corestore profiles --check` and the docs
    from corestore.registry import settings_help

    rows = {r["name"]: r for r in settings_help(CircuitBreaker)}
    assert list(rows) == ["failure_threshold", "cooldown_s", "backoff_factor", "max_cooldown_s", "half_open_probes",
                          "success_threshold", "window_s", "min_calls", "failure_rate"]
    assert all(r["help"] for r in rows.values())


def test_one_breaker_per_file_shared_by_every_store_and_thread(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    a = open_store(path, name="a")
    b = open_store(path, name="b", pragmas={**PRAGMAS, "cache_size": -4000})  # another profile, same settings
    assert a is not b
    other = open_store(tmp_path / "other.db")
    breaker = a.plugin(CB).breaker
    assert b.plugin(CB).breaker is breaker is breaker_for(path)
    assert other.plugin(CB).breaker is not breaker
    create_table(a)
    create_table(other)

    b.plugin(CB).isolate("maintenance")
    assert a.plugin(CB).state is BreakerState.ISOLATED
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(outcome(lambda: write(a)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["rejected"] * 4
    write(other)  # another file, another breaker
    a.plugin(CB).reset()
    write(b)
    assert breaker.snapshot()["rejected"] == 4 and breaker.snapshot()["stores"] == 2


def test_conflicting_settings_on_one_file_are_a_config_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "conflict.db"
    first = open_store(path, name="ingest", settings={"cooldown_s": 10})
    with pytest.raises(ConfigError) as info:
        open_store(path, name="reports", settings={"cooldown_s": 60})
    text = str(info.value)
    assert "profile 'reports'" in text and "profile 'ingest'" in text
    assert "cooldown_s=60" in text and "cooldown_s=10" in text
    assert first.plugin(CB).breaker.settings.cooldown_s == 10  # the first store is untouched
    first.close()
    # Once no store uses the file, another profile may bring its own settings.
    later = open_store(path, name="reports", settings={"cooldown_s": 60})
    assert later.plugin(CB).breaker.settings.cooldown_s == 60


def test_memory_store_gets_a_private_breaker(tmp_path: Path) -> None:
    m1 = open_store(":memory:", pragmas={"busy_timeout": 1000})
    m2 = open_store(":memory:", pragmas={"busy_timeout": 1000})
    assert m1.plugin(CB).breaker is not m2.plugin(CB).breaker
    m1.plugin(CB).isolate()
    create_table(m2)
    write(m2)
    with pytest.raises(CircuitOpenError):
        create_table(m1)


# -- hooks ------------------------------------------------------------------------------------------
def test_hook_before_operation(tmp_path: Path) -> None:
    """Open: refused at once with the time left, before any connection is touched."""
    store = open_store(tmp_path / "a.db", settings={"cooldown_s": 30})
    create_table(store)
    breaker, clock = with_clock(store)
    breaker.isolate("test")
    opened = store.stats()["connections_opened"]
    errors: list[BaseException] = []

    def fresh_thread() -> None:  # a thread with no connection yet: a refusal must not open one
        for fn in (lambda: write(store), lambda: read(store), lambda: store.database.execute_sql("SELECT 1"),
                   lambda: store.run(lambda: None), lambda: store.checkpoint()):
            try:
                fn()
            except CircuitOpenError as err:
                errors.append(err)

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert len(errors) == 5 and store.stats()["connections_opened"] == opened
    assert all(e.retry_after is None and e.committed is False and e.path == store.path for e in errors)
    assert "ISOLATED (test)" in str(errors[0]) and "reset()" in str(errors[0])


def test_hook_on_fatal(tmp_path: Path, install_plugins: Any) -> None:
    """Counts what the classification says trips breakers, one outcome per operation."""
    install_plugins(t_busy_is_fatal="plugin_fixtures:BusyIsFatal", t_no_trip="test_circuit_breaker:NoTrip")
    path = tmp_path / "busy.db"
    pragmas = {**PRAGMAS, "busy_timeout": 50}
    tripping = open_store(path, CB, "t_busy_is_fatal", name="tripping", pragmas=pragmas)
    create_table(tripping)
    holder = hold_write_lock(str(path))
    try:
        not_tripping = open_store(tmp_path / "busy2.db", CB, "t_no_trip", name="not-tripping", pragmas=pragmas)
        create_table(not_tripping)
        holder2 = hold_write_lock(not_tripping.path)
        try:
            for _ in range(5):
                with pytest.raises(FatalError):
                    write(not_tripping)
            assert not_tripping.plugin(CB).state is BreakerState.CLOSED
            assert lane(not_tripping.plugin(CB).breaker) == {"consecutive_failures": 0, "failures": 0, "successes": 1}
        finally:
            holder2.kill()
            holder2.wait()
        for _ in range(3):  # BUSY reclassified as a tripping fault by a plugin: it counts
            with pytest.raises(FatalError):
                write(tripping)
        breaker = tripping.plugin(CB).breaker
        assert breaker.state is BreakerState.OPEN
        assert breaker.transitions[-1].consecutive == 3
        assert breaker.snapshot()["last_fault"]["name"] == "SQLITE_BUSY"
    finally:
        holder.kill()
        holder.wait()


def test_hook_on_success(fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    """A success resets its own direction's streak only; a read never resets failing writes."""
    store = fp_store({"failure_threshold": 3})
    breaker, _clock = with_clock(store)
    with failpoint.armed(op="write", file="wal"):
        for _ in range(2):
            assert outcome(lambda: write(store)) == "fault"
        for _ in range(5):
            assert read(store) == 0  # reads succeed: the write streak stays
    assert lane(breaker, "write")["consecutive_failures"] == 2
    assert lane(breaker, "read") == {"consecutive_failures": 0, "failures": 0, "successes": 5}
    write(store)  # a write succeeds: now the streak is over
    assert lane(breaker, "write")["consecutive_failures"] == 0
    assert breaker.state is BreakerState.CLOSED


def test_hook_after_operation(fp_store: Callable[..., corestore.Store], failpoint: Any, tmp_path: Path,
                              install_plugins: Any) -> None:
    """A half-open probe that ends with neither success nor fault frees its slot: a constraint
    error, the caller's own exception, BUSY, a later plugin refusing it, a run() attempt retried."""
    install_plugins(t_gate="plugin_fixtures:Gate")
    store = fp_store({"cooldown_s": 10, "backoff_factor": 1}, CB, "t_gate",
                     pragmas={**PRAGMAS, "busy_timeout": 50}, retry={"busy_attempts": 2, "budget_s": 1})
    write(store, "dup")
    breaker, clock = with_clock(store)
    with failpoint.armed(op="write", file="wal"):
        for _ in range(3):
            assert outcome(lambda: write(store)) == "fault"
    assert breaker.state is BreakerState.OPEN
    clock.advance(10)

    def probe_ends_without_outcome(fn: Callable[[], Any], exc: type[BaseException]) -> None:
        with pytest.raises(exc):
            fn()
        snap = breaker.snapshot()
        assert snap["state"] == "half_open" and snap["probes_in_flight"] == 0 and snap["in_flight"] == 0

    def caller_error() -> None:
        with store.transaction():
            raise ValueError("the caller's own bug")

    probe_ends_without_outcome(lambda: write(store, "dup"), ConstraintError)
    probe_ends_without_outcome(caller_error, ValueError)
    probe_ends_without_outcome(lambda: store.database.execute_sql("SELEC nonsense"), QueryError)
    probe_ends_without_outcome(lambda: _forbidden(store), PermissionError)  # t_gate refuses after the breaker admitted
    holder = hold_write_lock(store.path)
    try:
        probe_ends_without_outcome(lambda: write(store), BusyError)
        probe_ends_without_outcome(lambda: store.run(lambda: write(store)), BusyError)  # 2 attempts, each a probe
    finally:
        holder.kill()
        holder.wait()
    assert breaker.snapshot()["lanes"]["write"]["failures"] == 3  # none of those counted as a fault
    write(store, "finally")  # the slot was free all along: this probe closes it
    assert breaker.state is BreakerState.CLOSED


def _forbidden(store: corestore.Store) -> None:
    with store.transaction(name="forbidden"):
        pass


def test_hook_on_health(tmp_path: Path, fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    """State, counters, last fault and next probe time; DEGRADED half-open, DOWN open or isolated."""
    store = fp_store({"cooldown_s": 20})
    breaker, clock = with_clock(store)
    component = store.health(probe=False).components[CB]
    assert component.status is HealthStatus.UP and component.summary.startswith("closed")
    with failpoint.armed(op="write", file="wal", code="IOERR_WRITE"):
        for _ in range(3):
            assert outcome(lambda: write(store)) == "fault"
    clock.advance(5)
    report = store.health(probe=False)
    component = report.components[CB]
    assert report.status is HealthStatus.DOWN and component.status is HealthStatus.DOWN
    details = component.details
    assert details["state"] == "open" and details["next_probe_in_s"] == 15.0 and "next_probe_at" in details
    assert details["lanes"]["write"] == {"consecutive_failures": 3, "failures": 3, "successes": 1}  # + CREATE TABLE
    assert details["last_fault"]["name"] == "SQLITE_IOERR_WRITE" and details["last_fault"]["code"] == 778
    assert details["last_fault"]["lane"] == "write" and details["trip_lane"] == "write"
    assert "3 consecutive write faults" in component.summary and "next probe in 15.0 s" in component.summary
    clock.advance(15)
    assert store.health(probe=False).components[CB].status is HealthStatus.DEGRADED  # cooldown over: half-open
    store.plugin(CB).isolate("replacing the disk")
    isolated = store.health(probe=False).components[CB]
    assert isolated.status is HealthStatus.DOWN and isolated.details["isolated_reason"] == "replacing the disk"
    assert isinstance(report.to_dict()["components"][CB]["details"]["lanes"], dict)  # JSON-ready


def test_hook_on_health_changed(tmp_path: Path, fp_store: Callable[..., corestore.Store], failpoint: Any,
                                install_plugins: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Every transition logs one WARNING and reaches on_health_changed through the store's
    aggregation (once per change of the aggregate status, no separate listener API)."""
    install_plugins(t_recorder="plugin_fixtures:Recorder")
    store = fp_store({"cooldown_s": 10}, CB, "t_recorder")
    breaker, clock = with_clock(store)
    caplog.set_level(logging.WARNING, logger="corestore_plugins.circuit_breaker")
    fault = failpoint.arm(op="write", file="wal")
    for _ in range(3):
        assert outcome(lambda: write(store)) == "fault"
    assert outcome(lambda: write(store)) == "rejected"  # (announced when the tripping operation ended)
    clock.advance(10)
    assert outcome(lambda: write(store)) == "fault"  # half-open probe fails: open again
    failpoint.heal(fault)
    clock.advance(20)
    assert outcome(lambda: write(store)) == "ok"  # half-open probe succeeds: closed
    changes = [e[2:] for e in EVENTS if e[1] == "on_health_changed"]
    assert changes == [("UP", "DOWN"), ("DOWN", "DEGRADED"), ("DEGRADED", "DOWN"), ("DOWN", "DEGRADED"), ("DEGRADED", "UP")]
    mine = [r for r in caplog.records if r.name == "corestore_plugins.circuit_breaker"]
    logged = [r.getMessage().split("circuit breaker ")[1].split(":")[0] for r in mine]
    assert logged == ["CLOSED -> OPEN", "OPEN -> HALF_OPEN", "HALF_OPEN -> OPEN", "OPEN -> HALF_OPEN", "HALF_OPEN -> CLOSED"]
    assert all(r.levelno == logging.WARNING for r in mine)
    assert [(t.previous, t.current) for t in store.plugin(CB).transitions][-1] == (BreakerState.HALF_OPEN, BreakerState.CLOSED)


# -- counting ---------------------------------------------------------------------------------------
def test_contention_and_caller_errors_never_trip_it(tmp_path: Path) -> None:
    """BUSY from another process holding the write lock, constraint and programming errors."""
    store = open_store(tmp_path / "busy.db", settings={"failure_threshold": 1},
                       pragmas={**PRAGMAS, "busy_timeout": 20}, retry={"busy_attempts": 3, "budget_s": 1})
    create_table(store)
    write(store, "x")
    breaker = store.plugin(CB).breaker
    holder = hold_write_lock(store.path)
    try:
        for _ in range(4):
            with pytest.raises(BusyError):
                write(store)
            with pytest.raises(BusyError):
                store.run(lambda: write(store))
            with pytest.raises(BusyError):
                store.database.execute_sql("INSERT INTO t (v) VALUES ('autocommit')")
    finally:
        holder.kill()
        holder.wait()
    for _ in range(4):
        with pytest.raises(ConstraintError):
            write(store, "x")
        with pytest.raises(QueryError):
            store.database.execute_sql("SELECT * FROM no_such_table")
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot()["trips"] == 0
    assert lane(breaker, "write")["failures"] == lane(breaker, "read")["failures"] == 0
    assert store.stats()["busy_waits"] > 0


def test_run_with_retries_is_one_outcome(fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    store = fp_store({"failure_threshold": 2}, retry={"transient_attempts": 4, "base_delay_s": 0.001, "budget_s": 5})
    breaker = store.plugin(CB).breaker
    # Two transient faults, then success on the third attempt: one successful outcome.
    # (The fault hits COMMIT, whose outcome is then unknown: only an idempotent unit is retried.)
    failpoint.arm(op="write", file="wal", code="IOERR_TRUNCATE", count=2)
    store.run(lambda: write(store), idempotent=True)
    assert lane(breaker) == {"consecutive_failures": 0, "failures": 0, "successes": 2}  # + create table
    # A persistent transient fault: four attempts, one fault outcome.
    with failpoint.armed(op="write", file="wal", code="IOERR_TRUNCATE") as fault:
        with pytest.raises(corestore.TransientError):
            store.run(lambda: write(store), idempotent=True)
        assert fault.failed == 4
    assert lane(breaker)["failures"] == 1 and breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["in_flight"] == 0


def test_post_commit_invariant_fault_is_one_outcome(tmp_path: Path, install_plugins: Any) -> None:
    """A reported (not raised) violation reaches on_fatal(INVARIANT) and then on_success for the
    same operation: the breaker counts the first outcome only."""
    install_plugins(t_checker="plugin_fixtures:Checker")
    store = open_store(tmp_path / "inv.db", CB, "t_checker")
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    breaker = store.plugin(CB).breaker
    write(store)
    snap = lane(breaker)
    assert (snap["failures"], snap["successes"]) == (2, 0)  # create table + insert: two faults, no success
    write(store)
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["last_fault"]["kind"] == "INVARIANT"


def test_a_straggler_from_before_a_transition_does_not_count_in_the_new_state(
        fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    """An operation admitted before the breaker was reset fails afterwards: it is counted in the
    totals, not in the new streak (it says nothing about the file since the reset)."""
    store = fp_store({"failure_threshold": 1})
    breaker = store.plugin(CB).breaker
    with pytest.raises(FatalError):
        with store.transaction():
            store.database.execute_sql("INSERT INTO t (v) VALUES ('straggler')")
            breaker.isolate("operator")  # meanwhile, elsewhere: isolated and reset
            breaker.reset()
            failpoint.arm(op="write", file="wal", count=1)  # its COMMIT fails
    assert breaker.state is BreakerState.CLOSED  # a threshold of 1 would have opened it
    assert lane(breaker) == {"consecutive_failures": 0, "failures": 1, "successes": 1}
    with failpoint.armed(op="write", file="wal", count=1):
        assert outcome(lambda: write(store)) == "fault"  # a fresh operation does count
    assert breaker.state is BreakerState.OPEN


def test_cantopen_while_opening_a_connection_counts(fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    """Incident 002's code 14: an operation whose connection cannot be opened failed with a fault
    (the core reports it to on_fatal), so a file that cannot be opened trips the breaker too."""
    store = fp_store()
    breaker = store.plugin(CB).breaker
    failpoint.arm(op="open", file="main", code="CANTOPEN")
    results: list[str] = []
    t = threading.Thread(target=lambda: results.extend(outcome(lambda: write(store)) for _ in range(4)))
    t.start()  # a new thread: it needs a new connection
    t.join()
    assert results == ["fault", "fault", "fault", "rejected"]
    assert breaker.snapshot()["last_fault"]["name"] == "SQLITE_CANTOPEN"
    assert breaker.snapshot()["last_fault"]["kind"] == "ENVIRONMENT"
    assert store.stats()["faults_by_kind"] == {"ENVIRONMENT": 3}


# -- the failpoint scenarios (the "done when") -------------------------------------------------
def _wedge_with_threads(store: corestore.Store, failpoint: Any, n_threads: int = 8, rejected_per_thread: int = 200
                        ) -> dict[str, Any]:
    """``n_threads`` write to a wedged file until each has been refused once; then (every admitted
    operation being over) snapshot the failpoint's counters and make each thread call again
    ``rejected_per_thread`` times, timing each refusal."""
    faults: list[int] = [0] * n_threads
    latencies: list[float] = []
    unexpected: list[BaseException] = []
    snapshot: dict[str, Any] = {}
    lock = threading.Lock()

    def take_snapshot() -> None:
        snapshot["counters"] = failpoint.counters
        snapshot["state"] = store.plugin(CB).breaker.state

    barrier = threading.Barrier(n_threads, action=take_snapshot)

    def worker(i: int) -> None:
        try:
            while True:
                try:
                    write(store, None)
                except FatalError:
                    faults[i] += 1
                    continue
                except CircuitOpenError:
                    break
            barrier.wait()
            mine = []
            for _ in range(rejected_per_thread):
                start = time.perf_counter()
                try:
                    write(store, None)
                except CircuitOpenError:
                    mine.append(time.perf_counter() - start)
                else:  # pragma: no cover - the assertion below reports it
                    raise AssertionError("a write was admitted while the breaker was open")
            with lock:
                latencies.extend(mine)
        except BaseException as err:  # pragma: no cover - reported below
            unexpected.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not unexpected, unexpected
    return {"faults": sum(faults), "latencies": latencies, **snapshot}


def test_wedged_database_eight_threads_open_then_no_io_then_probe_closes(
        fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    store = fp_store()  # defaults: 3 consecutive faults -> open for 30 s
    breaker, clock = with_clock(store)
    write(store, "before")
    fault = failpoint.arm(op=("write", "sync"), code="IOERR")  # the hard SQLITE_IOERR wedge

    result = _wedge_with_threads(store, failpoint)

    # It opened exactly when the write streak reached failure_threshold ...
    trip = breaker.transitions[0]
    assert (trip.previous, trip.current, trip.lane) == (BreakerState.CLOSED, BreakerState.OPEN, "write")
    assert trip.consecutive == 3 and trip.cooldown_s == 30
    assert result["state"] is BreakerState.OPEN
    # ... every fault a caller saw was counted once (stragglers admitted before the trip included) ...
    assert 3 <= result["faults"] == lane(breaker)["failures"] <= 3 + 8 - 1
    # ... and after it no I/O reached the file: the failpoint's counters did not move.
    assert failpoint.counters == result["counters"]
    assert fault.failed == result["counters"].total("failed")
    # Refusals take microseconds (the median over 8 x 200 calls, 8 threads sharing the GIL).
    assert len(result["latencies"]) == 8 * 200
    median_us = statistics.median(result["latencies"]) * 1e6
    print(f"wedge: {result['faults']} faults seen by callers; median refusal {median_us:.1f} µs")
    assert median_us < 500, f"median refusal {median_us:.1f} µs"
    assert breaker.snapshot()["rejected"] == 8 * 200 + 8

    # Heal, let the cooldown pass: one probe is admitted (others still refused) and it closes it.
    failpoint.heal(fault)
    clock.advance(30)
    inside, release = threading.Event(), threading.Event()
    refused: list[str] = []

    def probe() -> None:
        with store.transaction():
            store.database.execute_sql("INSERT INTO t (v) VALUES ('probe')")
            inside.set()
            assert release.wait(10)

    t = threading.Thread(target=probe)
    t.start()
    assert inside.wait(10)
    assert breaker.state is BreakerState.HALF_OPEN
    for _ in range(7):
        refused.append(outcome(lambda: write(store)))
    with pytest.raises(CircuitOpenError) as info:
        read(store)
    assert info.value.retry_after == 0.0 and "HALF_OPEN" in str(info.value)
    release.set()
    t.join()
    assert refused == ["rejected"] * 7
    assert breaker.state is BreakerState.CLOSED
    assert [str(x.current) for x in breaker.transitions] == ["OPEN", "HALF_OPEN", "CLOSED"]
    write(store, "after")
    assert read(store) >= 2


def test_persistent_fault_probe_fails_and_cooldown_rearms_and_grows(
        fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    store = fp_store({"cooldown_s": 30, "backoff_factor": 2, "max_cooldown_s": 100})
    breaker, clock = with_clock(store)
    failpoint.arm(op="write", code="IOERR")
    for _ in range(3):
        assert outcome(lambda: write(store)) == "fault"
    assert breaker.retry_after() == 30
    cooldowns = []
    for _ in range(4):
        left = breaker.retry_after()
        clock.advance(left - 0.001)
        assert outcome(lambda: write(store)) == "rejected"  # not a moment early
        clock.advance(0.001)
        seen = failpoint.counters.total("seen")
        assert outcome(lambda: write(store)) == "fault"  # the one probe reached the file and failed
        assert failpoint.counters.total("seen") > seen
        cooldowns.append(breaker.retry_after())
        with pytest.raises(CircuitOpenError) as info:
            write(store)
        assert info.value.retry_after == cooldowns[-1]
    assert cooldowns == [60, 100, 100, 100]  # re-armed in full each time, growing, capped
    assert [t.cooldown_s for t in breaker.transitions if t.current is BreakerState.OPEN] == [30, 60, 100, 100, 100]
    assert breaker.snapshot()["retrips"] == 4
    # Healed: the next probe closes it and the growth is forgotten at the next clean trip.
    failpoint.heal()
    clock.advance(100)
    write(store)
    assert breaker.state is BreakerState.CLOSED


def test_flapping_storage_window_mode_keeps_it_open(fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    """A fault on 2 of every 3 writes: the consecutive rule alone never trips (the lucky
    successes keep resetting it, as upstream's breaker did); the window rule trips, and the
    window remembers the faults, so a lucky probe does not buy a fresh start."""

    def flap(store: corestore.Store, clock: FakeClock, calls: int) -> list[str]:
        results = []
        for i in range(calls):
            clock.advance(1.0)
            fault = failpoint.arm(op="write", file="wal", count=1) if i % 3 != 2 else None
            try:
                results.append(outcome(lambda: write(store)))
            finally:
                if fault is not None:
                    failpoint.heal(fault)
        return results

    consecutive_only = fp_store({"failure_threshold": 3}, name="consecutive")
    breaker, clock = with_clock(consecutive_only)
    results = flap(consecutive_only, clock, 60)
    assert results.count("fault") == 40 and "rejected" not in results
    assert breaker.snapshot()["trips"] == 0  # hammered 60 times, never opened
    consecutive_only.close()
    breaker_for(consecutive_only.path).reset()

    windowed = fp_store({"failure_threshold": 3, "window_s": 60, "min_calls": 6, "failure_rate": 0.5,
                         "cooldown_s": 5, "backoff_factor": 2, "max_cooldown_s": 20}, name="windowed")
    breaker, clock = with_clock(windowed)
    assert breaker is not None and breaker.settings.window_s == 60
    results = flap(windowed, clock, 60)
    first_trip = results.index("rejected") - 1
    assert results[:first_trip + 1] == ["fault", "fault", "ok", "fault", "fault", "ok", "fault"]
    reached = [r for r in results[first_trip + 1:] if r != "rejected"]
    assert len(reached) <= 8, results  # after the first trip only a few probes reach the disk
    opens = [t for t in breaker.transitions if t.current is BreakerState.OPEN]
    # Each lucky probe closed it for one operation: the next fault re-tripped at once (the window
    # still held the faults) and the cooldown kept growing instead of starting over.
    assert [t.cooldown_s for t in opens][:4] == [5, 10, 20, 20]
    assert all("operations failed within 60 s" in t.reason or "probe failed" in t.reason for t in opens)


def test_successful_reads_during_a_write_wedge_neither_reset_nor_close_it(
        fp_store: Callable[..., corestore.Store], failpoint: Any) -> None:
    store = fp_store({"cooldown_s": 10, "backoff_factor": 1})
    write(store, "a")
    breaker, clock = with_clock(store)
    fault = failpoint.arm(op="write", file="wal")  # writes fail, reads are served
    sequence = []
    for _ in range(3):
        sequence.append(outcome(lambda: write(store)))
        sequence.append(outcome(lambda: read(store)))
    assert sequence == ["fault", "ok", "fault", "ok", "fault", "rejected"]  # reads did not reset the write streak
    assert breaker.transitions[-1].reason.startswith("3 consecutive write faults")
    clock.advance(10)
    assert read(store) == 1  # a read probe succeeds...
    assert breaker.state is BreakerState.HALF_OPEN  # ...but only a write can prove the write path
    assert lane(breaker, "read")["successes"] == 3
    assert outcome(lambda: write(store)) == "fault"  # the write probe fails: open again
    assert breaker.state is BreakerState.OPEN
    failpoint.heal(fault)
    clock.advance(10)
    write(store, "b")
    assert breaker.state is BreakerState.CLOSED


# -- docs, fork ------------------------------------------------------------------------------------
SNIPPETS = ("circuit_breaker_usage.py", "circuit_breaker_rejected_cost.py")


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_docs_snippet_runs(snippet: str, tmp_path: Path) -> None:
    """The page's snippets run as shown, in a fresh interpreter in an empty directory."""
    proc = subprocess.run([sys.executable, str(ROOT / "site" / "snippets" / snippet)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'--8<-- "snippets/{snippet}"' in (ROOT / "site" / "plugins" / "circuit_breaker.md").read_text()


def test_docs_page_names_the_incident_and_the_settings() -> None:
    page = (ROOT / "site" / "plugins" / "circuit_breaker.md").read_text()
    assert "https://github.com/tinyhumansai/openhuman/pull/2212" in page
    assert "<!-- settings: circuit_breaker -->" in page  # the table is generated from Settings
    for hook in ("before_operation", "on_success", "on_fatal", "after_operation", "on_health", "on_health_changed"):
        assert f"`{hook}`" in page


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_child_uses_the_breaker_without_inherited_locks_or_probes(tmp_path: Path) -> None:
    store = open_store(tmp_path / "fork.db")
    create_table(store)
    breaker = store.plugin(CB).breaker
    breaker._lock.acquire()  # as if another thread held it at fork time
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                breaker.isolate("child")
                assert outcome(lambda: write(store)) == "rejected"
                breaker.reset()
                write(store, "from the child")
                code = 0
            finally:
                os._exit(code)
    finally:
        breaker._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert breaker.state is BreakerState.CLOSED  # the child's isolate() stayed in the child
    assert read(store) == 1
