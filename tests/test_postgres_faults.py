"""Real faults on a real PostgreSQL server: the SQLSTATE table and the commit rule.

Drills (issue 22, "Done when"): two SERIALIZABLE sessions that conflict, a real deadlock between
two threads, ``pg_terminate_backend()`` of the store's connection mid-transaction and during
COMMIT, ``statement_timeout``, a read-only session. Each works in its own schema (``pg_url``).
Threads meet at barriers with a timeout (never a sleep); every wait is bounded.
"""
from __future__ import annotations

import threading
from typing import Any

import pytest

import corestore
from corestore import BusyError, ConstraintError, FatalError, StoreError, TransientError

BARRIER_S = 20.0


def _serializable(pg_url: str, **settings: Any) -> corestore.Store:
    return corestore.open(corestore.Profile(name="pg-serializable", url=pg_url, plugins=("circuit_breaker",),
                                            server_settings={"default_transaction_isolation": "serializable",
                                                             **settings}))


def test_serializable_conflict_is_retried_and_both_units_commit_once(pg_url: str) -> None:
    store = _serializable(pg_url)
    db = store.database
    db.execute_sql("CREATE TABLE ledger (unit text PRIMARY KEY, seen bigint)")
    barrier = threading.Barrier(2, timeout=BARRIER_S)
    attempts = {"a": 0, "b": 0}
    errors: list[BaseException] = []

    def unit(name: str) -> None:
        attempts[name] += 1
        seen = db.execute_sql("SELECT count(*) FROM ledger").fetchone()[0]
        if attempts[name] == 1:
            barrier.wait()  # both have read before either writes: a read/write dependency cycle
        db.execute_sql("INSERT INTO ledger VALUES (%s, %s)", (name, seen))

    def worker(name: str) -> None:
        try:
            store.run(lambda: unit(name))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    rows = db.execute_sql("SELECT unit, seen FROM ledger ORDER BY unit").fetchall()
    assert [r[0] for r in rows] == ["a", "b"]  # each unit exactly once
    assert sorted(r[1] for r in rows) == [0, 1]  # the retried one saw the other's row
    # one unit won at once; the other was retried until it no longer overlapped (its retry may
    # start before the winner's COMMIT when the failure came at a statement, and fail again)
    assert min(attempts.values()) == 1 and max(attempts.values()) >= 2
    stats = store.stats()
    assert stats["retries"] == sum(attempts.values()) - 2 == stats["busy_waits"] and stats["faults"] == 0
    store.close()


def test_serialization_failure_is_busy_40001_and_not_committed(pg_url: str) -> None:
    store = _serializable(pg_url)
    db = store.database
    db.execute_sql("CREATE TABLE ledger (unit text PRIMARY KEY, seen bigint)")
    barrier = threading.Barrier(2, timeout=BARRIER_S)
    outcome: dict[str, Any] = {}

    def worker(name: str) -> None:
        try:
            with store.transaction():
                seen = db.execute_sql("SELECT count(*) FROM ledger").fetchone()[0]
                barrier.wait()
                try:
                    db.execute_sql("INSERT INTO ledger VALUES (%s, %s)", (name, seen))
                finally:
                    barrier.wait()  # both wrote before either commits: the second COMMIT fails (or,
                    # if the server saw the conflict already, the second INSERT did)
            outcome[name] = "committed"
        except StoreError as err:
            outcome[name] = err

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failures = [v for v in outcome.values() if isinstance(v, StoreError)]
    assert len(failures) == 1 and list(outcome.values()).count("committed") == 1, outcome
    err = failures[0]
    assert isinstance(err, BusyError)
    assert err.classification is not None and err.classification.sqlstate == "40001"
    assert err.committed is False  # a server error in reply to COMMIT: rolled back
    assert db.execute_sql("SELECT count(*) FROM ledger").fetchone()[0] == 1
    store.close()


