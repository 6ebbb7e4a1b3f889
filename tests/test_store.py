"""The Store's shape: the per-process cache, exactly-once init, the init lock across processes,
the connection registry (close and invalidate from any thread), fork safety, drivers, read-only
and in-memory stores, checkpoint, backup and stats."""
from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import peewee
import pytest

import corestore
from corestore import ConfigError, Profile, ReadOnlyError, StoreClosedError

WAL_NORMAL = {"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal"}


def test_sixteen_threads_get_one_store_initialised_once(db_path: str) -> None:
    calls = []
    barrier = threading.Barrier(16)
    stores = []

    def setup(store: corestore.Store) -> None:
        calls.append(threading.current_thread().name)
        time.sleep(0.05)  # widen the race window
        store.database.execute_sql("create table t(x)")

    def opener() -> None:
        barrier.wait()
        stores.append(corestore.open(db_path, profile="minimal", setup=setup))

    threads = [threading.Thread(target=opener) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({id(s) for s in stores}) == 1
    store = stores[0]
    for _ in range(15):
        store.close()
    assert not store.closed
    store.close()
    assert store.closed


SETUP_CHILD = """
import json, sys, time, corestore
db, out = sys.argv[1], sys.argv[2]
def setup(store):
    start = time.time()
    time.sleep(0.3)
    with open(out, "a") as fh:
        fh.write(json.dumps([start, time.time()]) + "\\n")
store = corestore.open(db, profile="minimal", setup=setup)
store.close()
"""


def test_two_processes_never_overlap_in_setup(tmp_path: Path, db_path: str) -> None:
    import subprocess
    import sys

    from helpers import child_env

    out = tmp_path / "spans.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", SETUP_CHILD, db_path, str(out)], env=child_env()) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    spans = sorted(json.loads(line) for line in out.read_text().splitlines())
    assert len(spans) == 2
    (a_start, a_end), (b_start, b_end) = spans
    assert a_end <= b_start, f"setup ran concurrently: {spans}"
    assert os.path.exists(db_path + ".corestore-lock")  # the sidecar is never deleted


def test_close_from_main_thread_closes_worker_connections(minimal: corestore.Store) -> None:
    minimal.database.execute_sql("create table t(x)")
    conns = []
    done, finish = threading.Barrier(4), threading.Event()

    def worker() -> None:
        minimal.database.execute_sql("insert into t values (1)")
        conns.append(minimal.database.connection())
        done.wait()
        finish.wait(10)  # stay alive: a dead thread's connection is swept at the next connect

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    done.wait()
    assert minimal.stats()["connections"] == 4
    minimal.close()
    finish.set()
    for t in threads:
        t.join()
    assert minimal.database.connection_count() == 0
    for conn in conns:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("select 1")
    with pytest.raises(StoreClosedError, match="the store was closed"):
        minimal.database.execute_sql("select 1")  # no silent autoconnect
    with pytest.raises(StoreClosedError):
        with minimal.transaction():
            pass


def test_busy_connection_closes_when_its_transaction_ends(minimal: corestore.Store) -> None:
    minimal.database.execute_sql("create table t(x)")
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def worker() -> None:
        with minimal.transaction():
            minimal.database.execute_sql("insert into t values (1)")
            seen["conn"] = minimal.database.connection()
            inside.set()
            release.wait(10)
            minimal.database.execute_sql("insert into t values (2)")  # still usable inside

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(10)
    busy = minimal.invalidate()
    assert busy == 1
    release.set()
    t.join()
    with pytest.raises(sqlite3.ProgrammingError):
        seen["conn"].execute("select 1")  # dropped at the end of its transaction
    assert minimal.database.execute_sql("select count(*) from t").fetchone()[0] == 2
    assert minimal.stats()["generation"] == 1


def test_invalidate_reopens_idle_connections(minimal: corestore.Store) -> None:
    first = minimal.database.connection()
    minimal.invalidate()
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("select 1")
    minimal.database.execute_sql("select 1")
    assert minimal.database.connection() is not first
    assert minimal.stats()["reopens"] == 1


