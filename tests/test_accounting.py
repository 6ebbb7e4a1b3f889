"""accounting: the submit path, batches, conversions, dead letters, the bounded queue, flush,
close, the counter identities, fork and exit. Real SQLite files throughout; storage faults are in
``test_accounting_faults.py`` and the SIGKILL test in ``test_accounting_crash.py``."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corestore
from corestore import ConfigError, HealthStatus, PluginError, Profile
from corestore_contrib.waiting import wait_until
from corestore_plugins.accounting import BATCHES_TABLE, Accounting, ManualClock

from helpers import run_python

WAL = {"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal"}
SCHEMA = "CREATE TABLE usage (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER UNIQUE, ts REAL)"


def schema(store: corestore.Store) -> None:
    store.database.execute_sql(SCHEMA)
    store.database.execute_sql("CREATE TABLE plain (id INTEGER PRIMARY KEY, kind TEXT, n INTEGER)")


def open_acc(path: Path | str, *, plugins: tuple[str, ...] = ("accounting",), pragmas: dict[str, Any] | None = None,
             setup: Any = schema, **settings: Any) -> corestore.Store:
    profile = Profile(path=str(path), plugins=plugins, pragmas=pragmas or WAL, settings={"accounting": settings})
    return corestore.open(profile, setup=setup)


def rows_of(path: Path | str, sql: str = "SELECT kind, n, ts FROM usage ORDER BY id") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def assert_identities(st: dict[str, Any]) -> None:
    assert st["accepted"] == st["written"] + st["dead_lettered"] + st["dropped"] + st["pending"], st
    assert st["submitted"] == st["accepted"] + st["rejected"], st
    assert st["pending"] == st["queued"] + st["in_flight"], st


@pytest.fixture
def store(tmp_path: Path) -> Iterator[corestore.Store]:
    s = open_acc(tmp_path / "app.db", ts_column="ts")
    yield s
    s.close()


# -- the write path --------------------------------------------------------------------------------
def test_rows_are_written_in_batches_with_their_submit_time(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    assert store.plugin(Accounting) is acc
    stamps = []
    for i in range(1200):
        before = time.time()
        assert acc.submit("usage", {"kind": "chat", "n": i}) is True
        stamps.append((before, time.time()))
    assert acc.flush(10) is True
    got = rows_of(store.path)
    assert [r[1] for r in got] == list(range(1200))  # each once, in order
    for (before, after), (_, _, ts) in zip(stamps, got, strict=True):
        assert before <= ts <= after  # the submit time, not the write time
    st = acc.stats()
    assert st["written"] == 1200 and st["pending"] == 0 and st["batches"] >= 3  # batch_size 500
    assert_identities(st)
    ids = rows_of(store.path, f"SELECT count(*) FROM {BATCHES_TABLE}")[0][0]
    assert ids == st["batches"]  # one bookkeeping row per committed batch transaction


def test_a_partial_batch_waits_max_latency_and_a_full_one_does_not(tmp_path: Path) -> None:
    s = open_acc(tmp_path / "latency.db", batch_size=10, max_latency_ms=50)
    try:
        acc = s.plugin("accounting")
        clock = ManualClock()
        acc.use_clock(clock)
        acc.submit("usage", {"kind": "k", "n": 0})
        assert clock.wait_quiescent()
        clock.advance(0.049)
        assert clock.wait_quiescent()
        assert acc.stats()["written"] == 0  # still waiting for its batch to fill
        clock.advance(0.002)
        assert clock.wait_quiescent()
        assert acc.stats()["written"] == 1  # the oldest row waited max_latency_ms: written alone
        for i in range(1, 11):
            acc.submit("usage", {"kind": "k", "n": i})  # ten: a full batch goes at once, without the clock
        assert clock.wait_quiescent()
        st = acc.stats()
        assert st["written"] == 11 and st["batches"] == 2
        assert s.stats()["connections"] >= 2  # the writer has its own connection beside the caller's
    finally:
        s.close()


def test_the_writer_thread_is_lazy_daemon_and_named(tmp_path: Path) -> None:
    s = open_acc(tmp_path / "lazy.db")
    try:
        before = {t.name for t in threading.enumerate()}
        acc = s.plugin("accounting")
        assert not any(n.startswith("corestore-accounting") for n in before)
        assert acc.stats()["writer_alive"] is False
        acc.submit("usage", {"kind": "a", "n": 1})
        writers = [t for t in threading.enumerate() if t.name == "corestore-accounting[lazy.db]"]
        assert len(writers) == 1 and writers[0].daemon
        acc.submit("usage", {"kind": "a", "n": 2})
        assert [t.name for t in threading.enumerate()].count("corestore-accounting[lazy.db]") == 1
    finally:
        s.close()
    assert not any(t.name == "corestore-accounting[lazy.db]" for t in threading.enumerate())


def test_submit_copies_the_row(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    row = {"kind": "before", "n": 1}
    acc.submit("usage", row)
    row["kind"] = "after"  # the caller reuses its dict
    assert acc.flush(5)
    assert rows_of(store.path)[0][0] == "before"


def test_ts_column_is_kept_when_set_and_only_filled_where_it_exists(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    acc.submit("usage", {"kind": "x", "n": 1, "ts": 42.0})
    acc.submit("plain", {"kind": "no ts column here", "n": 2})
    assert acc.flush(5)
    assert rows_of(store.path)[0][2] == 42.0
    assert rows_of(store.path, "SELECT kind, n FROM plain") == [("no ts column here", 2)]
    assert acc.stats()["dead_lettered"] == 0


class JSONText(peewee.TextField):
    def db_value(self, value: Any) -> Any:
        return None if value is None else json.dumps(value, sort_keys=True)


def test_model_rows_get_defaults_and_db_value_as_insert_many_would(store: corestore.Store) -> None:
    class Event(peewee.Model):
        kind = peewee.CharField(default="chat")
        n = peewee.IntegerField()
        flag = peewee.BooleanField(default=False)
        payload = JSONText(null=True)
        created = peewee.DateTimeField(default=dt.datetime(2024, 1, 2, 3, 4, 5))
        uid = peewee.UUIDField(null=True)
        ts = peewee.DateTimeField(null=True)

    store.bind([Event])
    for table in ("event", "event_ref"):
        Event._meta.set_table_name(table)
        store.database.create_tables([Event])
    import uuid

    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    rows = [
        {"n": "7", "flag": 1, "payload": {"b": 1, "a": [1, 2]}, "uid": uid},
        {Event.n: 8, "kind": "named by field object"},
        {"n": 9, "created": dt.datetime(2020, 5, 6)},
    ]
    Event._meta.set_table_name("event_ref")
    with store.transaction():
        Event.insert_many(rows[:1]).execute()
        Event.insert_many(rows[1:2]).execute()
        Event.insert_many(rows[2:]).execute()
    Event._meta.set_table_name("event")
    acc = store.plugin("accounting")
    before = time.time()
    for row in rows:
        assert acc.submit(Event, row)
    assert acc.flush(5)
    cols = "kind, n, flag, payload, created, uid"
    ours, theirs = (rows_of(store.path, f"SELECT {cols} FROM {table} ORDER BY n") for table in ("event", "event_ref"))
    assert ours == theirs
    # ts_column names a DateTimeField here: it gets the submit time as a local datetime
    stamps = [r[0] for r in rows_of(store.path, "SELECT ts FROM event")]
    for stamp in stamps:
        when = dt.datetime.fromisoformat(stamp)
        assert dt.datetime.fromtimestamp(before) <= when <= dt.datetime.now()


def test_a_bad_row_among_good_ones_is_dead_lettered_alone(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    for i in range(50):
        acc.submit("usage", {"kind": "ok", "n": i})
    acc.submit("usage", {"kind": "dup", "n": 7})  # UNIQUE
    acc.submit("usage", {"kind": None, "n": 1000})  # NOT NULL
    acc.submit("nosuchtable", {"kind": "x"})  # PROGRAMMING
    for i in range(50, 60):
        acc.submit("usage", {"kind": "ok", "n": i})
    assert acc.flush(10) is True  # dead letters are durable: they are in the file
    assert sorted(r[1] for r in rows_of(store.path)) == list(range(60))
    st = acc.stats()
    assert st["written"] == 60 and st["dead_lettered"] == 3 and st["isolated_batches"] >= 1
    assert_identities(st)
    lines = [json.loads(line) for line in Path(acc.dead_letter_path).read_text().splitlines()]
    assert acc.dead_letter_path == store.path + ".corestore-deadletter.jsonl"
    assert oct(os.stat(acc.dead_letter_path).st_mode & 0o777) == "0o600"
    by_row = {json.dumps(line["row"], sort_keys=True): line for line in lines}
    assert set(by_row) == {'{"kind": "dup", "n": 7}', '{"kind": null, "n": 1000}', '{"kind": "x"}'}
    assert by_row['{"kind": "dup", "n": 7}']["kind"] == "CONSTRAINT"
    assert by_row['{"kind": "dup", "n": 7}']["reason"] == "refused"
    assert "UNIQUE" in by_row['{"kind": "dup", "n": 7}']["error"]
    assert by_row['{"kind": "x"}']["kind"] == "PROGRAMMING" and by_row['{"kind": "x"}']["table"] == "nosuchtable"
    assert all(line["submitted_at"] > 0 and line["batch_id"] for line in lines)
    assert [d.row for d in acc.dead_letters()] == [line["row"] for line in lines]


def test_a_row_refused_only_at_commit_gets_its_own_transaction(tmp_path: Path) -> None:
    """A deferred foreign key fails at COMMIT, where no savepoint can isolate it: the batch falls
    back to one transaction per row; only the orphan is dead-lettered. A value the driver cannot
    bind is isolated too."""
    def setup(s: corestore.Store) -> None:
        s.database.execute_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        s.database.execute_sql("CREATE TABLE child (id INTEGER PRIMARY KEY, "
                               "parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED, note TEXT)")
        s.database.execute_sql("INSERT INTO parent (id) VALUES (1), (2)")

    s = open_acc(tmp_path / "fk.db", setup=setup, pragmas={**WAL, "foreign_keys": 1})
    try:
        acc = s.plugin("accounting")
        for parent in (1, 2, 99, 1):  # 99: no such parent
            acc.submit("child", {"parent": parent, "note": "fk"})
        assert acc.flush(10)
        assert sorted(r[0] for r in rows_of(s.path, "SELECT parent FROM child")) == [1, 1, 2]
        (letter,) = acc.dead_letters()
        assert letter.row == {"parent": 99, "note": "fk"} and letter.kind == "CONSTRAINT" and "FOREIGN KEY" in letter.error
        acc.submit("child", {"parent": 1, "note": object()})  # the driver cannot bind this value
        acc.submit("child", {"parent": 2, "note": "fine"})
        assert acc.flush(10)
        assert acc.dead_letters()[-1].row["parent"] == 1 and acc.dead_letters()[-1].reason == "refused"
        assert rows_of(s.path, "SELECT note FROM child ORDER BY id DESC LIMIT 1") == [("fine",)]
        st = acc.stats()
        assert st["written"] == 4 and st["dead_lettered"] == 2
        assert_identities(st)
    finally:
        s.close()


def test_a_row_its_model_cannot_convert_is_dead_lettered_as_invalid(store: corestore.Store) -> None:
    class Strict(peewee.Model):
        kind = peewee.TextField()
        n = peewee.IntegerField(unique=True)

        class Meta:
            table_name = "usage"

    seen: list[Any] = []
    acc = store.plugin("accounting")
    acc.add_dead_letter_sink(seen.append)
    acc.submit(Strict, {"kind": "a", "n": 1})
    acc.submit(Strict, {"kind": "b", "nope": 2})  # no such field
    acc.submit(Strict, {"kind": "c", "n": 3})
    assert acc.flush(5)
    assert [r[1] for r in rows_of(store.path)] == [1, 3]
    assert [(d.reason, d.row) for d in seen] == [("invalid", {"kind": "b", "nope": 2})]
    assert "no field or column 'nope'" in seen[0].error


def test_dead_letter_false_keeps_letters_in_memory_and_flush_reports_the_loss(tmp_path: Path) -> None:
    s = open_acc(tmp_path / "nodl.db", dead_letter=False)
    try:
        acc = s.plugin("accounting")
        acc.submit("usage", {"kind": "a", "n": 1})
        acc.submit("usage", {"kind": "b", "n": 1})
        assert acc.flush(5) is False  # one row is neither in the database nor in a file
        assert acc.dead_letter_path is None
        assert [d.row for d in acc.dead_letters()] == [{"kind": "b", "n": 1}]
        assert acc.flush(5) is True  # nothing lost since
        assert not list(tmp_path.glob("*.jsonl"))
    finally:
        s.close()


# -- the bounded queue -------------------------------------------------------------------------------
def stalled(tmp_path: Path, name: str, **settings: Any) -> tuple[corestore.Store, Accounting, ManualClock]:
    """A store whose writer only writes when told: batches never fill (batch_size > queue_size) and
    the latency deadline is on a manual clock that does not move."""
    s = open_acc(tmp_path / name, batch_size=1000, max_latency_ms=60_000, **settings)
    acc = s.plugin("accounting")
    clock = ManualClock()
    acc.use_clock(clock)
    return s, acc, clock


def test_a_full_queue_rejects_and_counts_exactly(tmp_path: Path) -> None:
    s, acc, clock = stalled(tmp_path, "reject.db", queue_size=10)
    try:
        results = [acc.submit("usage", {"kind": "k", "n": i}) for i in range(15)]
        assert results == [True] * 10 + [False] * 5
        st = acc.stats()
        assert (st["submitted"], st["accepted"], st["rejected"], st["dropped"], st["pending"]) == (15, 10, 5, 0, 10)
        assert_identities(st)
        assert acc.flush(5) is True
        assert [r[1] for r in rows_of(s.path)] == list(range(10))
        assert acc.submit("usage", {"kind": "k", "n": 99}) is True  # room again
    finally:
        s.close()


def test_drop_oldest_drops_and_counts_exactly(tmp_path: Path) -> None:
    s, acc, clock = stalled(tmp_path, "drop.db", queue_size=10, on_full="drop_oldest")
    try:
        assert all(acc.submit("usage", {"kind": "k", "n": i}) for i in range(15))
        st = acc.stats()
        assert (st["submitted"], st["accepted"], st["rejected"], st["dropped"], st["pending"]) == (15, 15, 0, 5, 10)
        assert_identities(st)
        assert acc.flush(5) is True  # the drops happened before this flush: its rows are all written
        assert [r[1] for r in rows_of(s.path)] == list(range(5, 15))
    finally:
        s.close()


def test_block_waits_for_room_then_gives_up(tmp_path: Path) -> None:
    s, acc, clock = stalled(tmp_path, "block.db", queue_size=3, on_full="block", block_timeout_s=0.5)
    try:
        for i in range(3):
            assert acc.submit("usage", {"kind": "k", "n": i})
        start = time.monotonic()
        assert acc.submit("usage", {"kind": "k", "n": 3}) is False  # no room came
        assert 0.45 <= time.monotonic() - start < 3
        # room comes while a submitter waits: flush() makes the writer take the queue
        got: list[bool] = []
        t = threading.Thread(target=lambda: got.append(acc.submit("usage", {"kind": "k", "n": 4})))
        t.start()
        # the ledger's count of submitters blocked for room (no public view of it): the thread
        # is inside submit(), waiting, before anything makes room
        wait_until(lambda: acc.stats()["blocked"] == 1, "the submitter to block on the full queue")
        assert got == []  # still waiting
        assert acc.flush(5)
        t.join(5)
        assert got == [True]
        assert acc.flush(5)
        st = acc.stats()
        assert (st["submitted"], st["accepted"], st["rejected"]) == (5, 4, 1)
        assert_identities(st)
        assert sorted(r[1] for r in rows_of(s.path)) == [0, 1, 2, 4]
    finally:
        s.close()


def test_rejections_are_logged_at_most_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s, acc, clock = stalled(tmp_path, "log.db", queue_size=2, log_interval_s=30)
    try:
        with caplog.at_level("WARNING", logger="corestore_plugins"):
            for i in range(20):
                acc.submit("usage", {"kind": "k", "n": i})
            assert clock.wait_quiescent()
            wait_until(lambda: [r for r in caplog.records if "queue full" in r.getMessage()],
                       "the writer to log the first rejections")
            assert clock.wait_quiescent()
            first = [r for r in caplog.records if "queue full" in r.getMessage()]
            assert len(first) == 1 and "18 row(s) rejected" in first[0].getMessage()
            for i in range(20, 25):
                acc.submit("usage", {"kind": "k", "n": i})
            clock.advance(10)
            assert clock.wait_quiescent()
            assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1  # not yet
            clock.advance(25)
            assert clock.wait_quiescent()
            later = [r for r in caplog.records if "queue full" in r.getMessage()]
            assert len(later) == 2 and "5 row(s) rejected" in later[1].getMessage()
    finally:
        s.close()


# -- flush and close ---------------------------------------------------------------------------------
def test_flush_without_rows_and_with_a_timeout(tmp_path: Path) -> None:
    s, acc, clock = stalled(tmp_path, "flush.db")
    try:
        assert acc.flush(0) is True  # nothing accepted yet
        acc.submit("usage", {"kind": "k", "n": 1})
        assert acc.flush(5) is True
    finally:
        s.close()


def test_hook_on_close(tmp_path: Path) -> None:
    """The store's close() drains accounting (its on_close) before the connections close."""
    path = tmp_path / "close.db"
    s = open_acc(path, max_latency_ms=10_000)  # rows would otherwise wait 10 s for their batch
    acc = s.plugin("accounting")
    for i in range(3000):
        acc.submit("usage", {"kind": "k", "n": i})
    started = time.monotonic()
    s.close()
    assert time.monotonic() - started < 5
    assert len(rows_of(path)) == 3000
    report = acc.close()  # idempotent: the report of the close that happened
    assert report["drained"] is True and report["left"] == 0 and report["written"] == 3000
    assert acc.submit("usage", {"kind": "late", "n": -1}) is False
    st = acc.stats()
    assert st["rejected"] == 1 and st["closed"] is True
    assert_identities(st)
    assert not list(tmp_path.glob("*.jsonl"))


