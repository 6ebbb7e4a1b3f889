"""maintenance (issue 20): optimize once per store on open, periodic optimize, budgeted quick_check."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import corestore
from corestore import HealthStatus
from corestore.sqlitebugs import linked_version, parse_version
from corestore_contrib.waiting import wait_until

from helpers import Holder


def _store(path: Path, **settings: object) -> corestore.Store:
    return corestore.open(str(path), enable=["maintenance"], settings={"maintenance": settings})


def test_optimize_runs_once_per_store_on_open(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    first = _store(path)
    again = _store(path)  # the same store from the cache: no second optimize
    assert again is first
    result = first.plugin("maintenance").stats()["optimize_on_open"]
    assert result["outcome"] == "done" and result["sql"] == "PRAGMA optimize=65538"  # 0x10002
    old = parse_version(linked_version("sqlite3")) < (3, 46, 0)
    assert result["analysis_limit"] == (400 if old else None)  # bounded ANALYZE before 3.46
    # analysis_limit is put back afterwards on the connection
    assert first.database.execute_sql("PRAGMA analysis_limit").fetchone()[0] == 0
    assert first.stats()["transactions"] >= 1  # it ran as a write through store.run
    first.close()
    again.close()


def test_never_on_a_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    store = corestore.open(corestore.Profile(path=str(path), plugins=("maintenance",), read_only=True))
    try:
        stats = store.plugin("maintenance").stats()
        assert "optimize_on_open" not in stats and stats["skipped"] == "read-only store"
        assert "nothing runs: read-only store" in store.health().components["maintenance"].summary
    finally:
        store.close()


def test_periodic_optimize_and_quick_check(tmp_path: Path) -> None:
    store = _store(tmp_path / "app.db", optimize_on_open=False, optimize_interval_s=0.05,
                   quick_check_interval_s=0.05, quick_check_budget_s=5.0)
    try:
        m = store.plugin("maintenance")
        wait_until(lambda: "optimize" in m.stats() and "quick_check" in m.stats(), "periodic maintenance to run")
        assert m.stats()["optimize"]["outcome"] == "done"
        assert m.stats()["quick_check"]["outcome"] == "ok"
        assert store.health().components["maintenance"].status is HealthStatus.UP
    finally:
        store.close()


def test_quick_check_is_time_budgeted_and_never_needs_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = _store(path, quick_check_budget_s=10.0)
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    with store.transaction():
        for _ in range(3000):
            store.database.execute_sql("INSERT INTO item (body) VALUES (randomblob(500))")
    m = store.plugin("maintenance")
    holder = Holder(str(path))  # another process holds the write lock the whole time
    try:
        assert m.quick_check(store)["outcome"] == "ok"
    finally:
        holder.release()
    m.settings = type(m.settings)(quick_check_budget_s=0.0)  # a budget that is always exceeded
    assert m.quick_check(store)["outcome"] == "incomplete"
    assert store.health().components["maintenance"].status is HealthStatus.UP
    store.close()


def test_quick_check_that_finds_damage_is_down(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO item (body) VALUES (?)", [(f"row {i} " * 20,) for i in range(2000)])
    conn.commit()
    page_size, pages = conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with open(path, "r+b") as fh:  # no connection of this process is open on it now
        fh.seek((pages // 2) * page_size + 3)  # a leaf page's cell count
        fh.write(b"\xff\xff")
    store = corestore.open(corestore.Profile(path=str(path), plugins=("maintenance",),
                                             settings={"maintenance": {"optimize_on_open": False}}))
    try:
        result = store.plugin("maintenance").quick_check(store)
        assert result["outcome"] == "damaged" and result["problems"]
        component = store.health().components["maintenance"]
        assert component.status is HealthStatus.DOWN and "quick_check found damage" in component.summary
    finally:
        store.close()
