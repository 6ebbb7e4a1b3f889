"""accounting under a producer that outruns the writer (issue 18): a backlog of half the queue or
more is written in larger batches (``max_batch_size``), statements are sized to the connection's
own limits, a caller-error row inside a large batch is still isolated, and a submitter's waits
for the writer (``yield_ms``) are bounded. Real SQLite files; the writer is held back by a real
write lock taken on another connection."""
from __future__ import annotations

import gc
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import corestore
from corestore import Profile
from corestore_contrib.waiting import wait_until
from corestore_plugins.accounting.dialect import SQLITE
from corestore_plugins.accounting.ledger import NEVER, Ledger
from corestore_plugins.accounting.rows import RowPlanner, chunk_sizes

WAL = {"busy_timeout": 10000, "journal_mode": "wal", "synchronous": "normal"}


def open_acc(path: Path, **settings: Any) -> corestore.Store:
    profile = Profile(path=str(path), plugins=("accounting",), pragmas=WAL, settings={"accounting": settings})
    return corestore.open(profile, setup=lambda s: s.database.execute_sql(
        "CREATE TABLE usage (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER UNIQUE)"))


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection (the writer's BEGIN IMMEDIATE
    waits in its busy handler until the block ends)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def rows_of(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT kind, n FROM usage ORDER BY id").fetchall()
    finally:
        conn.close()


def backlog(tmp_path: Path, name: str, rows: list[dict[str, Any]], **settings: Any) -> tuple[corestore.Store, Any]:
    """Submit ``rows`` while the writer is held back (its first batch waits for the write lock),
    then let it go; returns the store and the plugin after flush()."""
    path = tmp_path / name
    s = open_acc(path, queue_size=1000, batch_size=10, max_batch_size=400, **settings)
    acc = s.plugin("accounting")
    with write_locked(path):
        for row in rows:
            assert acc.submit("usage", row) is True
        wait_until(lambda: acc.stats()["in_flight"] > 0, "the writer to take its first batch")
    assert acc.flush(20) is True
    return s, acc


def test_a_backlog_of_half_the_queue_is_written_in_larger_batches(tmp_path: Path) -> None:
    s, acc = backlog(tmp_path, "big.db", [{"kind": "k", "n": i} for i in range(900)])
    try:
        st = acc.stats()
        assert st["written"] == 900 and st["pending"] == 0 and st["rejected"] == 0
        # batch_size 10 alone would take 90 batches; with 890 rows queued behind the first batch
        # (>= half of queue_size 1000) the writer takes up to max_batch_size = 400 at once
        assert 3 <= st["batches"] <= 60, st["batches"]
        assert rows_of(s.path) == [("k", i) for i in range(900)]  # each once, in order
        assert st["submitted"] == st["accepted"] + st["rejected"]
        assert st["accepted"] == st["written"] + st["dead_lettered"] + st["dropped"] + st["pending"]
    finally:
        s.close()


def test_a_refused_row_inside_a_large_batch_is_isolated_and_dead_lettered(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"kind": "k", "n": i} for i in range(900)]
    rows[300] = {"kind": None, "n": 300}  # NOT NULL: refused by the database, inside the 400-row batch
    s, acc = backlog(tmp_path, "isolated.db", rows)  # dead letters go to the file: flush() is True
    try:
        st = acc.stats()
        assert st["written"] == 899 and st["dead_lettered"] == 1 and st["isolated_batches"] >= 1
        assert [d.row for d in acc.dead_letters()] == [{"kind": None, "n": 300}]
        assert rows_of(s.path) == [("k", i) for i in range(900) if i != 300]
    finally:
        s.close()


def test_below_half_the_queue_a_batch_is_still_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "small.db"
    s = open_acc(path, queue_size=1000, batch_size=10, max_batch_size=400)
    try:
        acc = s.plugin("accounting")
        with write_locked(path):
            for i in range(300):  # under half of queue_size: batches stay at batch_size
                acc.submit("usage", {"kind": "k", "n": i})
            wait_until(lambda: acc.stats()["in_flight"] > 0, "the writer to take its first batch")
        assert acc.flush(20) is True
        assert acc.stats()["batches"] == 30
    finally:
        s.close()


