"""The hooks whose behaviour differs on PostgreSQL (``test_hook_<name>_postgresql``): the driver
connection ``on_open`` and ``on_commit_invariant`` get, the core table ``classify_error`` falls
back to (SQLSTATEs), and what ``on_fatal`` hears about. The others are engine-neutral and are
tested once, on SQLite (tests/test_hooks.py)."""
from __future__ import annotations

import threading
from typing import Any

import pytest

import corestore
from corestore import ErrorKind, Profile

from plugin_fixtures import EVENTS


@pytest.fixture
def plugins(install_plugins: Any) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder", t_pg_checker="plugin_fixtures:PgChecker",
                    t_engine_busy_is_fatal="plugin_fixtures:EngineBusyIsFatal")


def hooks_of(plugin: str, hook: str) -> list[tuple[Any, ...]]:
    return [e for e in EVENTS if e[0] == plugin and e[1] == hook]


def _lock_row(pg_url: str, table: str) -> Any:
    from pgserver import admin_connect

    holder = admin_connect(pg_url)
    holder.execute("BEGIN")
    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    return holder


def test_hook_on_open_postgresql(pg_url: str, plugins: None) -> None:
    store = corestore.open(Profile(url=pg_url, plugins=("t_recorder",)))
    assert hooks_of("t_recorder", "on_open") == [("t_recorder", "on_open", "psycopg")]
    t = threading.Thread(target=lambda: store.database.execute_sql("SELECT 1"))
    t.start()
    t.join(30)
    assert len(hooks_of("t_recorder", "on_open")) == 2  # one per thread's connection, as on SQLite
    store.close()


def test_hook_classify_error_postgresql(pg_url: str, plugins: None) -> None:
    """The core table (SQLSTATEs) answers last; a plugin's answer wins and is recorded."""
    plain = corestore.open(Profile(url=pg_url, plugins=("t_recorder",), server_settings={"lock_timeout": "100ms"}))
    plain.database.execute_sql("CREATE TABLE t (x int)")
    overriding = corestore.open(Profile(url=pg_url, plugins=("t_engine_busy_is_fatal", "t_recorder"),
                                        server_settings={"lock_timeout": "100ms"}))
    holder = _lock_row(pg_url, "t")
    try:
        with pytest.raises(corestore.BusyError) as busy:
            with plain.transaction():
                plain.database.execute_sql("INSERT INTO t VALUES (1)")
        c = busy.value.classification
        assert c is not None and c.source == "core" and c.name == "LOCK_NOT_AVAILABLE" and c.sqlstate == "55P03"
        with pytest.raises(corestore.FatalError) as fatal:
            with overriding.transaction():
                overriding.database.execute_sql("INSERT INTO t VALUES (1)")
        c = fatal.value.classification
        assert c is not None and c.kind is ErrorKind.FATAL_IO and c.source == "t_engine_busy_is_fatal"
    finally:
        holder.close()
    assert hooks_of("t_recorder", "on_fatal") == [("t_recorder", "on_fatal", "FATAL_IO", "write")]
    plain.close()
    overriding.close()


def test_hook_on_fatal_postgresql(pg_url: str, plugins: None) -> None:
    """Storage faults only (a terminated session), not contention or caller errors."""
    from pgserver import admin_connect

    store = corestore.open(Profile(url=pg_url, plugins=("t_recorder",)))
    db = store.database
    db.execute_sql("CREATE TABLE t (x int UNIQUE)")
    db.execute_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(corestore.ConstraintError):
        db.execute_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(corestore.QueryError):
        db.execute_sql("SELECT * FROM missing")
    assert hooks_of("t_recorder", "on_fatal") == []
    with pytest.raises(corestore.TransientError):
        with store.transaction():
            pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            with admin_connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                admin.execute("SELECT pg_sleep(0.01) FROM generate_series(1, 500) "
                              "WHERE EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (pid,))
            db.execute_sql("SELECT 1")
    assert hooks_of("t_recorder", "on_fatal") == [("t_recorder", "on_fatal", "TRANSIENT_IO", "write")]
    store.close()


def test_hook_on_commit_invariant_postgresql(pg_url: str, plugins: None) -> None:
    """Runs on the psycopg connection after each write's COMMIT, never after a read."""
    store = corestore.open(Profile(url=pg_url, plugins=("t_pg_checker", "t_recorder")))
    with store.transaction():
        store.database.execute_sql("CREATE TABLE t (x int)")
    assert hooks_of("t_recorder", "on_fatal") == [("t_recorder", "on_fatal", "INVARIANT", "write")]
    assert store.stats()["violations"] == 1
    with store.read():
        store.database.execute_sql("SELECT * FROM t").fetchall()
    assert store.stats()["violations"] == 1
    store.close()
