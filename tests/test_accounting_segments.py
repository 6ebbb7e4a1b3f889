"""How accounting keeps queued rows (``accounting.segments``): rows of one named table and keys
are kept flat (their values in one list, no object per row), anything else as a copy in a
mixed segment, and whatever a batch, ``drop_oldest`` or ``close()`` takes comes out in
acceptance order, numbered, with the values it went in with.

Most tests drive a real :class:`Accounting` without a store: its ``submit()`` (fast and general
paths alike) only touches the ledger once the table is known to exist, and the writer is not
needed to take batches (``Ledger.take`` is what it calls). The end-to-end tests use real
SQLite files."""
from __future__ import annotations

import sqlite3
import time
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corestore
from corestore import Profile
from corestore_plugins.accounting import Accounting
from corestore_plugins.accounting.segments import FLAT_RUN, MIXED_RUN, Segment
from corestore_plugins.accounting.settings import Settings

WAL = {"busy_timeout": 10000, "journal_mode": "wal", "synchronous": "normal"}
#: the key sets rows are drawn from: two of two keys (one a reordering), one of three, one of one
SHAPES = (("a", "b"), ("b", "a"), ("a", "b", "c"), ("a",))


def storeless(**settings: Any) -> Accounting:
    """An accounting plugin with no store: tables ``t`` and ``u`` count as known to exist, so
    ``submit()`` never starts a writer; ``yield_ms = 0``: it never waits for one."""
    acc = Accounting(Settings(yield_ms=0, **settings))
    acc._tables_ok.update({"t", "u"})
    return acc


def kinds(acc: Accounting) -> list[tuple[str, int]]:
    """The queue's segments, oldest first: ("flat" or "mixed", rows in it)."""
    return [("mixed" if seg.shape is None else "flat", len(seg)) for seg in acc._ledger.segments]


def test_rows_of_one_table_and_keys_are_kept_flat_in_one_segment() -> None:
    acc = storeless(queue_size=1000)
    for i in range(300):
        assert acc.submit("t", {"a": i, "b": -i}) is True
    assert kinds(acc) == [("flat", 300)]
    seg = acc._ledger.segments[0]
    assert seg.values[:6] == [0, 0, 1, -1, 2, -2] and len(seg.values) == 600
    assert acc.stats()["queued"] == 300


def test_the_fast_path_is_the_instance_submit_and_the_method_behaves_the_same() -> None:
    acc = storeless()
    assert isinstance(acc.submit, types.FunctionType) and acc.submit.__doc__ == Accounting.submit.__doc__
    assert acc.submit("t", {"a": 1, "b": 2}) and Accounting.submit(acc, "t", {"a": 3, "b": 4})
    batch = acc._ledger.take(10)
    assert [row for _, row, _, _ in batch] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]


def test_the_row_is_copied_whichever_path_it_takes() -> None:
    acc = storeless()
    rows = [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"z": 9}]
    for row in rows:
        acc.submit("t", row)
    for row in rows:
        row.clear()
    assert [row for _, row, _, _ in acc._ledger.take(10)] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"z": 9}]


def test_a_shape_that_changes_every_few_rows_stays_in_one_mixed_segment() -> None:
    acc = storeless(queue_size=1000)
    for i in range(200):
        acc.submit("t" if i % 2 else "u", {"a": i, "b": i})
    # the first row opened a flat segment; the second, of another table, a flat one after a
    # run of one row would be a segment per row: everything after it is mixed, in runs
    assert len(acc._ledger.segments) <= 2 + 200 // MIXED_RUN * 2, kinds(acc)
    assert sum(n for _, n in kinds(acc)) == 200
    taken = acc._ledger.take(500)
    assert [(t, row["a"]) for t, row, _, _ in taken] == [("t" if i % 2 else "u", i) for i in range(200)]


def test_a_long_run_of_another_shape_gets_its_own_flat_segment() -> None:
    acc = storeless(queue_size=1000)
    for i in range(FLAT_RUN):
        acc.submit("t", {"a": i, "b": i})
    for i in range(100):
        acc.submit("u", {"x": i, "y": i})
    assert kinds(acc) == [("flat", FLAT_RUN), ("flat", 100)]


