"""accounting under real storage faults, injected through SQLite's own I/O by the failpoint VFS
(apsw): a wedged database (hard SQLITE_IOERR on every write) with submitters running, escalation
by count and by time on an injected clock, the re-fired signal, the episode clearing only after
healthy batches, exactly once across an uncertain COMMIT, close() on a wedged database, drops
while wedged, and the circuit breaker waited out instead of hammered."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

apsw = pytest.importorskip("apsw", reason="the failpoint VFS needs apsw (corestore's test extra installs it)")

import corestore  # noqa: E402
from corestore import HealthStatus, Profile  # noqa: E402
from corestore_contrib.failpoint import FailpointVFS, integrity_check  # noqa: E402
from corestore_contrib.waiting import wait_until  # noqa: E402
from corestore_plugins.accounting import BATCHES_TABLE, ManualClock  # noqa: E402

from plugin_fixtures import EVENTS  # noqa: E402

WAL = {"busy_timeout": 2000, "journal_mode": "wal", "synchronous": "normal"}
SCHEMA = ("CREATE TABLE usage (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER UNIQUE, ts REAL)",
          "CREATE TABLE plain (id INTEGER PRIMARY KEY, kind TEXT, n INTEGER)")  # no UNIQUE: a duplicate would show
NEVER = 1e9


def open_fp(path: Path, fp: FailpointVFS, *, plugins: tuple[str, ...] = ("accounting",),
            pragmas: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, **settings: Any) -> corestore.Store:
    profile = Profile(path=str(path), driver="apsw", vfs=fp.name, plugins=plugins, pragmas=pragmas or WAL,
                      settings={"accounting": settings, **(extra or {})})
    return corestore.open(profile, setup=lambda s: [s.database.execute_sql(sql) for sql in SCHEMA])


def query(store: corestore.Store, sql: str) -> list[tuple[Any, ...]]:
    """Read through the store (same SQLite library as its connections: no lock is dropped)."""
    with store.read():
        return list(store.database.execute_sql(sql).fetchall())


def assert_identities(st: dict[str, Any]) -> None:
    assert st["accepted"] == st["written"] + st["dead_lettered"] + st["dropped"] + st["pending"], st
    assert st["submitted"] == st["accepted"] + st["rejected"], st


def step(clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    assert clock.wait_quiescent(), "the writer did not settle"


def recorded(hook: str) -> list[tuple[Any, ...]]:
    return [e for e in EVENTS if e[0] == "t_recorder" and e[1] == hook]


@pytest.fixture
def recorder(install_plugins: Any) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder")


# -- the wedge ----------------------------------------------------------------------------------------
def test_hook_on_persistent_failure(tmp_path: Path, failpoint: FailpointVFS, recorder: None) -> None:
    """Four threads submit while every write fails (hard SQLITE_IOERR). Escalation comes in order at
    the configured counts (reopen every 2 faulted batches, DEGRADED at 4, on_persistent_failure at
    6), the signal re-fires after refire_s, nothing is lost or written twice, the episode ends only
    after 3 healthy batches, and every row keeps its submit time."""
    s = open_fp(tmp_path / "wedge.db", failpoint, plugins=("accounting", "t_recorder"), ts_column="ts",
                reopen_after=2, degraded_after=4, persistent_after=6, refire_s=30, healthy_to_clear=3,
                reopen_after_s=NEVER, degraded_after_s=NEVER, persistent_after_s=NEVER,
                backoff_initial_s=1, backoff_max_s=1, probe_interval_s=5)
    acc = s.plugin("accounting")
    clock = ManualClock()
    acc.use_clock(clock)
    assert s.health().status is HealthStatus.UP
    failpoint.arm(op="write", file="any")  # every write fails until healed

    stamps: dict[int, tuple[float, float]] = {}
    accepted: list[bool] = []

    def submitter(base: int) -> None:
        for i in range(base, base + 250):
            before = time.time()
            accepted.append(acc.submit("usage", {"kind": "wedged", "n": i}))
            stamps[i] = (before, time.time())

    threads = [threading.Thread(target=submitter, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(accepted) and len(accepted) == 1000
    assert acc.flush(0.2) is False  # nothing is durable while wedged
    assert clock.wait_quiescent()

    seen = []
    for _ in range(7):
        st = acc.stats()
        assert_identities(st)
        assert st["written"] == 0 and st["pending"] == 1000 and st["dead_lettered"] == 0
        seen.append((st["faulted_batches"], st["reopens"], st["episode"]["tier"], st["persistent_signals"]))
        step(clock, 1)  # one backoff: one more faulted batch
    assert seen == [
        (1, 0, "failing", 0),
        (2, 1, "reopened", 0),
        (3, 1, "reopened", 0),
        (4, 2, "degraded", 0),
        (5, 2, "degraded", 0),
        (6, 3, "persistent", 1),
        (7, 3, "persistent", 1),
    ]
    assert recorded("on_health_changed")[0][2:] == ("UP", "DEGRADED")
    assert [e[2] for e in recorded("on_persistent_failure")] == ["DEGRADED"]
    component = s.health().components["accounting"]
    assert component.status is HealthStatus.DEGRADED and "SQLITE_IOERR" in component.summary

    for _ in range(30):  # refire_s = 30 after the first signal: it fires again, once
        step(clock, 1)
    assert acc.stats()["persistent_signals"] == 2
    assert len(recorded("on_persistent_failure")) == 2

    failpoint.heal()
    step(clock, 1)  # the kept batch is retried and commits
    assert acc.flush(5) is True
    st = acc.stats()
    assert st["written"] == 1000 and st["pending"] == 0
    assert st["episode"]["active"] and st["episode"]["healthy_batches"] == 2  # two batches: not over yet
    assert s.health().components["accounting"].status is HealthStatus.DEGRADED
    step(clock, 5)  # the idle writer probes: the third healthy batch ends the episode
    st = acc.stats()
    assert st["episode"]["tier"] == "none" and st["probes"] == 1
    assert s.health().status is HealthStatus.UP
    assert recorded("on_health_changed")[-1][2:] == ("DEGRADED", "UP")

    rows = query(s, "SELECT n, ts FROM usage")
    assert sorted(n for n, _ in rows) == sorted(stamps)  # every accepted row exactly once
    for n, ts in rows:
        before, after = stamps[n]
        assert before <= ts <= after  # the submit time survived the outage
    assert_identities(acc.stats())
    s.close()
    assert integrity_check(s.path) == "ok" or integrity_check(s.path) == ["ok"]


def test_a_quiet_queue_escalates_by_time(tmp_path: Path, failpoint: FailpointVFS) -> None:
    """One row, retried every 30 s: the wall-clock rules fire at their times, not at counts."""
    s = open_fp(tmp_path / "quiet.db", failpoint, reopen_after=1000, degraded_after=1000, persistent_after=1000,
                reopen_after_s=5, degraded_after_s=20, persistent_after_s=60, refire_s=100,
                backoff_initial_s=30, backoff_max_s=30)
    try:
        acc = s.plugin("accounting")
        clock = ManualClock()
        acc.use_clock(clock)
        failpoint.arm(op="write", file="any")
        acc.submit("plain", {"kind": "quiet", "n": 1})
        assert acc.flush(0.1) is False  # flush makes the writer try at once
        assert clock.wait_quiescent()
        timeline = {}
        for t in range(0, 171):
            st = acc.stats()
            timeline[t] = (st["reopens"], st["episode"]["tier"], st["persistent_signals"], st["faulted_batches"])
            step(clock, 1)
        for t, (reopens, tier, signals, faulted) in timeline.items():
            assert reopens == t // 5, (t, timeline[t])
            assert faulted == 1 + t // 30, (t, timeline[t])
            assert signals == (0 if t < 60 else 1 if t < 160 else 2), (t, timeline[t])
            expected = "failing" if t < 5 else "reopened" if t < 20 else "degraded" if t < 60 else "persistent"
            assert tier == expected, (t, timeline[t])
        failpoint.heal()
        assert acc.flush(0.1) is False  # the batch waits out its backoff
        step(clock, 30)
        assert acc.flush(5) is True
        assert query(s, "SELECT kind, n FROM plain") == [("quiet", 1)]
    finally:
        failpoint.heal()
        s.close()


# -- exactly once across an uncertain COMMIT ---------------------------------------------------------
@pytest.mark.parametrize(("file", "lands"), [
    ("main", True),   # the COMMIT is durable, then the auto-checkpoint's fsync of the main file fails
    ("wal", False),   # the fsync of the -wal at COMMIT fails: nothing committed
])
def test_an_uncertain_commit_writes_the_batch_exactly_once(tmp_path: Path, failpoint: FailpointVFS,
                                                           caplog: pytest.LogCaptureFixture, file: str, lands: bool) -> None:
    pragmas = {**WAL, "synchronous": "full", "wal_autocheckpoint": 1}
    s = open_fp(tmp_path / f"uncertain-{file}.db", failpoint, pragmas=pragmas, batch_size=100)
    try:
        acc = s.plugin("accounting")
        fault = failpoint.arm(op="sync", file=file, code="IOERR_FSYNC", count=1)  # one fsync EIO
        for i in range(100):
            acc.submit("plain", {"kind": "once", "n": i})
        assert acc.flush(10) is True
        assert fault.failed == 1
        st = acc.stats()
        assert st["uncertain_commits"] == 1  # the store said committed=None
        assert st["written"] == 100 and st["faulted_batches"] == 1
        assert st["batches"] == 1  # one committed batch transaction: the first attempt, or its retry
        got = query(s, "SELECT n FROM plain ORDER BY n")
        assert [n for (n,) in got] == list(range(100))  # no duplicates (plain has no UNIQUE), none missing
        ids = query(s, f"SELECT count(*) FROM {BATCHES_TABLE}")[0][0]
        assert ids == 1
        found = [r for r in caplog.records if "did commit; not written twice" in r.getMessage()]
        assert len(found) == (1 if lands else 0)  # the lookup in _corestore_batches decided
    finally:
        s.close()
    assert integrity_check(str(tmp_path / f"uncertain-{file}.db")) in ("ok", ["ok"])


# -- close, drops ------------------------------------------------------------------------------------
def test_close_with_a_wedged_database_dead_letters_the_backlog(tmp_path: Path, failpoint: FailpointVFS) -> None:
    path = tmp_path / "closing.db"
    s = open_fp(path, failpoint, batch_size=100, drain_timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.1)
    acc = s.plugin("accounting")
    failpoint.arm(op="write", file="any")
    for i in range(300):
        acc.submit("usage", {"kind": "stuck", "n": i})
    assert acc.flush(0.2) is False
    started = time.monotonic()
    s.close()
    assert time.monotonic() - started < 4  # drain_timeout_s, plus the grace for a writer inside SQLite
    report = acc.close()
    assert report["drained"] is False and report["left"] == 300
    assert report["written"] == 0 and report["dead_lettered"] == 300 and report["pending"] == 0
    assert_identities(report)
    lines = [json.loads(line) for line in Path(acc.dead_letter_path).read_text().splitlines()]
    assert sorted(line["row"]["n"] for line in lines) == list(range(300))
    assert {line["reason"] for line in lines} == {"shutdown"}
    in_flight = [line for line in lines if line["batch_id"]]
    assert len(in_flight) == 100 and all(line["uncertain"] for line in in_flight)
    failpoint.heal()
    again = corestore.open(Profile(path=str(path), plugins=()))
    try:
        assert again.database.execute_sql("SELECT count(*) FROM usage").fetchone()[0] == 0  # none written: no duplicate on replay
        # the bookkeeping table is created by the first committed batch: there was none
        tables = again.database.execute_sql("SELECT count(*) FROM sqlite_master WHERE name = ?", (BATCHES_TABLE,))
        assert tables.fetchone()[0] == 0
    finally:
        again.close()


def test_drops_while_wedged_are_counted_and_fail_the_flush_that_covered_them(tmp_path: Path, failpoint: FailpointVFS) -> None:
    s = open_fp(tmp_path / "drops.db", failpoint, queue_size=5, batch_size=5, on_full="drop_oldest",
                backoff_initial_s=1, backoff_max_s=1)
    try:
        acc = s.plugin("accounting")
        clock = ManualClock()
        acc.use_clock(clock)
        failpoint.arm(op="write", file="any")
        for i in range(5):
            acc.submit("plain", {"kind": "in flight", "n": i})
        assert clock.wait_quiescent()
        assert acc.stats()["in_flight"] == 5  # taken by the writer, failing
        for i in range(5, 10):
            acc.submit("plain", {"kind": "queued", "n": i})
        result: list[bool] = []
        waiter = threading.Thread(target=lambda: result.append(acc.flush(10)))
        waiter.start()
        # the ledger's list of flush() waiters (no public view of it): flush() has taken its
        # target (rows 0-9) before the late rows arrive
        wait_until(lambda: acc.stats()["waiters"], "flush() to register as a waiter")
        for i in range(10, 13):  # three more: the three oldest queued rows (5, 6, 7) are dropped
            assert acc.submit("plain", {"kind": "late", "n": i})
        st = acc.stats()
        assert (st["accepted"], st["dropped"], st["pending"], st["rejected"]) == (13, 3, 10, 0)
        assert_identities(st)
        failpoint.heal()
        step(clock, 1)
        waiter.join(10)
        assert result == [False]  # rows it waited for were dropped
        assert acc.flush(5) is True
        assert [n for (n,) in query(s, "SELECT n FROM plain ORDER BY n")] == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    finally:
        failpoint.heal()
        s.close()


# -- the circuit breaker ----------------------------------------------------------------------------
def test_an_open_breaker_is_waited_out_not_hammered(tmp_path: Path, failpoint: FailpointVFS) -> None:
    s = open_fp(tmp_path / "breaker.db", failpoint, plugins=("circuit_breaker", "accounting"),
                extra={"circuit_breaker": {"failure_threshold": 2, "cooldown_s": 30, "backoff_factor": 1}},
                backoff_initial_s=1, backoff_max_s=1, persistent_after=1000, persistent_after_s=60,
                reopen_after=1000, reopen_after_s=NEVER, degraded_after=1000, degraded_after_s=NEVER)
    try:
        acc = s.plugin("accounting")
        breaker = s.plugin("circuit_breaker")
        clock = ManualClock()
        acc.use_clock(clock)
        failpoint.arm(op="write", file="any")
        acc.submit("plain", {"kind": "b", "n": 1})
        assert acc.flush(0.1) is False
        assert clock.wait_quiescent()
        step(clock, 1)  # the second fault opens the breaker
        assert breaker.state.name == "OPEN"
        faulted = acc.stats()["faulted_batches"]
        writes = failpoint.counters.total("seen", op="write")
        for _ in range(20):  # inside the cooldown: the writer waits on its clock, the file is not touched
            step(clock, 1)
        assert acc.stats()["faulted_batches"] == faulted == 2
        assert failpoint.counters.total("seen", op="write") == writes
        for _ in range(45):  # refused again at the end of its wait; the episode keeps its wall-clock time
            step(clock, 1)
        st = acc.stats()
        assert st["faulted_batches"] == 2 and st["persistent_signals"] == 1  # persistent_after_s = 60
        assert st["episode"]["last_error"] == "circuit breaker open"
        failpoint.heal()
        breaker.reset()
        step(clock, 31)
        assert acc.flush(5) is True
        assert query(s, "SELECT n FROM plain") == [(1,)]
    finally:
        failpoint.heal()
        s.close()
