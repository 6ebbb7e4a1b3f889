"""The policy plugins on PostgreSQL, against the real test server (``pg_url``: a private schema).

What differs from SQLite, each tested here: the circuit breaker's key (server + database, no
credentials); accounting's SQL (batch id upsert, COPY, information_schema, dead letters in the
state directory); health's server probe; quarantine's marker table. Drills that stop or corrupt
a server run on a throwaway cluster instead (tests/test_postgres_drills.py).
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import peewee
import pytest
from pgserver import admin_connect, with_options, with_password

import corestore
from corestore_contrib.waiting import wait_until
from corestore_plugins._breaker_registry import breaker_for
from corestore_plugins._server import server_key, state_path, url_server_key
from corestore_plugins.accounting.dialect import POSTGRESQL

pytestmark = pytest.mark.usefixtures("_state_dir")


@pytest.fixture
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTORE_STATE_DIR", str(tmp_path / "state"))


def _schema(url: str) -> str:
    return url.split("search_path%3D", 1)[1].split("&", 1)[0]


def _profile(url: str, *plugins: str, **settings: Any) -> corestore.Profile:
    return corestore.Profile(name="pgpolicies", path=url, url=url, plugins=plugins, settings=settings)


# -- circuit breaker ------------------------------------------------------------------------------
def test_breaker_is_keyed_by_server_and_database_without_credentials(pg_url: str) -> None:
    """Two stores on one database, one with a password and other options in its URL, share one
    breaker whose key names host:port/dbname only; breaker_for finds it from either URL."""
    with admin_connect() as conn:
        conn.execute("DROP ROLE IF EXISTS cs_breaker_user")
        conn.execute("CREATE ROLE cs_breaker_user LOGIN PASSWORD 's3cret-pw'")
    try:
        other = with_password(with_options(pg_url, application_name="second"), "cs_breaker_user", "s3cret-pw")
        a = corestore.open(_profile(pg_url, "circuit_breaker"))
        b = corestore.open(_profile(other, "circuit_breaker"))
        try:
            with a.read():
                pass
            with b.read():
                pass
            ba, bb = a.plugin("circuit_breaker").breaker, b.plugin("circuit_breaker").breaker
            assert ba is bb
            key = server_key(a)
            assert key == server_key(b) == "127.0.0.1:5432/test"
            assert ba.path == key and "s3cret" not in json.dumps(a.health().to_dict(), default=str)
            assert breaker_for(pg_url) is ba and breaker_for(other) is ba and breaker_for(key) is ba
            ba.isolate("test")  # one breaker: both stores refused
            for store in (a, b):
                with pytest.raises(corestore.CircuitOpenError, match="127.0.0.1:5432/test"):
                    with store.read():
                        pass
        finally:
            ba.reset()
            a.close()
            b.close()
    finally:
        with admin_connect() as conn:
            conn.execute("DROP ROLE IF EXISTS cs_breaker_user")


def test_hook_on_fatal_breaker_ignores_a_statement_timeout(pg_url: str) -> None:
    """PostgreSQL variant: a statement cancelled by statement_timeout (57014) is its own outcome,
    not a storage fault: with failure_threshold 1 the breaker stays closed; a lost connection
    (pg_terminate_backend, 57P01) does count."""
    store = corestore.open(_profile(pg_url, "circuit_breaker", circuit_breaker={"failure_threshold": 2}))
    breaker = store.plugin("circuit_breaker").breaker
    breaker.reset()
    try:
        for _ in range(3):
            with pytest.raises(corestore.StoreError) as info:
                with store.transaction():
                    store.database.execute_sql("SET LOCAL statement_timeout = 10")
                    store.database.execute_sql("SELECT pg_sleep(2)")
            assert info.value.classification is not None and info.value.classification.name == "QUERY_CANCELED"
        assert breaker.state.name == "CLOSED"
        assert breaker.snapshot()["lanes"]["write"]["failures"] == 0
        with pytest.raises(corestore.TransientError):
            with store.transaction():
                pid = store.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
                with admin_connect() as conn:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                store.database.execute_sql("SELECT 1")
    finally:
        failures = breaker.snapshot()["lanes"]["write"]["failures"]
        breaker.reset()
        store.close()
    assert failures == 1


def test_url_server_key_defaults_and_forms() -> None:
    assert url_server_key("postgresql://u:pw@db.example:6543/app?sslmode=require") == "db.example:6543/app"
    assert url_server_key("postgres://u@[::1]/app") == "[::1]:5432/app"
    assert url_server_key("/tmp/app.db") is None


# -- accounting -----------------------------------------------------------------------------------
class Usage(peewee.Model):
    kind = peewee.TextField()
    tokens = peewee.IntegerField()
    cost = peewee.FloatField(default=0.0)
    ok = peewee.BooleanField(default=True)
    at = peewee.DateTimeField(null=True)


def _count(url: str, table: str) -> int:
    with admin_connect(url) as conn:
        return int(conn.execute(f'SELECT count(*) FROM "{_schema(url)}"."{table}"').fetchone()[0])


def test_accounting_writes_model_and_named_rows_with_copy(pg_url: str) -> None:
    """Rows for a model (field defaults, db_value: datetime, bool, float) and for a named table,
    written in batches; every accepted row once; the counters' identity holds; batch ids are
    recorded in _corestore_batches."""
    store = corestore.open(_profile(pg_url, "circuit_breaker", "accounting",
                                    accounting={"batch_size": 200, "ts_column": "ts"}))
    try:
        store.bind([Usage])
        with store.transaction():
            store.database.create_tables([Usage])
            store.database.execute_sql("CREATE TABLE events (id bigserial PRIMARY KEY, name text NOT NULL, ts double precision)")
        acc = store.plugin("accounting")
        when = datetime.datetime(2026, 1, 2, 3, 4, 5)
        for i in range(1000):
            assert acc.submit(Usage, {"kind": f"k{i % 3}", "tokens": i, "at": when})
            assert acc.submit("events", {"name": f"e{i}"})
        assert acc.flush(30)
        st = acc.stats()
        assert st["accepted"] == 2000 == st["written"] + st["dead_lettered"] + st["dropped"] + st["pending"]
        assert st["written"] == 2000 and st["batches"] >= 10
        with store.read():
            assert Usage.select().count() == 1000
            assert sum(u.tokens for u in Usage.select()) == sum(range(1000))
            row = Usage.get(Usage.tokens == 7)
            assert row.ok is True and row.cost == 0.0 and row.at == when
            cur = store.database.execute_sql("SELECT count(DISTINCT name), count(*), count(ts) FROM events")
            assert cur.fetchone() == (1000, 1000, 1000)  # ts_column filled with the submit time
            batches = store.database.execute_sql("SELECT count(*) FROM _corestore_batches").fetchone()[0]
            assert batches == st["batches"]
    finally:
        store.close()


def test_accounting_batch_id_upsert_keeps_the_transaction_usable(pg_url: str) -> None:
    """PostgreSQL-specific: recording a batch id twice answers False without an error, so the
    transaction is not aborted (a plain INSERT's unique violation would abort it: 25P02)."""
    with admin_connect(pg_url) as conn:
        for sql in POSTGRESQL.create:
            conn.execute(sql)
        with conn.transaction():
            assert POSTGRESQL.record_batch(conn, "0000-b-test-1", 1.0) is True
        with conn.transaction():
            assert POSTGRESQL.record_batch(conn, "0000-b-test-1", 2.0) is False
            assert conn.execute("SELECT 1").fetchone() == (1,)  # still usable


def test_accounting_isolates_a_refused_row_and_dead_letters_it_in_the_state_dir(pg_url: str, tmp_path: Path) -> None:
    """COPY of a batch with one NOT NULL violation fails as a whole (23502, CONSTRAINT); the
    batch is retried row by row with savepoints: the bad row is dead-lettered to the state
    directory (no database file to sit beside), the others written."""
    store = corestore.open(_profile(pg_url, "accounting", accounting={"batch_size": 100, "max_latency_ms": 1000}))
    try:
        with store.transaction():
            store.database.execute_sql("CREATE TABLE notes (n integer NOT NULL, body text)")
        acc = store.plugin("accounting")
        for i in range(50):
            acc.submit("notes", {"n": None if i == 17 else i, "body": f"b{i}"})
        assert acc.flush(30) is True  # the dead letter reached its file: durable
        st = acc.stats()
        assert (st["written"], st["dead_lettered"], st["isolated_batches"]) == (49, 1, 1)
        assert _count(pg_url, "notes") == 49
        path = state_path(store, ".corestore-deadletter.jsonl")
        assert path.startswith(str(tmp_path / "state")) and "127.0.0.1_5432_test" in os.path.basename(path)
        letters = [json.loads(line) for line in Path(path).read_text().splitlines()]
        assert len(letters) == 1 and letters[0]["row"] == {"n": None, "body": "b17"}
        assert letters[0]["kind"] == "CONSTRAINT"
    finally:
        store.close()


def test_accounting_unknown_table_is_judged_from_information_schema(pg_url: str) -> None:
    store = corestore.open(_profile(pg_url, "accounting", accounting={"on_unknown_table": "raise"}))
    try:
        with store.transaction():
            store.database.execute_sql("CREATE TABLE present (x integer)")
        acc = store.plugin("accounting")
        assert acc.submit("present", {"x": 1})
        assert acc.flush(10)
        with pytest.raises(corestore.ConfigError, match="absent"):
            wait_until(lambda: not acc.submit("absent", {"x": 1}), "the writer to learn the schema's tables")
    finally:
        store.close()


# -- health ---------------------------------------------------------------------------------------
def test_health_reports_server_version_role_and_connections(pg_url: str) -> None:
    store = corestore.open(_profile(pg_url, "circuit_breaker", "health", health={"probe_interval_s": 0.05}))
    try:
        with store.read():
            pass

        def server() -> dict[str, Any] | None:
            details = store.health().components["health"].details["server"]
            return details if details.get("probes") else None

        details = wait_until(server, "the health plugin's server probe")
        with admin_connect() as conn:
            version, num = conn.execute("SELECT current_setting('server_version'), "
                                        "current_setting('server_version_num')::int").fetchone()
        assert details["server_version"] == version and details["server_version_num"] == num
        assert details["role"] == "primary" and details["replay_lag_s"] is None
        assert 1 <= details["connections_used"] <= details["max_connections"]
        assert details["connections_open"] >= 1 and details["engine"] == "postgresql"
        report = store.health()
        assert report.components["health"].status is corestore.HealthStatus.UP
        assert report.components["health"].summary.startswith(f"PostgreSQL {version} primary")
        probes = details["probes"]
        wait_until(lambda: (server() or {}).get("probes", 0) > probes, "a second server probe after the interval")
    finally:
        store.close()


def test_health_server_probe_failure_is_degraded_not_raised(pg_url: str) -> None:
    """A server probe that cannot run (here: the operator isolated the database's breaker, so
    the probe is refused before touching the server) makes the health component DEGRADED with
    the reason; health() itself never raises."""
    store = corestore.open(_profile(pg_url, "circuit_breaker", "health", health={"probe_interval_s": 0.05}))
    try:
        store.plugin("circuit_breaker").isolate("test: no server probe")

        def failed() -> dict[str, Any] | None:
            details = store.health(probe=False).components["health"].details["server"]
            return details if details.get("error") else None

        details = wait_until(failed, "the server probe to report the open breaker")
        assert details["error"] == "not probed: circuit breaker open"
        assert store.health(probe=False).components["health"].status is corestore.HealthStatus.DEGRADED
    finally:
        store.plugin("circuit_breaker").reset()
        store.close()


@pytest.mark.parametrize("mode", ["after", "before"])
def test_accounting_exactly_once_across_a_commit_whose_answer_is_lost(pg_url: str, mode: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A real unknown COMMIT outcome, made on the wire (tests/pgproxy.py): the connection is cut
    right after the server answered COMMIT (committed) or right before COMMIT reached it (rolled
    back). Either way the writer sees committed=None, looks its batch id up in
    _corestore_batches, and every row is written exactly once."""
    from urllib.parse import urlsplit, urlunsplit

    from pgproxy import PgProxy

    parts = urlsplit(pg_url)
    proxy = PgProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    store = corestore.open(_profile(url, "accounting", accounting={
        "batch_size": 1000, "max_latency_ms": 1000, "backoff_initial_s": 0.01, "backoff_max_s": 0.1}))
    try:
        with store.transaction():
            store.database.execute_sql("CREATE TABLE ledger (seq integer NOT NULL, note text)")
        acc = store.plugin("accounting")
        for i in range(50):
            acc.submit("ledger", {"seq": i, "note": f"row {i}"})
        assert acc.flush(30) is True
        proxy.cut(mode, within=b"COPY ")  # a batch's COMMIT, not a read's
        for i in range(50, 150):
            acc.submit("ledger", {"seq": i, "note": f"row {i}"})
        assert acc.flush(30) is True
        assert proxy.cuts == [mode]
        st = acc.stats()
        assert st["uncertain_commits"] == 1 and st["written"] == st["accepted"] == 150
        with admin_connect(pg_url) as conn:
            total, distinct = conn.execute(f'SELECT count(*), count(DISTINCT seq) FROM "{_schema(pg_url)}".ledger').fetchone()
        assert total == distinct == 150
        found = "did commit; not written twice" in caplog.text  # the lookup found the id: not retried
        assert found is (mode == "after"), caplog.text
    finally:
        store.close()
        proxy.close()


# -- quarantine -----------------------------------------------------------------------------------
def test_hook_on_store_open_and_on_close_quarantine_marker_connection(pg_url: str) -> None:
    """PostgreSQL variant of quarantine's open/close hooks: at open it reads the marker table on
    a connection of its own (application_name corestore-quarantine; no table yet = no marker);
    on close that connection is gone from the server."""
    store = corestore.open(_profile(pg_url, "quarantine"))
    try:
        quarantine = store.plugin("quarantine")
        assert not quarantine.quarantined
        pid = quarantine._server._conn.info.backend_pid
        with admin_connect() as conn:
            name = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert name == ("corestore-quarantine",)
    finally:
        store.close()

    def gone() -> bool:
        with admin_connect() as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == (0,)

    wait_until(gone, "the quarantine marker connection to end with the store")


def test_accounting_into_a_view_falls_back_from_copy_to_insert(pg_url: str) -> None:
    """COPY cannot write to a view (42809): the first batch is isolated row by row (nothing
    lost), later batches use INSERT and are not isolated again."""
    store = corestore.open(_profile(pg_url, "accounting", accounting={"batch_size": 100, "max_latency_ms": 1000}))
    try:
        with store.transaction():
            store.database.execute_sql("CREATE TABLE base (n integer NOT NULL)")
            store.database.execute_sql("CREATE VIEW recent AS SELECT n FROM base")
        acc = store.plugin("accounting")
        for round_ in range(3):
            for i in range(20):
                acc.submit("recent", {"n": round_ * 20 + i})
            assert acc.flush(30) is True
        st = acc.stats()
        assert (st["written"], st["dead_lettered"], st["isolated_batches"]) == (60, 0, 1)
        assert _count(pg_url, "base") == 60
    finally:
        store.close()