def test_memory_minimal_is_shared_by_threads() -> None:
    store = corestore.open(":memory:", profile="minimal")
    store.database.execute_sql("create table t(x)")
    store.database.execute_sql("insert into t values (42)")
    got = []
    t = threading.Thread(target=lambda: got.append(store.database.execute_sql("select x from t").fetchone()[0]))
    t.start()
    t.join()
    assert got == [42]
    other = corestore.open(":memory:", profile="minimal")
    assert other is not store  # every :memory: open is its own database
    assert "t" not in other.database.get_tables()
    other.close()
    store.close()


def test_two_drivers_on_one_file_are_refused(db_path: str) -> None:
    pytest.importorskip("apsw")
    store = corestore.open(db_path, profile="minimal")
    with pytest.raises(ConfigError, match="already open in this process through driver 'sqlite3'; refusing driver 'apsw'"):
        corestore.open(Profile(path=db_path, driver="apsw"))
    store.close()
    other = corestore.open(Profile(path=db_path, driver="apsw"))  # fine once the first is closed
    other.database.execute_sql("select 1")
    other.close()


def test_read_only_refuses_writes_before_sqlite(db_path: str) -> None:
    rw = corestore.open(db_path, profile="minimal")
    rw.database.execute_sql("create table t(x)")
    rw.database.execute_sql("insert into t values (1)")
    rw.close()
    ro = corestore.open(Profile(path=db_path, read_only=True, pragmas={"busy_timeout": 100}))
    with pytest.raises(ReadOnlyError, match="read-only"):
        with ro.transaction():
            pass
    with pytest.raises(ReadOnlyError):
        ro.database.execute_sql("insert into t values (2)")
    assert ro.database.execute_sql("select count(*) from t").fetchone()[0] == 1
    with pytest.raises(ReadOnlyError) as info:  # inside read() a write is the caller's error (issue 14)
        with ro.read():
            ro.database.execute_sql("delete from t")
    assert info.value.classification.name == "WRITE_IN_READ"
    assert ro.database.execute_sql("select count(*) from t").fetchone()[0] == 1
    ro.close()


def test_read_only_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        corestore.open(Profile(path=str(tmp_path / "nope.db"), read_only=True))
    assert not (tmp_path / "nope.db").exists()


def test_checkpoint_backup_and_stats(minimal: corestore.Store, tmp_path: Path) -> None:
    minimal.database.execute_sql("create table t(x)")
    with minimal.transaction():
        for i in range(100):
            minimal.database.execute_sql("insert into t values (?)", (i,))
    busy, log, done = minimal.checkpoint("TRUNCATE")
    assert busy == 0 and log == done
    assert os.path.getsize(minimal.path + "-wal") == 0
    copy = minimal.backup(tmp_path / "copy.db")
    check = sqlite3.connect(copy)
    assert check.execute("select count(*) from t").fetchone()[0] == 100
    assert check.execute("pragma integrity_check").fetchone()[0] == "ok"
    check.close()
    with pytest.raises(ConfigError, match="checkpoint mode 'SOMETIMES' is not allowed"):
        minimal.checkpoint("sometimes")
    stats = minimal.stats()
    assert stats["transactions"] == 1 and stats["statements"] >= 1 and stats["faults"] == 0


def _child_writes(path: str, queue: multiprocessing.Queue[object]) -> None:
    try:
        store = corestore.open(path, profile="minimal")  # the cache was emptied at fork: a fresh store
        store.database.execute_sql("insert into t values ('child')")
        queue.put(("ok", store.database.execute_sql("select count(*) from t").fetchone()[0],
                   store.stats()["connections_opened"]))
        store.close()
    except BaseException as err:  # report, never hang the parent
        queue.put(("error", repr(err), 0))


