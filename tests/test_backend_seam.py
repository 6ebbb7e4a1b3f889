"""The backend seam and the store link (issue 17): what a second engine and the database rely on."""
from __future__ import annotations

import ast
import gc
import inspect
import weakref
from pathlib import Path

import pytest

import corestore
from corestore import backends, database, link
from corestore.backends import sqlite as sqlite_backend

ROOT = Path(__file__).resolve().parent.parent


def test_sqlite_backend_provides_every_member_of_the_protocol() -> None:
    members = {name for name, _ in inspect.getmembers(backends.Backend) if not name.startswith("_")}
    members |= set(backends.Backend.__annotations__)
    assert members >= {"name", "make_database", "prepare_connection", "in_transaction_test", "is_driver_error",
                       "read_header", "init_lock", "classify_exception"}
    backend = backends.backend_for(corestore.Profile(name="t", path=":memory:"))
    assert backend is sqlite_backend.BACKEND
    missing = sorted(m for m in members if not hasattr(backend, m))
    assert missing == []


def test_link_provides_every_member_of_store_link() -> None:
    wanted = {name for name, _ in inspect.getmembers(backends.StoreLink) if not name.startswith("_")}
    assert wanted  # the protocol is not empty
    assert sorted(m for m in wanted if not callable(getattr(link.LINK, m, None))) == []


def test_database_never_calls_a_private_store_method() -> None:
    """database.py reaches the store only through the link (and the store's public attributes)."""
    tree = ast.parse((ROOT / "corestore" / "database.py").read_text())
    private = [
        f"line {node.lineno}: store.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and isinstance(node.value, (ast.Attribute, ast.Name))
        and (getattr(node.value, "attr", None) == "store" or getattr(node.value, "id", None) == "store")
    ]
    assert private == []


def test_store_imports_no_private_name_from_database() -> None:
    tree = ast.parse((ROOT / "corestore" / "store.py").read_text())
    imported = [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "database"
        for alias in node.names
    ]
    assert [name for name in imported if name.startswith("_")] == []


def test_a_closed_store_is_freed_without_the_garbage_collector(db_path: str) -> None:
    """The link is shared and the database holds its store weakly: no reference cycle keeps a
    store (and its connections) alive after the last reference to it is dropped."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        store = corestore.open(db_path, profile="minimal")
        store.database.execute_sql("create table t(x)")
        store.close()
        ref = weakref.ref(store)
        db_ref = weakref.ref(store.database)
        del store
        assert ref() is None
        assert db_ref() is None
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("driver", ["sqlite3", "apsw"])
def test_prepare_applies_the_profile_to_every_new_connection(tmp_path: Path, driver: str) -> None:
    if driver == "apsw":
        pytest.importorskip("apsw")
    prof = corestore.Profile(name="seam", path=str(tmp_path / f"{driver}.db"), driver=driver,
                             pragmas={"busy_timeout": 1234, "journal_mode": "wal", "synchronous": "FULL"})
    store = corestore.open(prof)
    try:
        conn = store.database.connection()
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert sqlite_backend.PREPARE[0] is sqlite_backend.set_busy_timeout  # every wait bounded from the start
        assert store.stats()["connections_opened"] == 1
    finally:
        store.close()


def test_policy_sqlite_database_keeps_its_old_import(db_path: str) -> None:
    assert database.PolicySqliteDatabase is sqlite_backend.PolicySqliteDatabase
    store = corestore.open(db_path, profile="minimal")
    assert isinstance(store.database, database.PolicyMixin)
    store.close()
