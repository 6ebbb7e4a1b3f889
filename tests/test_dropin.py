"""corestore as a drop-in for peewee applications (issue 14): every peewee transaction API
through ``store.database`` behaves as on a plain ``SqliteDatabase``, nothing in the store waits
without a bound, and ``read()`` cannot write.

Anything that could hang (the session API deadlocked a thread before this issue) runs in a child
interpreter with a time limit, so a regression fails the test instead of hanging the suite.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest

import corestore
from corestore import Profile, ReadOnlyError
from corestore.sqlkind import is_read_sql

from helpers import run_python
from plugin_fixtures import EVENTS

PRAGMAS = {"busy_timeout": 2000, "journal_mode": "wal", "synchronous": "normal"}


@pytest.fixture
def recorder(install_plugins: Any) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder")


@pytest.fixture
def store(db_path: str, recorder: None) -> Iterator[corestore.Store]:
    """A store with the recording plugin: every hook call lands in ``EVENTS``."""
    s = corestore.open(Profile(path=db_path, name="dropin", plugins=("t_recorder",), pragmas=PRAGMAS))
    yield s
    while not s.closed:
        s.close()


def bind_model(store: corestore.Store) -> type[peewee.Model]:
    class Item(peewee.Model):
        value = peewee.IntegerField()

    store.bind([Item])
    Item.create_table()
    return Item


def hooks(name: str) -> list[tuple[Any, ...]]:
    return [e for e in EVENTS if e[1] == name]


def count_from_outside(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select count(*) from item").fetchone()[0]
    finally:
        conn.close()


# -- (2) nothing hangs: the session API, then further queries on the same thread -----------------
SESSION_CHILD = """
import sys, peewee, corestore
store = corestore.open(sys.argv[1])          # the default profile
db = store.database
class Item(peewee.Model):
    value = peewee.IntegerField()
store.bind([Item]); Item.create_table()
db.session_start(); Item.create(value=1); assert db.session_commit() is True
print("count", Item.select().count(), flush=True)            # this query deadlocked before issue 14
db.session_start(); Item.create(value=2); assert db.session_rollback() is True
print("count", Item.select().count(), flush=True)
assert db.session_commit() is False and db.session_rollback() is False   # nothing to end: peewee's False
with db.atomic():
    db.session_start(); Item.create(value=3); db.session_commit()     # inside: commits and re-begins, as peewee
print("count", Item.select().count(), flush=True)
print("stats", store.stats()["transactions"], flush=True)
store.close()
"""


def test_session_api_then_queries_on_the_same_thread(db_path: str) -> None:
    out = run_python(SESSION_CHILD, db_path, timeout=60)  # a hang is a TimeoutExpired, not a stuck suite
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:3] == ["count 1", "count 1", "count 2"], out.stdout
    assert int(lines[3].split()[1]) >= 3  # each real COMMIT went through the store
    assert count_from_outside(db_path) == 2


REENTRY_CHILD = """
import sys, threading, corestore
from corestore import Profile
store = corestore.open(Profile(path=sys.argv[1], name="m", pragmas={"busy_timeout": 300}))
db = store.database
db.execute_sql("create table t(x)")
# 1. store.transaction() after a bare db.begin() on the same thread: a clear error, not a deadlock
db.begin()
try:
    with store.transaction():
        pass
except corestore.QueryError as err:
    print("reentry", err.classification.name, "db.begin()" in str(err), flush=True)
db.rollback()
# 2. another thread stuck holding this thread's connection lock (a closer that never returns:
#    not reachable with a real close, which holds it for microseconds, hence taken by hand)
db.execute_sql("insert into t values (1)")
record = db._state.record
held, done = threading.Event(), threading.Event()
def hold():
    with record.lock:
        held.set(); done.wait(10)
threading.Thread(target=hold, daemon=True).start(); held.wait(5)
import time
t0 = time.monotonic()
try:
    db.execute_sql("select 1")
except corestore.BusyError as err:
    print("bounded", err.classification.name, round(time.monotonic() - t0, 1), flush=True)
done.set()
print("after", db.execute_sql("select count(*) from t").fetchone()[0], flush=True)
store.close()
"""


def test_no_wait_is_unbounded_and_reentry_is_named(db_path: str) -> None:
    out = run_python(REENTRY_CHILD, db_path, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "reentry REENTRANT_CONNECTION True", out.stdout
    name, waited = lines[1].split()[1:]
    assert name == "CONNECTION_LOCK_TIMEOUT" and 0.2 <= float(waited) < 5, out.stdout  # busy_timeout = 0.3 s
    assert lines[2] == "after 1"


ON_OPEN_CHILD = """
import sys, corestore
from corestore import Profile, hookimpl
class UsesDb:
    name = "t_uses_db"
    @hookimpl
    def on_open(self, store, connection):
        store.database.execute_sql("select 1")