def test_same_count_other_keys_and_other_mappings_take_the_general_path() -> None:
    acc = storeless()
    acc.submit("t", {"a": 1, "b": 2})
    acc.submit("t", {"a": 3, "c": 4})  # two keys, not these two: a KeyError in the fast path
    acc.submit("t", types.MappingProxyType({"a": 5, "b": 6}))  # a mapping, not a dict: copied
    with pytest.raises(TypeError, match="row must be a mapping"):
        acc.submit("t", [("a", 1), ("b", 2)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="row must be a mapping"):
        acc.submit("t", "ab")  # type: ignore[arg-type]
    rows = [row for _, row, _, _ in acc._ledger.take(10)]
    assert rows == [{"a": 1, "b": 2}, {"a": 3, "c": 4}, {"a": 5, "b": 6}]
    assert acc.stats()["submitted"] == 3


def test_a_flat_segment_is_compacted_as_its_head_is_taken() -> None:
    acc = storeless(queue_size=100_000, on_full="drop_oldest")
    led = acc._ledger
    for i in range(5000):
        acc.submit("t", {"a": i, "b": i})
    seg = led.segments[0]
    for first in range(0, 4000, 100):
        batch = led.take(100)
        assert [row["a"] for row in batch.rows] == list(range(first, first + 100))
        led.settle(batch, written=100, dead=0, durable_dead=True)
    assert seg.start < 4000 and len(seg.times) < 5000  # the taken head was freed along the way
    assert [row["a"] for row in led.take(2000).rows] == list(range(4000, 5000))


def test_drop_oldest_drops_the_head_of_a_flat_segment() -> None:
    acc = storeless(queue_size=10, on_full="drop_oldest")
    for i in range(25):
        assert acc.submit("t", {"a": i, "b": i}) is True
    st_ = acc.stats()
    assert (st_["dropped"], st_["queued"], st_["accepted"]) == (15, 10, 25)
    batch = acc._ledger.take(100)
    assert [row["a"] for row in batch.rows] == list(range(15, 25)) and list(batch.seqs) == list(range(16, 26))


def test_close_takes_flat_rows_back_as_dicts() -> None:
    acc = storeless()
    for i in range(3):
        acc.submit("t", {"a": i, "b": str(i)})
    acc.submit("t", {"z": 1})
    in_flight, queued, _, _ = acc._ledger.take_all()
    assert in_flight == []
    assert [(t, row, seq) for t, row, _, seq in queued] == [
        ("t", {"a": 0, "b": "0"}, 1), ("t", {"a": 1, "b": "1"}, 2), ("t", {"a": 2, "b": "2"}, 3), ("t", {"z": 1}, 4)]
    assert acc._ledger.shape is None and acc._ledger.queued == 0
    assert acc.submit("t", {"a": 9, "b": 9}) is True  # (the ledger is not closed here: a new segment)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(("t", "u")), st.sampled_from(range(len(SHAPES))), st.integers(1, 40)),
    st.tuples(st.just("take"), st.integers(1, 120)),
), max_size=40), st.sampled_from(("reject", "drop_oldest")))
def test_whatever_the_shapes_rows_come_out_in_order_with_their_values(
        ops: list[tuple[Any, ...]], on_full: str) -> None:
    """Runs of rows of random tables and key sets (flat, mixed, reordered keys), taken in
    random amounts, with a full queue refusing or dropping the oldest: every batch holds the
    oldest rows still queued, numbered in acceptance order, with their tables and values; the
    counters add up; close() takes back exactly what is left."""
    acc = storeless(queue_size=150, on_full=on_full, batch_size=1, max_batch_size=1)
    led = acc._ledger
    model: list[tuple[str, dict[str, Any], int]] = []  # what is queued: (table, row, seq)
    seq = written = dropped = rejected = 0
    for op in ops:
        if op[0] == "add":
            _, table, shape, count = op
            for _ in range(count):
                row = {k: f"{k}{seq + 1}" for k in SHAPES[shape]}
                full = len(model) >= 150
                ok = acc.submit(table, row)
                if full and on_full == "reject":
                    assert not ok
                    rejected += 1
                    continue
                assert ok
                if full:
                    model.pop(0)
                    dropped += 1
                seq += 1
                model.append((table, dict(row), seq))
        else:
            batch = led.take(op[1])
            expect, model = model[:op[1]], model[op[1]:]
            assert [(t, dict(row), s) for t, row, _, s in batch] == expect
            assert list(batch.times) == sorted(batch.times)
            assert led.settle(batch, written=len(batch), dead=0, durable_dead=True)
            written += len(batch)
        snap = acc.stats()
        assert (snap["accepted"], snap["written"], snap["dropped"], snap["rejected"]) == (seq, written, dropped, rejected)
        assert snap["pending"] == len(model) and snap["accepted"] == written + dropped + snap["pending"]
    _, queued, _, _ = led.take_all()
    assert [(t, dict(row), s) for t, row, _, s in queued] == model


def test_a_segment_cut_whole_keeps_serving_as_the_tail() -> None:
    seg = Segment(None)
    seg.tables.append("t")  # type: ignore[union-attr]
    seg.values.append({"z": 1})
    seg.times.append(1.0)
    part = seg.cut(1, 7)
    assert (part.first, part.rows(), part.table_list(), len(seg)) == (7, [{"z": 1}], ["t"], 0)
    assert seg.tables == [] and seg.values == [] and seg.times == []