def test_statements_follow_the_connections_variable_limit(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "limit.db"), isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (a, b, c, d)")
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)
        limits = SQLITE.limits(conn)
        assert limits is not None and limits[0] == 40
        items = [("t", {"a": i, "b": i, "c": i, "d": i}, 0.0, i) for i in range(100)]
        planner = SQLITE.planner(None)
        planner.set_limits(*limits)
        (statements, good), = planner.plan(items).groups.values()
        assert all(len(args) <= 40 for _, args in statements) and len(good) == 100
        conn.execute("BEGIN")
        for sql, args in statements:
            conn.execute(sql, args)
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*), sum(a) FROM t").fetchone() == (100, sum(range(100)))
        # the fixed 999 parameters the writer used before would not fit this connection
        (old, _), = RowPlanner(None).plan(items).groups.values()
        try:
            conn.execute(old[0][0], old[0][1])
        except sqlite3.OperationalError as err:
            assert "too many SQL variables" in str(err)
        else:  # pragma: no cover - the limit above makes this unreachable
            raise AssertionError("a 400-parameter statement ran on a connection limited to 40")
    finally:
        conn.close()


def test_the_default_connection_allows_a_whole_batch_per_statement(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "default.db"))
    try:
        limits = SQLITE.limits(conn)
    finally:
        conn.close()
    assert limits is not None and limits[0] >= 999
    planner = SQLITE.planner(None, preferred=500)
    planner.set_limits(*limits)
    items = [("t", {"a": i, "b": i, "c": i, "d": i, "e": i}, 0.0, i) for i in range(500)]
    (statements, _), = planner.plan(items).groups.values()
    if limits[0] >= 2500:  # SQLite >= 3.32 defaults to 32766: a 500-row batch is one statement
        assert len(statements) == 1 and len(statements[0][1]) == 2500


@given(n=st.integers(1, 20_000), step=st.integers(1, 1000), preferred=st.integers(0, 1200))
def test_chunk_sizes_cover_the_rows_with_few_distinct_statements(n: int, step: int, preferred: int) -> None:
    sizes = chunk_sizes(n, step, preferred)
    assert sum(sizes) == n and all(0 < size <= step for size in sizes)
    odd = [size for size in sizes if size not in (step, preferred) and size >= 64]
    assert all(size & (size - 1) == 0 for size in odd)  # powers of two: a handful of statements to cache
    assert len([size for size in sizes if size < 64 and size not in (step, preferred)]) <= 1


def submit_while_stuck(tmp_path: Path, name: str, n: int, **settings: Any
                       ) -> tuple[list[bool], float, dict[str, Any], dict[str, Any]]:
    """Submit ``n`` rows while the writer is stuck on a real write lock (it takes one batch and
    waits for the lock): what each ``submit()`` returned, how long they took and the stats then;
    then let the writer go, ``flush()``, and the stats after it."""
    path = tmp_path / name
    s = open_acc(path, **settings)
    try:
        acc = s.plugin("accounting")
        with write_locked(path):
            started = time.monotonic()
            accepted = [acc.submit("usage", {"kind": "k", "n": i}) for i in range(n)]
            took = time.monotonic() - started
            st = acc.stats()
        assert acc.flush(20) is True
        return accepted, took, st, acc.stats()
    finally:
        s.close()


def test_a_stalled_writer_costs_a_submitter_a_bounded_wait(tmp_path: Path) -> None:
    accepted, took, st, after = submit_while_stuck(tmp_path, "stalled.db", 100, queue_size=100, batch_size=10,
                                                   yield_ms=50)
    assert all(accepted)
    # at most one wait for the take of the first batch, one at half the queue and one at
    # nine-tenths (both time out: the writer is stuck), then none until it takes again
    assert st["yields"] <= 3 and took < 2.0, (st["yields"], took)
    assert after["written"] == 100


def test_below_half_full_submit_never_waits(tmp_path: Path) -> None:
    # the writer stuck on a real write lock, the queue kept under half full: no submit() waits
    # for it (only a producer far ahead of the writer hands it the GIL; incident 004's request
    # path never waits on SQLite while the writer keeps up)
    accepted, _, st, after = submit_while_stuck(tmp_path, "underhalf.db", 400, queue_size=1000, batch_size=10,
                                                yield_ms=50)
    assert all(accepted)
    assert st["yields"] == 0 and st["turns"] == 0, st
    assert after["written"] == 400


def test_yield_ms_zero_never_waits(tmp_path: Path) -> None:
    _, _, st, _ = submit_while_stuck(tmp_path, "noyield.db", 100, queue_size=100, batch_size=10, yield_ms=0)
    assert st["yields"] == 0 and st["turns"] == 0


def test_a_submitter_past_the_mark_waits_for_the_writers_call_to_return() -> None:
    led = Ledger(100)
    lock = led.hand_over(0)  # the writer enters a database call
    assert lock is not None and led.turn_mark == led.accepted
    order: list[str] = []
    waiter = threading.Thread(target=lambda: (led.give_turn(30.0), order.append("turned")))
    waiter.start()
    wait_until(lambda: led.turn_waiting == 1, "the submitter to wait for the writer's turn")
    order.append("back")
    led.take_back(lock)  # the call returned
    waiter.join(10)
    assert not waiter.is_alive() and order == ["back", "turned"]
    assert led.turn_mark == NEVER and led.turns == 1