def test_close_on_its_own_leaves_the_store_open(tmp_path: Path) -> None:
    s = open_acc(tmp_path / "own.db")
    try:
        acc = s.plugin("accounting")
        acc.submit("usage", {"kind": "k", "n": 1})
        report = acc.close()
        assert report["drained"] and report["written"] == 1
        assert acc.submit("usage", {"kind": "k", "n": 2}) is False
        with s.transaction():
            s.database.execute_sql("INSERT INTO usage (kind, n) VALUES ('direct', 3)")
        assert len(rows_of(s.path)) == 2
    finally:
        s.close()


# -- identities under concurrency (hypothesis) ---------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    on_full=st.sampled_from(["reject", "drop_oldest", "block"]),
    queue_size=st.integers(1, 40),
    batch_size=st.integers(1, 30),
    plan=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=12),
)
def test_counter_identities_hold_in_every_snapshot(tmp_path_factory: pytest.TempPathFactory, on_full: str,
                                                   queue_size: int, batch_size: int, plan: list[tuple[int, int]]) -> None:
    """Threads submit good rows, duplicate rows (dead-lettered) and rows for a missing table while
    another thread samples stats() as fast as it can: every snapshot satisfies the identities."""
    path = tmp_path_factory.mktemp("ident") / "ident.db"
    s = open_acc(path, on_full=on_full, queue_size=queue_size, batch_size=batch_size, max_latency_ms=1,
                 block_timeout_s=0.01)
    acc = s.plugin("accounting")
    snapshots: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            snapshots.append(acc.stats())

    counter = iter(range(10**9))

    def submit(kind: int, count: int) -> None:
        for _ in range(count):
            n = next(counter)
            if kind == 0:
                acc.submit("usage", {"kind": "ok", "n": n})
            elif kind == 1:
                acc.submit("usage", {"kind": "dup", "n": -1})  # the second and later ones are refused
            elif kind == 2:
                acc.submit("missing_table", {"n": n})
            else:
                acc.submit("usage", {"kind": None, "n": n})  # NOT NULL

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        workers = [threading.Thread(target=submit, args=step) for step in plan]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        acc.flush(10)
    finally:
        stop.set()
        sampler.join()
        s.close()
    final = acc.stats()
    assert snapshots
    for snap in snapshots + [final]:
        assert_identities(snap)
    assert final["pending"] == 0 and final["submitted"] == sum(c for _, c in plan)
    assert final["written"] == len(rows_of(path))