# -- end to end, real SQLite ---------------------------------------------------------------------
def open_acc(path: Path, **settings: Any) -> corestore.Store:
    profile = Profile(path=str(path), plugins=("accounting",), pragmas=WAL, settings={"accounting": settings})
    return corestore.open(profile, setup=lambda s: s.database.execute_sql(
        "CREATE TABLE usage (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER UNIQUE, ts REAL)"))


def test_flat_rows_reach_the_file_with_their_values_submit_time_and_a_refused_row_dead_lettered(
        tmp_path: Path) -> None:
    s = open_acc(tmp_path / "flat.db", ts_column="ts", batch_size=200)
    try:
        acc = s.plugin("accounting")
        for i in range(1000):
            acc.submit("usage", {"kind": "k", "n": i} if i % 2 else {"n": i, "kind": "k"})  # either key order
        acc.submit("usage", {"kind": "k", "n": 5})  # a duplicate n: refused by the database, alone
        assert acc.flush(20) is True  # (the refused row is dead-lettered to the file: durable)
        st_ = acc.stats()
    finally:
        s.close()
    conn = sqlite3.connect(str(tmp_path / "flat.db"))
    try:
        got = conn.execute("SELECT kind, n, ts FROM usage ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [(k, n) for k, n, _ in got] == [("k", i) for i in range(1000)]
    assert all(isinstance(ts, float) and ts > 1e9 for _, _, ts in got)
    assert st_["written"] == 1000 and st_["dead_lettered"] == 1
    letters = s.plugin("accounting").dead_letters()
    assert [(letter.table, letter.row, letter.reason) for letter in letters] == [("usage", {"kind": "k", "n": 5}, "refused")]


def test_rows_with_as_many_keys_but_other_ones_are_planned_apart() -> None:
    from corestore_plugins.accounting.rows import RowPlanner

    items = [("t", {"a": 1, "b": 2}, 0.0, 1), ("t", {"a": 3, "c": 4}, 0.0, 2), ("t", {"b": 6, "a": 5}, 0.0, 3)]
    groups = RowPlanner(None).plan(items).groups
    got = sorted((sql, tuple(args)) for stmts, _ in groups.values() for sql, args in stmts)
    # (a batch whose rows differ is grouped by each row's keys in order: the reordered row alone)
    assert got == [('INSERT INTO "t" ("a", "b") VALUES (?, ?)', (1, 2)), ('INSERT INTO "t" ("a", "c") VALUES (?, ?)', (3, 4)),
                   ('INSERT INTO "t" ("b", "a") VALUES (?, ?)', (6, 5))]


def test_rows_for_a_missing_table_are_refused_once_the_writer_looked_even_on_the_fast_path(tmp_path: Path) -> None:
    """The fast path skips the table check, and rows of two keys take it from their second row
    on: the writer's look at the schema revokes it for a table it did not see, so from its next
    look on the rows are refused and counted, as rows of any other shape are."""
    s = open_acc(tmp_path / "missing.db")
    try:
        acc = s.plugin("accounting")
        accepted = sum(acc.submit("usgae", {"kind": "k", "n": i}) for i in range(200))
        deadline = time.monotonic() + 10
        while acc.submit("usgae", {"kind": "k", "n": -1}):
            assert time.monotonic() < deadline, "rows for a missing table still accepted after 10 s"
            time.sleep(0.005)
        refused = [acc.submit("usgae", {"kind": "k", "n": i}) for i in range(100)]
        assert not any(refused)
        assert acc.flush(10)
        st_ = acc.stats()
        assert st_["rejected_tables"]["usgae"] == st_["rejected"] >= 101 and accepted <= 200
        assert st_["written"] == 0 and st_["dead_lettered"] == st_["accepted"]
        assert acc._ledger.shape is None or acc._ledger.shape.table != "usgae"
    finally:
        s.close()


def test_rows_isolated_one_by_one_keep_their_values_whatever_their_key_order() -> None:
    """Isolating a refused batch plans a statement per row: a row that lists its keys in another
    order must still put each value under its own column (rows are grouped by their keys in
    order there, not by key set)."""
    from corestore_plugins.accounting.rows import RowPlanner

    items = [("t", {"a": 1, "b": 2}, 0.0, 1), ("t", {"b": 4, "a": 3}, 0.0, 2)]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b)")
    for isolate in (False, True):
        conn.execute("DELETE FROM t")
        for stmts, _ in RowPlanner(None).plan(items, isolate=isolate).groups.values():
            for sql, args in stmts:
                conn.execute(sql, args)
        assert sorted(conn.execute("SELECT a, b FROM t").fetchall()) == [(1, 2), (3, 4)], isolate
