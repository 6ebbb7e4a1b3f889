"""pragma_guard and the generalised read-back (issue 20)."""
from __future__ import annotations

from pathlib import Path

import pytest

import corestore
from corestore import HealthStatus


def _store(path: Path, **pragmas: object) -> corestore.Store:
    return corestore.open(corestore.Profile(
        path=str(path), plugins=("wal_guard", "pragma_guard", "health"),
        pragmas={"busy_timeout": 5000, "synchronous": "full", "foreign_keys": True, "cache_size": -4000, **pragmas},
        settings={"pragma_guard": {"check_every": 1}}))


def test_application_sets_synchronous_off_and_health_reports_the_drift(tmp_path: Path) -> None:
    store = _store(tmp_path / "app.db")
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY)")
    assert store.health().components["pragma_guard"].status is HealthStatus.UP
    store.database.execute_sql("PRAGMA synchronous=OFF")  # application code on a store connection
    with store.transaction():
        store.database.execute_sql("INSERT INTO item DEFAULT VALUES")
    report = store.health()
    component = report.components["pragma_guard"]
    assert report.status is HealthStatus.DEGRADED and component.status is HealthStatus.DEGRADED
    assert component.details["drift"][0]["pragma"] == "synchronous"
    assert component.details["drift"][0]["wanted"] == 2 and component.details["drift"][0]["actual"] == 0
    assert "PRAGMA synchronous: wanted 2 (FULL), actual 0 (OFF)" in component.summary
    store.database.execute_sql("PRAGMA synchronous=FULL")  # put back: the next read-back clears it
    with store.transaction():
        store.database.execute_sql("INSERT INTO item DEFAULT VALUES")
    assert store.health().components["pragma_guard"].status is HealthStatus.UP
    store.close()


def test_drift_is_checked_at_the_cadence_not_on_every_commit(tmp_path: Path) -> None:
    store = corestore.open(corestore.Profile(path=str(tmp_path / "app.db"), plugins=("wal_guard", "pragma_guard"),
                                             pragmas={"busy_timeout": 5000},
                                             settings={"pragma_guard": {"check_every": 10}}))
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY)")
    guard = store.plugin("pragma_guard")
    for _ in range(30):
        with store.transaction():
            store.database.execute_sql("INSERT INTO item DEFAULT VALUES")
    checks = store.health().components["pragma_guard"].details["checks"]
    assert 2 <= checks <= 4  # 31 commits (the CREATE too), one read-back per 10
    assert guard.drift() == []
    store.close()


@pytest.mark.parametrize(("pragma", "value"), [("foreign_keys", 0), ("cache_size", -2000), ("busy_timeout", 10)])
def test_every_profile_pragma_is_read_back(tmp_path: Path, pragma: str, value: int) -> None:
    store = _store(tmp_path / "app.db")
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY)")
    store.database.execute_sql(f"PRAGMA {pragma} = {value}")
    with store.transaction():
        store.database.execute_sql("INSERT INTO item DEFAULT VALUES")
    drift = store.plugin("pragma_guard").drift()
    assert [(d["pragma"], d["actual"]) for d in drift] == [(pragma, value)]
    store.close()


def test_wal_guard_reads_back_every_profile_pragma_at_open(tmp_path: Path, install_plugins) -> None:
    """A plugin's on_open that changes a profile pragma after the core applied it is caught at open
    (before: only busy_timeout, synchronous, wal_autocheckpoint and journal_size_limit were)."""
    install_plugins(t_fk_off="plugin_fixtures:ForeignKeysOff")
    profile = corestore.Profile(path=str(tmp_path / "app.db"), plugins=("t_fk_off", "wal_guard"),
                                pragmas={"foreign_keys": True})
    with pytest.raises(corestore.FatalError, match="PRAGMA foreign_keys reads back 0"):
        corestore.open(profile)


def test_a_busy_timeout_the_write_gate_shortened_is_not_drift(tmp_path: Path) -> None:
    # The gate shortens a connection's busy timeout for one operation when its own wait timed
    # out; a read-back during that operation must not call it drift. Reaching a commit while the
    # gate's wait timed out and SQLite's lock was free needs a second process timed to the
    # microsecond, so the test shortens the wait through the plugin's own method, on a real
    # connection, and runs the real read-back.
    store = corestore.open(corestore.Profile(
        path=str(tmp_path / "app.db"), plugins=("wal_guard", "pragma_guard", "write_gate"),
        pragmas={"busy_timeout": 5000}, settings={"pragma_guard": {"check_every": 1}}))
    try:
        store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY)")
        gate, guard = store.plugin("write_gate"), store.plugin("pragma_guard")
        operation = object()
        conn = store.database.connection()
        gate._state().conn = conn
        gate._shorten_busy_wait(store, operation, gate.clock() + 0.25)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] <= 250
        assert gate.shortened_for(operation) and not gate.shortened_for(object())
        assert guard.check(store, conn, operation) == []
        assert [f["pragma"] for f in guard.check(store, conn, object())] == ["busy_timeout"]
        gate._restore_busy_wait()
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert guard.check(store, conn, operation) == []
    finally:
        store.close()