from corestore import registry
registry._class_cache["t_uses_db"] = UsesDb
try:
    corestore.open(Profile(path=sys.argv[1], name="m", plugins=("t_uses_db",), pragmas={"busy_timeout": 300}))
except corestore.QueryError as err:
    print("refused", err.classification.name, flush=True)
"""


def test_hook_reentering_connect_is_refused_not_deadlocked(db_path: str) -> None:
    out = run_python(ON_OPEN_CHILD, db_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused REENTRANT_CONNECT"


# -- (1) peewee's transaction API ---------------------------------------------------------------
def test_manual_commit_with_atomic_raises_peewees_value_error(store: corestore.Store) -> None:
    Item = bind_model(store)
    db = store.database

    @db.atomic()  # created outside any transaction: peewee decides at __enter__, so must the store
    def add(v: int) -> None:
        Item.create(value=v)

    with db.manual_commit():
        with pytest.raises(ValueError, match="manual commit mode"):
            add(1)
        with pytest.raises(ValueError, match="manual commit mode"):
            with db.atomic():
                pass
        with pytest.raises(ValueError, match="manual commit mode"):
            with store.transaction():
                pass
        db.begin()  # manual_commit's purpose: the application begins and commits itself
        Item.create(value=2)
        db.commit()
    add(3)  # the same decorator outside manual_commit: a transaction
    assert sorted(i.value for i in Item.select()) == [2, 3]
    with pytest.raises(ValueError, match="Cannot enter manual commit block"):
        with db.atomic():
            with db.manual_commit():
                pass


def test_wrapped_commit_sees_every_commit(store: corestore.Store, db_path: str) -> None:
    Item = bind_model(store)
    db = store.database
    seen: list[str] = []
    original = db.commit

    def wrapped() -> None:  # what instrumentation of db.commit does
        seen.append("commit")
        return original()

    db.commit = wrapped  # type: ignore[method-assign]
    try:
        with db.atomic():
            Item.create(value=0)
        assert seen == ["commit"]
        for _ in db.batch_commit(range(10), 4):  # groups of 4, 4, 2: three commits
            Item.create(value=1)
        assert seen == ["commit"] * 4
        with db.atomic() as txn:
            Item.create(value=2)
            txn.commit()  # explicit commit inside: commit + begin, then the block's own commit
        assert seen == ["commit"] * 6
        with store.transaction() as stxn:  # the store's own transaction, committed inside
            Item.create(value=3)
            stxn.commit()
        assert seen == ["commit"] * 7
    finally:
        del db.commit
    assert count_from_outside(db_path) == 13
    # each real COMMIT ran the post-commit policies
    assert len(hooks("on_commit_invariant")) >= 7


def test_begin_commit_rollback_called_directly(store: corestore.Store, db_path: str) -> None:
    Item = bind_model(store)
    db = store.database
    EVENTS.clear()
    db.begin()
    Item.create(value=1)
    assert not db.in_transaction()  # as peewee: a bare begin() pushes nothing
    assert count_from_outside(db_path) == 0  # not committed yet
    db.commit()
    assert count_from_outside(db_path) == 1
    assert [e[1] for e in EVENTS] == ["before_operation", "on_commit_invariant", "on_success", "after_operation"]
    db.begin()
    Item.create(value=2)
    db.rollback()
    assert count_from_outside(db_path) == 1
    db.begin("IMMEDIATE")
    with pytest.raises(peewee.OperationalError):
        db.begin()  # "cannot start a transaction within a transaction", as peewee
    db.rollback()
    with pytest.raises(corestore.QueryError, match="lock type"):
        db.begin("IMMEDIATE; DROP TABLE item")
    assert Item.select().count() == 1


def test_atomic_nested_with_explicit_commit_and_rollback(store: corestore.Store, db_path: str) -> None:
    Item = bind_model(store)
    db = store.database
    with db.atomic() as outer:
        Item.create(value=1)
        with db.atomic() as inner:  # a savepoint
            Item.create(value=2)
            inner.rollback()
        assert Item.select().count() == 1
        with db.atomic():
            Item.create(value=3)
        outer.rollback()  # rolls everything back and begins again
        Item.create(value=4)
    assert [i.value for i in Item.select()] == [4]

    @db.transaction()
    def via_transaction() -> None:
        Item.create(value=5)
        with db.transaction():  # nested transaction(): joins, as in peewee
            Item.create(value=6)

    via_transaction()
    with db.savepoint():  # a savepoint at depth 0
        Item.create(value=7)
    with db:  # Database as a context manager: connect + atomic
        Item.create(value=8)
    assert count_from_outside(db_path) == 5


def test_close_inside_a_transaction_is_peewees_error(store: corestore.Store) -> None:
    Item = bind_model(store)
    db = store.database
    with pytest.raises(peewee.OperationalError, match="Attempting to close database while transaction is open"):
        with db.atomic():
            Item.create(value=1)
            db.close()
    assert Item.select().count() == 0
    db.begin()  # a bare begin() then close(): rolled back, as closing a sqlite3 connection does
    Item.create(value=2)
    assert db.close() is True
    assert Item.select().count() == 0


def test_connection_context_and_reconnect(store: corestore.Store) -> None:
    Item = bind_model(store)
    db = store.database
    db.close()
    with db.connection_context():
        Item.create(value=1)
        assert not db.is_closed()
    assert db.is_closed()

    @db.connection_context()
    def add() -> None:
        Item.create(value=2)

    add()
    assert Item.select().count() == 2


def test_init_is_refused(store: corestore.Store, tmp_path: Path) -> None:
    with pytest.raises(corestore.ConfigError, match="init\\(\\) on a store's database is refused"):
        store.database.init(str(tmp_path / "other.db"))
    assert store.database.database == store.path
    store.database.execute_sql("select 1")


def test_commit_and_rollback_without_a_transaction_as_peewee(store: corestore.Store, tmp_path: Path) -> None:
    """Nothing to commit: each peewee release's own behaviour (4.x: InterfaceError when closed,
    OperationalError when open; 3.17 differs), compared with a plain SqliteDatabase."""
    plain = peewee.SqliteDatabase(str(tmp_path / "plain.db"))

    def outcome(fn: Any) -> Any:
        try:
            fn()
        except Exception as err:  # the type is the observable behaviour compared here
            return type(err).__mro__[1] if isinstance(err, corestore.StoreError) else type(err)
        return None

    for connected in (False, True):
        for db in (store.database, plain):
            db.close()
            if connected:
                db.connect()
        assert outcome(store.database.commit) == outcome(plain.commit)
        assert outcome(store.database.rollback) == outcome(plain.rollback)
    plain.close()


# -- (3) read() cannot write --------------------------------------------------------------------
def _data_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA data_version").fetchone()[0]


def test_write_inside_read_raises_read_only_error_file_unchanged(store: corestore.Store, db_path: str) -> None:
    Item = bind_model(store)
    Item.create(value=1)
    watcher = sqlite3.connect(db_path)  # a second connection: data_version moves on any other commit
    try:
        before = _data_version(watcher)
        size = Path(db_path + "-wal").stat().st_size
        EVENTS.clear()
        with pytest.raises(ReadOnlyError) as info:
            with store.read():
                assert Item.select().count() == 1
                Item.create(value=2)
        assert isinstance(info.value, peewee.OperationalError) and isinstance(info.value, corestore.StoreError)
        assert info.value.classification.name == "WRITE_IN_READ" and info.value.committed is False
        for stmt in ("delete from item", "with x as (select 1) delete from item", "create table z(a)"):
            with pytest.raises(ReadOnlyError):
                store.run(lambda: store.database.execute_sql(stmt), read=True)
        with pytest.raises(ReadOnlyError):  # a raw cursor too: SQLite itself refuses (query_only)
            with store.read():
                store.database.cursor().execute("update item set value = 9")
        assert _data_version(watcher) == before
        assert watcher.execute("select count(*), max(value) from item").fetchone() == (1, 1)
        assert Path(db_path + "-wal").stat().st_size == size
        assert hooks("on_fatal") == []  # a caller error, not a storage fault
        kinds = {e[2] for e in hooks("before_operation")}
        assert kinds == {"read"}  # plugins saw what the operations really were
        assert store.stats()["faults"] == 0
        # the connection is writable again after the read
        with store.transaction():
            Item.create(value=3)
        assert _data_version(watcher) != before
    finally:
        watcher.close()


def test_read_only_error_not_counted_by_the_breaker(db_path: str) -> None:
    s = corestore.open(db_path)  # the default profile, circuit_breaker included
    s.database.execute_sql("create table t(x)")
    for _ in range(5):  # more than failure_threshold
        with pytest.raises(ReadOnlyError):
            with s.read():
                s.database.execute_sql("insert into t values (1)")
    assert s.plugin("circuit_breaker").state.name == "CLOSED"
    s.database.execute_sql("insert into t values (1)")
    s.close()


def test_read_nested_in_a_write_is_read_only_while_it_lasts(store: corestore.Store) -> None:
    Item = bind_model(store)
    with store.transaction():
        Item.create(value=1)
        with pytest.raises(ReadOnlyError):
            with store.read():
                Item.create(value=2)
        Item.create(value=3)  # writable again after the nested read
    assert sorted(i.value for i in Item.select()) == [1, 3]
    with store.read():
        with store.database.atomic():  # a savepoint inside a read is fine; writing in it is not
            assert Item.select().count() == 2
            with pytest.raises(ReadOnlyError):
                Item.create(value=4)


def test_every_write_path_works_after_a_read(store: corestore.Store, db_path: str) -> None:
    """query_only stays on after a read() (no statement per read); every path that may write
    switches it off first."""
    Item = bind_model(store)
    db = store.database
    writes = [
        lambda: Item.create(value=1),                                           # autocommit model call
        lambda: db.execute_sql("insert into item (value) values (2)"),          # autocommit SQL
        lambda: db.connection().execute("insert into item (value) values (3)"),  # the raw connection
        lambda: db.cursor().execute("insert into item (value) values (4)"),     # a raw cursor
        lambda: store.run(lambda: Item.create(value=5)),                        # store write transaction
        lambda: db.atomic()(lambda: Item.insert_many([{"value": 6}]).execute())(),  # peewee's atomic()
        lambda: [Item.create(value=7) for _ in db.batch_commit(range(1), 1)],
    ]
    for n, write in enumerate(writes, start=1):
        with store.read():
            Item.select().count()
        with store.read():  # a second read: nothing to switch
            pass
        write()
        assert count_from_outside(db_path) == n, n
    with store.read():
        pass
    db.begin()
    Item.create(value=8)
    db.commit()
    with store.read():
        pass
    assert store.checkpoint("PASSIVE")[0] == 0
    with pytest.raises(ReadOnlyError):  # the raw connection inside read(): still refused by SQLite
        with store.read():
            db.connection().execute("insert into item (value) values (9)")
    assert count_from_outside(db_path) == 8


def test_read_only_error_is_public() -> None:
    assert "ReadOnlyError" in corestore.__all__
    assert issubclass(ReadOnlyError, corestore.StoreError) and issubclass(ReadOnlyError, peewee.OperationalError)


# -- statement classification (issue 15, item 9) --------------------------------------------------
@pytest.mark.parametrize("sql, read", [
    ("select 1", True),
    ("  /* c */ -- x\n SELECT * FROM t", True),
    ("VALUES (1), (2)", True),
    ("EXPLAIN QUERY PLAN DELETE FROM t", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5) SELECT n FROM c", True),
    ("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN x", False),
    ("with a as (select ')'), b(v) as materialized (select 1) insert into t select * from b", False),
    ("WITH x AS NOT MATERIALIZED (SELECT 1) UPDATE t SET a = 1", False),
    ("WITH x AS (SELECT 1) REPLACE INTO t VALUES (1)", False),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING id", False),
    ("UPDATE t SET x = 1", False), ("DELETE FROM t", False), ("REPLACE INTO t VALUES (1)", False),
    ("PRAGMA journal_mode", True), ("PRAGMA main.table_info('t')", True), ("PRAGMA journal_mode = wal", False),
    ("PRAGMA wal_checkpoint(TRUNCATE)", False), ("PRAGMA optimize", False), ("PRAGMA incremental_vacuum(5)", False),
    ("CREATE TABLE u(x)", False), ("VACUUM", False), ("ANALYZE", False), ("select 'delete' from t", True),
])
def test_statement_classification(sql: str, read: bool) -> None:
    assert is_read_sql(sql) is read


def test_plugins_see_the_true_kind_of_autocommit_statements(store: corestore.Store) -> None:
    db = store.database
    db.execute_sql("create table t(x)")
    EVENTS.clear()
    db.execute_sql("with v(x) as (values (1)) insert into t select x from v")
    db.execute_sql("with d as (select 1) delete from t where x in d")
    db.execute_sql("with v(x) as (values (1)) select * from v")
    assert [e[2] for e in hooks("before_operation")] == ["write", "write", "read"]
    assert len(hooks("on_commit_invariant")) == 2  # the writes ran the post-commit policies


# -- threads: each thread's transaction API is its own --------------------------------------------
def test_sessions_on_many_threads(store: corestore.Store, db_path: str) -> None:
    Item = bind_model(store)
    db = store.database
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                db.session_start()
                Item.create(value=n * 100 + i)
                db.session_commit()
                Item.select().count()
        except BaseException as err:  # reported to the main thread
            errors.append(err)

    # daemon threads and a bounded join: a hung session thread fails the test, it cannot hang pytest
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a session thread hung"
    assert errors == []
    assert count_from_outside(db_path) == 80
