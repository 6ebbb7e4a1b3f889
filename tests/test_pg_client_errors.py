"""A mistake the driver catches on the client side (no SQLSTATE: the statement never reached the
server) is the caller's error, not a lost connection (review of issue 22).

Before the fix every psycopg error without a SQLSTATE was ``CONNECTION_LOST`` (TRANSIENT_IO,
reconnect): a stray ``%`` placeholder or a wrong parameter count reopened the connection, was
counted by the circuit breaker as a server failure and was retried by ``run()``.
"""
from __future__ import annotations

import pytest

import corestore
from corestore import ErrorKind
from corestore.classify_pg import CLIENT_ERROR, CONNECTION_LOST, classify_pg_exception

#: statements psycopg refuses before sending them (ProgrammingError, sqlstate None)
CLIENT_MISTAKES = [
    ("SELECT 10 % 3 + %s", (1,)),  # a stray '%' (an operator that should be '%%')
    ("SELECT %s", (1, 2)),  # more parameters than placeholders
    ("SELECT %s, %s", (1,)),  # fewer
]


@pytest.mark.parametrize(("sql", "params"), CLIENT_MISTAKES)
def test_client_side_programming_error_is_a_query_error(pg_url: str, sql: str, params: tuple[int, ...]) -> None:
    store = corestore.open(pg_url)  # the default PostgreSQL profile: circuit_breaker included
    try:
        breaker = store.plugin("circuit_breaker")
        before = breaker.stats()
        calls = 0

        def unit() -> None:
            nonlocal calls
            calls += 1
            store.database.execute_sql(sql, params)

        with pytest.raises(corestore.QueryError) as info:
            store.run(unit)
        c = info.value.classification
        assert c is not None and c.kind is ErrorKind.PROGRAMMING and c.name == "CLIENT_ERROR", c
        assert c.sqlstate is None and not c.retryable and not c.trips_breaker and not c.reopen and not c.is_fault
        assert info.value.committed is False
        assert calls == 1  # not retried
        stats = store.stats()
        assert stats["faults"] == 0 and stats["reopens"] == 0, stats
        after = breaker.stats()
        assert after["state"] == "closed" and after["trips"] == before["trips"]
        assert store.database.execute_sql("SELECT 1").fetchone()[0] == 1  # the same connection goes on
        assert store.stats()["reopens"] == 0
    finally:
        store.close()


def test_a_really_lost_connection_is_still_connection_lost(pg_url: str) -> None:
    """The other side of the rule, against the real server: the driver's error on a connection
    that is closed (no SQLSTATE, ``OperationalError``) stays CONNECTION_LOST."""
    import psycopg
    from pgserver import admin_connect

    conn = admin_connect(pg_url)
    with admin_connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    errors = []
    for _ in range(2):  # the server's 57P01 first (or at once "server closed"), then "the connection is closed"
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT 1")
        errors.append(info.value)
    assert conn.closed or conn.broken
    last = classify_pg_exception(errors[-1])
    assert errors[-1].sqlstate is None and last.name == CONNECTION_LOST.name and last.kind is ErrorKind.TRANSIENT_IO
    assert last.reopen and last.trips_breaker
    conn.close()


def test_the_docs_table_has_the_rows_without_sqlstate() -> None:
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("corestore_site_hooks_pg2", ROOT / "site" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = hooks.render_markers((ROOT / "site" / "postgresql.md").read_text())
    lost = next(line for line in text.splitlines() if line.startswith("| none: `OperationalError`"))
    client = next(line for line in text.splitlines() if line.startswith("| none: `ProgrammingError`"))
    assert f"`{CONNECTION_LOST.name}` | TRANSIENT_IO |" in lost
    assert f"`{CLIENT_ERROR.name}` | PROGRAMMING | `QueryError` | no | no | no |" in client