def test_deadlock_between_two_threads_is_40p01_and_retried(pg_url: str) -> None:
    store = corestore.open(pg_url, settings={"circuit_breaker": {}})
    db = store.database
    db.execute_sql("CREATE TABLE acct (id int PRIMARY KEY, n int)")
    db.execute_sql("INSERT INTO acct VALUES (1, 0), (2, 0)")
    barrier = threading.Barrier(2, timeout=BARRIER_S)
    attempts = {1: 0, 2: 0}
    seen_states: list[str | None] = []
    errors: list[BaseException] = []

    def unit(first: int, second: int) -> None:
        attempts[first] += 1
        db.execute_sql("UPDATE acct SET n = n + 1 WHERE id = %s", (first,))
        if attempts[first] == 1:
            barrier.wait()  # each holds its first row: the second update of each closes the cycle
        try:
            db.execute_sql("UPDATE acct SET n = n + 1 WHERE id = %s", (second,))
        except StoreError as err:
            seen_states.append(err.classification.sqlstate if err.classification else None)
            raise

    def worker(first: int, second: int) -> None:
        try:
            store.run(lambda: unit(first, second))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=p) for p in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert seen_states == ["40P01"]  # the server broke the cycle once; run() retried the victim
    assert db.execute_sql("SELECT n FROM acct ORDER BY id").fetchall() == [(2,), (2,)]  # both units, once each
    assert store.stats()["retries"] == 1
    store.close()