def test_a_submitter_waits_for_a_turn_at_most_its_timeout_once() -> None:
    led = Ledger(100)
    lock = led.hand_over(0)  # the writer's call never returns (in this test)
    assert lock is not None
    started = time.monotonic()
    led.give_turn(0.05)
    assert time.monotonic() - started >= 0.04
    assert led.turn_mark == NEVER  # cleared: the next submitter does not wait for this call again
    second = led.hand_over(0)  # the other lock of the pair: the writer can mark its next call
    assert second is not None and second is not lock
    led.take_back(second)
    led.take_back(lock)


def test_queued_rows_give_the_collector_nothing_to_track(tmp_path: Path) -> None:
    """A backlog adds no object per row for the cyclic garbage collector (accounting.ledger:
    three queues, no tuple per row). With a tuple per row, 5,000 queued rows were 5,000 tracked
    objects, promoted to the oldest generation, and full collections scanned them all."""
    path = tmp_path / "gc.db"
    s = open_acc(path, queue_size=20000, batch_size=10000, max_batch_size=10000)
    try:
        acc = s.plugin("accounting")
        acc.submit("usage", {"kind": "k", "n": -1})
        assert acc.flush(20) is True
        with write_locked(path):
            acc.submit("usage", {"kind": "k", "n": -2})  # the writer takes it and waits for the lock
            wait_until(lambda: acc.stats()["in_flight"] == 1, "the writer to take its batch")
            gc.collect()
            before = len(gc.get_objects())
            for i in range(5000):
                acc.submit("usage", {"kind": "k", "n": i})
            after = len(gc.get_objects())
            assert acc.stats()["queued"] == 5000
        assert after - before < 500, f"{after - before} tracked objects for 5000 queued rows"
        assert acc.flush(20) is True
        assert len(rows_of(path)) == 5002
    finally:
        s.close()


def queue_rows(led: Ledger, rows: list[tuple[str, dict[str, Any], float]]) -> None:
    """Accept ``(table, row, submit time)`` rows into ``led`` as ``submit()``'s general path does
    (a copy placed at the tail, the counters), without a plugin or a writer."""
    for table, row, ts in rows:
        with led.lock:
            led.place(table, dict(row), None, None, ts)
            led.queued += 1
            led.accepted += 1


def test_a_batch_taken_from_a_long_queue_keeps_order_and_numbers() -> None:
    led = Ledger(100, backlog_limit=30)
    queue_rows(led, [("t" if i % 2 else "u", {"n": i}, float(i)) for i in range(80)])
    first = led.take(10)  # the queue is past half full: the backlog limit applies
    assert len(first) == 30 and [item[1]["n"] for item in first] == list(range(30))
    assert list(first.seqs) == list(range(1, 31)) and first[1] == ("t", {"n": 1}, 1.0, 2)
    led.settle(first, written=30, dead=0, durable_dead=True)
    second = led.take(10)
    assert [item[3] for item in second] == list(range(31, 61)) and second.times[0] == 30.0
    assert led.queued == 20


def test_rows_with_the_same_keys_in_another_order_keep_their_values() -> None:
    planner = RowPlanner(None)
    items = [("t", {"a": 1, "b": 2}, 0.0, 1), ("t", {"b": 4, "a": 3}, 0.0, 2), ("t", {"a": 5, "b": 6}, 0.0, 3)]
    groups = planner.plan(items).groups
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b)")
    for statements, _ in groups.values():
        for sql, args in statements:
            conn.execute(sql, args)
    assert sorted(conn.execute("SELECT a, b FROM t").fetchall()) == [(1, 2), (3, 4), (5, 6)]
    assert sorted(len(good) for _, good in groups.values()) == [1, 2]


def test_a_submitter_does_not_give_way_once_the_writer_has_taken_the_backlog() -> None:
    """give_way() is called with the queue length the submitter saw before it waited for the
    writer's call; if the writer took a batch meanwhile, waiting for its next take would last
    until yield_ms with the writer waiting for rows (seen in a trace: 5 ms idle on both sides)."""
    led = Ledger(100)
    queue_rows(led, [("t", {"n": i}, 0.0) for i in range(10)])  # under half full: the writer took the backlog
    led.give_way(30.0)
    led.give_way(30.0, last_chance=True)
    assert led.yields == 0 and led.yield_armed and led.full_armed
