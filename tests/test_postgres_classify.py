"""The SQLSTATE table, row by row, against the real server: each code is raised by the server
itself (PL/pgSQL ``RAISE ... USING ERRCODE``), through a store transaction, and must come back
as the documented kind, exception and name; and the docs' table says the same as the code."""
from __future__ import annotations

import re
from pathlib import Path

import peewee
import pytest

import corestore
from corestore import ErrorKind, StoreError
from corestore.classify_pg import CLASS_ROWS, SQLSTATE_ROWS, row_for
from corestore.raising import EXCEPTION_FOR_KIND

ROOT = Path(__file__).resolve().parent.parent


def _raise(store: corestore.Store, sqlstate: str) -> StoreError:
    with pytest.raises(StoreError) as info:
        with store.transaction():
            store.database.execute_sql(
                f"DO $$ BEGIN RAISE EXCEPTION 'drill {sqlstate}' USING ERRCODE = '{sqlstate}'; END $$")
    return info.value


@pytest.mark.parametrize("sqlstate", sorted(SQLSTATE_ROWS) + ["23502", "22012", "42703", "08006", "53200", "XX000",
                                                               "0A000", "F0000"])
def test_every_row_as_the_server_raises_it(pg_url: str, sqlstate: str) -> None:
    store = corestore.open(corestore.Profile(url=pg_url, plugins=()))
    try:
        err = _raise(store, sqlstate)
        c = err.classification
        assert c is not None and c.sqlstate == sqlstate and c.source == "core"
        row = row_for(sqlstate)
        kind = row.kind if row is not None else ErrorKind.UNKNOWN
        assert c.kind is kind
        assert isinstance(err, EXCEPTION_FOR_KIND[kind])
        if row is not None:
            assert c.name == row.name
        assert err.committed is False  # raised before COMMIT: nothing was committed
        if kind is ErrorKind.CONSTRAINT:
            assert isinstance(err, peewee.IntegrityError)
        assert store.stats()["reopens"] == (1 if c.reopen else 0)
        assert store.database.execute_sql("SELECT 1").fetchone()[0] == 1  # the store goes on
    finally:
        store.close()


def test_in_failed_transaction_is_a_follow_on_not_a_fault(pg_url: str) -> None:
    store = corestore.open(corestore.Profile(url=pg_url, plugins=()))
    store.database.execute_sql("CREATE TABLE t (x int UNIQUE)")
    store.database.execute_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(corestore.QueryError) as info:
        with store.transaction():
            try:
                store.database.execute_sql("INSERT INTO t VALUES (1)")
            except corestore.ConstraintError:
                pass  # the caller swallows the first error; the transaction is still failed
            store.database.execute_sql("SELECT 1")
    c = info.value.classification
    assert c is not None and c.sqlstate == "25P02" and c.name == "IN_FAILED_SQL_TRANSACTION" and not c.is_fault
    assert store.stats()["faults"] == 0 and store.stats()["reopens"] == 0
    store.close()


def test_the_docs_table_matches_the_code() -> None:
    import importlib.util

    for page in ("postgresql.md", "concepts/errors.md"):  # the same generated table on both pages
        assert "<!-- errors: sqlstates -->" in (ROOT / "site" / page).read_text(), page
    spec = importlib.util.spec_from_file_location("corestore_site_hooks_pg", ROOT / "site" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = hooks.render_markers((ROOT / "site" / "postgresql.md").read_text())
    documented = dict(re.findall(r"^\| `([0-9A-Z]{5})` \| `([A-Z_]+)` \|", text, re.M))
    assert documented == {code: row.name for code, row in SQLSTATE_ROWS.items()}
    classes = dict(re.findall(r"^\| `([0-9A-Z]{2})xxx` \| `([A-Z_]+)` \|", text, re.M))
    assert classes == {code: row.name for code, row in CLASS_ROWS.items()}
    for code, row in SQLSTATE_ROWS.items():
        line = next(line for line in text.splitlines() if line.startswith(f"| `{code}` |"))
        assert f"| {row.kind.name} |" in line, line