def _terminate(pid: int) -> None:
    from pgserver import admin_connect

    with admin_connect() as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        # bounded: wait until the session is gone
        admin.execute("SELECT pg_sleep(0.01) FROM generate_series(1, 500) "
                      "WHERE EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (pid,))


def test_terminated_backend_mid_transaction_is_classified_reconnected_and_retried(pg_url: str) -> None:
    store = corestore.open(pg_url)
    db = store.database
    db.execute_sql("CREATE TABLE t (id int PRIMARY KEY)")
    attempts = 0

    def unit() -> None:
        nonlocal attempts
        attempts += 1
        db.execute_sql("INSERT INTO t VALUES (%s)", (1,))
        if attempts == 1:
            _terminate(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
        db.execute_sql("SELECT 1")

    store.run(unit)
    assert attempts == 2
    assert db.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 1  # exactly once
    stats = store.stats()
    assert stats["reopens"] >= 1 and stats["faults_by_kind"].get("TRANSIENT_IO") == 1
    store.close()


def test_terminated_backend_is_counted_by_the_breaker(pg_url: str) -> None:
    store = corestore.open(pg_url)
    db = store.database
    breaker = store.plugin("circuit_breaker")
    before = breaker.stats()
    with pytest.raises(TransientError) as info:
        with store.transaction():
            _terminate(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
            db.execute_sql("SELECT 1")
    c = info.value.classification
    assert c is not None and c.kind is corestore.ErrorKind.TRANSIENT_IO and c.reopen and c.trips_breaker
    assert c.sqlstate in ("57P01", None)  # the server's FATAL, or the lost connection itself
    assert info.value.committed is False
    after = breaker.stats()
    assert after["lanes"]["write"]["failures"] == before["lanes"]["write"]["failures"] + 1  # counted once
    assert db.execute_sql("SELECT 1").fetchone()[0] == 1  # reconnected
    store.close()


def test_connection_lost_during_commit_is_unknown_and_never_retried(pg_url: str) -> None:
    store = corestore.open(pg_url)
    db = store.database
    # a deferred constraint trigger runs inside COMMIT; this one kills its own session there
    db.execute_sql("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute_sql("CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NULL; END $$")
    db.execute_sql("CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
                   "FOR EACH ROW EXECUTE FUNCTION die()")
    attempts = 0

    def unit() -> None:
        nonlocal attempts
        attempts += 1
        db.execute_sql("INSERT INTO t VALUES (1)")

    with pytest.raises(StoreError) as info:
        store.run(unit)
    assert attempts == 1  # COMMIT was issued and its outcome is unknown: not retried
    assert info.value.committed is None
    assert store.stats()["uncertain_commits"] == 1
    with pytest.raises(StoreError) as again:  # idempotent=True allows the retry (it fails the same way)
        store.run(unit, idempotent=True)
    assert attempts > 2 and again.value.committed is None
    store.close()


def test_server_error_in_reply_to_commit_is_not_committed(pg_url: str) -> None:
    store = corestore.open(pg_url)
    db = store.database
    db.execute_sql("CREATE TABLE u (k int, CONSTRAINT uk UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)")
    db.execute_sql("INSERT INTO u VALUES (1)")
    with pytest.raises(ConstraintError) as info:
        with store.transaction():
            db.execute_sql("INSERT INTO u VALUES (1)")  # checked only at COMMIT
    assert info.value.committed is False
    assert info.value.classification is not None and info.value.classification.sqlstate == "23505"
    assert store.stats()["uncertain_commits"] == 0
    assert db.execute_sql("SELECT count(*) FROM u").fetchone()[0] == 1
    store.close()


def test_statement_timeout_is_query_canceled(pg_url: str) -> None:
    store = corestore.open(pg_url, settings={"circuit_breaker": {}})
    store.close()
    store = corestore.open(corestore.Profile(name="pg-timeout", url=pg_url, plugins=("circuit_breaker",),
                                             server_settings={"statement_timeout": "50ms"}))
    attempts = 0

    def slow() -> Any:
        nonlocal attempts
        attempts += 1
        return store.database.execute_sql("SELECT pg_sleep(2)").fetchone()

    with pytest.raises(StoreError) as info:
        store.run(slow)
    err = info.value
    c = err.classification
    assert c is not None and c.name == "QUERY_CANCELED" and c.sqlstate == "57014"
    assert c.kind is corestore.ErrorKind.UNKNOWN and not c.is_fault and not c.retryable and not c.reopen
    assert err.committed is False and attempts == 1  # its own outcome: never retried
    stats = store.stats()
    assert stats["faults"] == 0 and stats["reopens"] == 0
    assert store.plugin("circuit_breaker").stats()["state"] in ("closed", "CLOSED")
    assert store.database.execute_sql("SELECT 1").fetchone()[0] == 1  # the session goes on
    store.close()


def test_read_only_session_is_readonly(pg_url: str) -> None:
    store = corestore.open(corestore.Profile(name="pg-standby-like", url=pg_url, plugins=(),
                                             server_settings={"default_transaction_read_only": True}))
    with pytest.raises(FatalError) as info:
        with store.transaction():
            store.database.execute_sql("CREATE TABLE t (x int)")
    c = info.value.classification
    assert c is not None and c.kind is corestore.ErrorKind.READONLY and c.sqlstate == "25006"
    assert c.reopen and info.value.committed is False
    assert store.stats()["reopens"] == 1  # a standby after failover: the next connection may reach the primary
    store.close()


def test_idle_connection_killed_between_units_is_reopened(pg_url: str) -> None:
    """A server restart or failover between two units: the thread's idle connection is dead.
    The next BEGIN fails before anything was sent (committed=False): run() reconnects and goes on;
    a plain transaction() reports TRANSIENT_IO and the one after it works."""
    store = corestore.open(pg_url)
    db = store.database
    db.execute_sql("CREATE TABLE t (x int)")
    _terminate(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
    store.run(lambda: db.execute_sql("INSERT INTO t VALUES (1)"))
    assert store.stats()["retries"] == 1
    _terminate(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
    with pytest.raises(TransientError) as info:
        with store.transaction():
            db.execute_sql("INSERT INTO t VALUES (2)")
    assert info.value.committed is False
    with store.transaction():
        db.execute_sql("INSERT INTO t VALUES (3)")
    _terminate(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
    with pytest.raises(TransientError):  # an autocommit statement on the dead connection: not retried by itself
        db.execute_sql("SELECT 1")
    assert db.execute_sql("SELECT array_agg(x ORDER BY x) FROM t").fetchone()[0] == [1, 3]
    store.close()