# -- asyncio, fork, exit -----------------------------------------------------------------------------
def test_submit_is_safe_on_an_asyncio_event_loop(store: corestore.Store) -> None:
    acc = store.plugin("accounting")

    async def handler(i: int) -> bool:
        return acc.submit("usage", {"kind": "request", "n": i})

    async def main() -> tuple[list[bool], float, bool]:
        start = time.perf_counter()
        results = await asyncio.gather(*(handler(i) for i in range(2000)))
        took = time.perf_counter() - start
        flushed = await asyncio.get_running_loop().run_in_executor(None, acc.flush, 10)
        return list(results), took, flushed

    results, took, flushed = asyncio.run(main())
    assert all(results) and flushed
    assert took < 1.0  # 2000 handlers never waited on SQLite
    assert len(rows_of(store.path)) == 2000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_with_an_empty_queue(tmp_path: Path) -> None:
    s, acc, clock = stalled(tmp_path, "fork.db")
    try:
        for i in range(5):
            acc.submit("usage", {"kind": "parent", "n": i})
        # fork while the writer is idle: it reads the table names once when it starts, and a fork
        # while a thread is inside peewee's connect() leaves the child with peewee's lock held
        # (corestore.database.forget_after_fork does not reset it; reported separately)
        deadline = time.monotonic() + 10
        while acc.stats()["pending"] and acc._known_tables is None:
            assert time.monotonic() < deadline, "the accounting writer never read the table names"
            time.sleep(0.01)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(r)
                child = acc.stats()
                ok = child["pending"] == 0 and child["submitted"] == 0 and not child["writer_alive"]
                ok = ok and acc.submit("usage", {"kind": "child", "n": 100}) and acc.flush(10)
                os.write(w, json.dumps({"ok": bool(ok), "stats": {k: child[k] for k in ("pending", "submitted")}}).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as fh:
            message = json.loads(fh.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert message["ok"], message
        assert acc.stats()["pending"] == 5  # the parent's rows are the parent's
        assert acc.flush(5)
        kinds = sorted(r[0] for r in rows_of(s.path))
        assert kinds == ["child"] + ["parent"] * 5  # each row written once, by its own process
    finally:
        s.close()


def test_atexit_drains_a_store_the_application_forgot_to_close(tmp_path: Path) -> None:
    path = tmp_path / "exit.db"
    result = run_python(
        """
        import sys, corestore
        profile = corestore.Profile(path=sys.argv[1], plugins=("accounting",),
                                    pragmas={"journal_mode": "wal", "synchronous": "normal"},
                                    settings={"accounting": {"max_latency_ms": 60000}})
        store = corestore.open(profile, setup=lambda s: s.database.execute_sql(
            "CREATE TABLE usage (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER UNIQUE, ts REAL)"))
        acc = store.plugin("accounting")
        for i in range(2500):
            assert acc.submit("usage", {"kind": "k", "n": i})
        print("submitted", acc.stats()["pending"] > 0)
        # no close, no flush: the interpreter exits
        """,
        str(path),
    )
    assert result.returncode == 0, result.stderr
    assert "submitted True" in result.stdout
    assert "draining its queue at exit" in result.stderr
    assert len(rows_of(path)) == 2500


# -- configuration, binding, health ---------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "message"), [
    ("on_full", "drop_newest", "on_full = 'drop_newest' is not allowed; allowed: 'reject', 'drop_oldest', 'block'"),
    ("queue_size", 0, "queue_size = 0 must be an integer >= 1"),
    ("batch_size", "500", "batch_size = '500' must be an integer"),
    ("max_latency_ms", -1, "max_latency_ms = -1 must be a finite number >= 0"),
    ("refire_s", 0, "refire_s = 0 must be a finite number > 0"),
    ("dead_letter", "yes", "dead_letter = 'yes' must be true or false"),
    ("ts_column", "", "ts_column = '' must be a non-empty string"),
    ("backoff_max_s", 0.01, "backoff_max_s = 0.01 must be >= backoff_initial_s = 0.05"),
    ("drop", 1, "unknown key 'drop'"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="settings.accounting") as err:
        open_acc(tmp_path / "bad.db", **{key: value})
    assert message in str(err.value)


def test_settings_from_a_toml_profile(tmp_path: Path) -> None:
    config = tmp_path / "corestore.toml"
    config.write_text(
        '[profiles.ingest]\nextends = "minimal"\nenable = ["accounting"]\n'
        '[profiles.ingest.settings.accounting]\nqueue_size = 20000\non_full = "drop_oldest"\n'
        'ts_column = "ts"\npersistent_after_s = 60\n'
        '[databases.events]\npath = "events.db"\nprofile = "ingest"\n'
    )
    s = corestore.open("events", config=str(config))
    try:
        acc = s.plugin("accounting")
        assert (acc.settings.queue_size, acc.settings.on_full, acc.settings.ts_column) == (20000, "drop_oldest", "ts")
        assert acc.settings.persistent_after_s == 60.0 and acc.settings.batch_size == 500
        assert acc.dead_letter_path == str(tmp_path / "events.db") + ".corestore-deadletter.jsonl"
    finally:
        s.close()


def test_hook_on_open(tmp_path: Path) -> None:
    """accounting binds to its store at the first connection, and refuses a read-only profile."""
    path = tmp_path / "ro.db"
    open_acc(path).close()
    with pytest.raises(ConfigError, match="read-only; the accounting plugin writes"):
        corestore.open(Profile(path=str(path), plugins=("accounting",), read_only=True))
    acc = Accounting()
    with pytest.raises(PluginError, match="not bound to a store"):
        acc.submit("usage", {"n": 1})
    assert acc.stats()["submitted"] == 0  # refused before anything was counted or queued


def test_submit_refuses_what_is_not_a_table_or_a_row(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    with pytest.raises(TypeError, match="table name or a peewee Model class"):
        acc.submit(42, {"n": 1})
    with pytest.raises(TypeError, match="row must be a mapping"):
        acc.submit("usage", [("n", 1)])
    assert acc.stats()["submitted"] == 0  # a programming error is raised, not counted


def test_hook_on_health(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    acc.submit("usage", {"kind": "k", "n": 1})
    assert acc.flush(5)
    component = store.health().components["accounting"]
    assert component.status is HealthStatus.UP
    assert component.details["written"] == 1 and component.details["episode"]["tier"] == "none"
    assert "1 written" in component.summary


def test_old_batch_ids_are_pruned_by_age(tmp_path: Path) -> None:
    """Batch ids start with their time (hex nanoseconds): pruning is a range delete on the key."""
    from corestore_plugins.accounting.batches import batch_id_floor

    old, recent = batch_id_floor(time.time() - 7200) + "-b-x-1", batch_id_floor(time.time() - 60) + "-b-x-1"

    def setup(s: corestore.Store) -> None:
        schema(s)
        s.database.execute_sql(f"CREATE TABLE {BATCHES_TABLE} (batch_id TEXT PRIMARY KEY, committed_at REAL) WITHOUT ROWID")
        s.database.execute_sql(f"INSERT INTO {BATCHES_TABLE} VALUES (?, ?), (?, ?)",
                               (old, time.time() - 7200, recent, time.time() - 60))

    s = open_acc(tmp_path / "prune.db", setup=setup, batch_retention_s=3600)
    try:
        acc = s.plugin("accounting")
        acc.submit("usage", {"kind": "k", "n": 1})
        assert acc.flush(5)
        ids = {r[0] for r in rows_of(s.path, f"SELECT batch_id FROM {BATCHES_TABLE}")}
        assert old not in ids and recent in ids and len(ids) == 2
        (new,) = ids - {recent}
        assert recent < new  # ids sort by age
    finally:
        s.close()


def test_latency_figures_are_reported(store: corestore.Store) -> None:
    acc = store.plugin("accounting")
    for i in range(100):
        acc.submit("usage", {"kind": "k", "n": i})
    assert acc.flush(5)
    st = acc.stats()
    assert st["enqueue_us"]["samples"] == 100 and 0 < st["enqueue_us"]["p50"] <= st["enqueue_us"]["p99"]
    assert st["batch_ms"]["samples"] == st["batches"] and st["batch_ms"]["p50"] > 0
    assert st["delay_ms"]["samples"] == st["batches"]


# -- the docs page ---------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "site" / "plugins" / "accounting.md"
SNIPPETS = ("accounting_usage.py", "accounting_outage.py")


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_docs_snippet_runs(snippet: str, tmp_path: Path) -> None:
    """The page's snippets run as shown, in a fresh interpreter in an empty directory."""
    import subprocess
    import sys

    from helpers import child_env

    if snippet == "accounting_outage.py":
        pytest.importorskip("apsw", reason="the outage snippet runs over the failpoint VFS (apsw)")
    proc = subprocess.run([sys.executable, str(ROOT / "site" / "snippets" / snippet)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'--8<-- "snippets/{snippet}"' in PAGE.read_text()
    if snippet == "accounting_usage.py":
        assert "'written': 1000, 'dead_lettered': 1" in proc.stdout
    else:
        assert "tier=persistent signals=1" in proc.stdout and "(100, 100)" in proc.stdout


def test_docs_page_names_the_incidents_hooks_and_settings() -> None:
    page = PAGE.read_text()
    assert "https://github.com/mr-beaver/tokencost/pull/11" in page
    assert "https://github.com/screenpipe/screenpipe/pull/3953" in page
    assert "<!-- settings: accounting -->" in page  # the table is generated from Settings
    for hook in ("on_store_open", "on_health", "on_close", "on_persistent_failure", "on_health_changed"):
        assert f"`{hook}`" in page
    import attrs

    doc = Accounting.__doc__ or ""
    for field in attrs.fields(Accounting.Settings):  # the class docstring's table is complete
        assert f"\n    {field.name} " in doc, field.name