def test_forked_child_writes_without_touching_parent_connections(db_path: str) -> None:
    parent = corestore.open(db_path, profile="minimal", setup=lambda s: s.database.execute_sql("create table t(x)"))
    parent.database.execute_sql("insert into t values ('parent')")
    parent_conn = parent.database.connection()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_writes, args=(db_path, queue))
    proc.start()
    status, count, opened_in_child = queue.get(timeout=30)
    proc.join(30)
    assert status == "ok", count
    assert count == 2 and proc.exitcode == 0
    assert opened_in_child == 1  # a fresh store (the cache was emptied), not the parent's
    # the parent's idle connection was closed before fork() (the fork rule), never by the
    # child; the parent's next statement opens a fresh one
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        parent_conn.execute("select 1")
    opened = parent.stats()["connections_opened"]
    assert parent.database.execute_sql("select count(*) from t").fetchone()[0] == 2
    assert parent.stats()["connections_opened"] == opened + 1
    parent.close()
    check = sqlite3.connect(db_path)
    assert check.execute("pragma integrity_check").fetchone()[0] == "ok"
    check.close()


def _child_reuses_parent_store(store: corestore.Store, queue: multiprocessing.Queue[object]) -> None:
    try:
        store.database.execute_sql("insert into t values ('child')")  # the inherited store reopens cleanly
        queue.put(("ok", store.stats()["connections_opened"]))
    except BaseException as err:
        queue.put(("error", repr(err)))


def test_store_used_in_forked_child_reopens(db_path: str) -> None:
    parent = corestore.open(db_path, profile="minimal", setup=lambda s: s.database.execute_sql("create table t(x)"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_reuses_parent_store, args=(parent, queue))
    proc.start()
    status, opened = queue.get(timeout=30)
    proc.join(30)
    assert status == "ok", opened
    assert opened == 2  # the child opened its own connection
    assert parent.database.execute_sql("select count(*) from t").fetchone()[0] == 1
    parent.close()


def test_nested_get_or_create_and_savepoints(minimal: corestore.Store) -> None:
    class Tag(peewee.Model):
        name = peewee.TextField(unique=True)

    minimal.bind([Tag])
    Tag.create_table()
    with minimal.transaction():
        a, created = Tag.get_or_create(name="a")
        b, created_again = Tag.get_or_create(name="a")
        assert created and not created_again and a.id == b.id
        with minimal.transaction():  # joins as a savepoint
            Tag.create(name="b")
        try:
            with minimal.database.atomic():
                Tag.create(name="c")
                raise RuntimeError("roll back the savepoint only")
        except RuntimeError:
            pass
    assert sorted(t.name for t in Tag.select()) == ["a", "b"]


def test_lock_types(minimal: corestore.Store) -> None:
    minimal.database.execute_sql("create table t(x)")
    with minimal.database.atomic("exclusive"):  # peewee spelling, any case
        minimal.database.execute_sql("insert into t values (1)")
    with pytest.raises(corestore.QueryError, match="lock type 'IMMEDIATE; DROP TABLE t' is not allowed"):
        minimal.transaction(lock_type="IMMEDIATE; DROP TABLE t")
    assert minimal.database.execute_sql("select count(*) from t").fetchone()[0] == 1


def test_transaction_inside_read_is_an_error(minimal: corestore.Store) -> None:
    with minimal.read():
        with pytest.raises(corestore.QueryError, match=r"transaction\(\) inside read\(\)"):
            with minimal.transaction():
                pass


def test_peewee_atomic_at_top_level_is_a_store_transaction(minimal: corestore.Store) -> None:
    minimal.database.execute_sql("create table t(x)")
    before = minimal.stats()["transactions"]
    with minimal.database.atomic():
        minimal.database.execute_sql("insert into t values (1)")
    assert minimal.stats()["transactions"] == before + 1
    with pytest.raises(ZeroDivisionError):
        with minimal.database.atomic():
            minimal.database.execute_sql("insert into t values (2)")
            1 / 0
    assert minimal.database.execute_sql("select count(*) from t").fetchone()[0] == 1
