"""Drills on a throwaway PostgreSQL cluster (tests/pgcluster.py): the server is stopped,
crashed, restarted, its files damaged — never the shared server on 5432.

* accounting: a cluster crashed and restarted while the writer has a backlog and rows keep
  coming → every accepted row is written exactly once after it comes back;
* circuit_breaker: repeated connection failures (cluster stopped) open it, it refuses without
  touching the server, and it admits and closes again after the cluster is back;
* quarantine: a real ``XX001`` (a heap page overwritten on disk) quarantines the database; the
  marker row in ``_corestore_quarantine`` keeps a reopened store quarantined until removed.

Each test creates its own cluster (about a second) and removes it at the end; they skip with a
reason when initdb is missing (fail under ``CORESTORE_REQUIRE_POSTGRES=1``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from pgcluster import PgCluster, pg_cluster

import corestore
from corestore.quarantine_table import QUARANTINE_TABLE, clear_table_marker, read_table_marker
from corestore_contrib.waiting import wait_until

from helpers import child_env

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PgCluster]:
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'corestore[postgresql]')")
    monkeypatch.setenv("CORESTORE_STATE_DIR", str(tmp_path / "state"))
    with pg_cluster() as c:
        yield c


def _admin(c: PgCluster) -> Any:
    import psycopg

    return psycopg.connect(c.url, autocommit=True, connect_timeout=5)


def _profile(c: PgCluster, *plugins: str, **settings: Any) -> corestore.Profile:
    return corestore.Profile(name="drill", path=c.url, url=c.url, plugins=plugins, settings=settings)


def test_accounting_backlog_survives_a_cluster_restart_exactly_once(cluster: PgCluster) -> None:
    with _admin(cluster) as conn:
        conn.execute("CREATE TABLE usage (seq bigint NOT NULL, payload text NOT NULL)")
    store = corestore.open(_profile(
        cluster, "circuit_breaker", "accounting",
        circuit_breaker={"cooldown_s": 0.2, "max_cooldown_s": 0.5},
        accounting={"batch_size": 200, "queue_size": 200_000, "backoff_initial_s": 0.01, "backoff_max_s": 0.2,
                    "max_latency_ms": 5, "drain_timeout_s": 30},
    ))
    acc = store.plugin("accounting")
    stop = threading.Event()
    submitted: list[int] = []
    refused: list[int] = []

    def produce() -> None:
        seq = 0
        while not stop.is_set():
            for _ in range(50):
                (submitted if acc.submit("usage", {"seq": seq, "payload": f"row {seq}"}) else refused).append(seq)
                seq += 1
            time.sleep(0.002)  # pacing: rows keep arriving across the restart

    producer = threading.Thread(target=produce, name="drill-producer")
    producer.start()
    try:
        wait_until(lambda: acc.stats()["written"] >= 2000, "2000 rows written before the crash", timeout_s=30)
        cluster.stop("immediate")  # a crash: a batch in flight may have sent COMMIT and never heard back
        wait_until(lambda: acc.stats()["faulted_batches"] >= 1 and acc.stats()["pending"] > 0,
                   "the writer to fault with a backlog while the cluster is down", timeout_s=30)
        backlog = acc.stats()["pending"]
        cluster.start()
        written_at_restart = acc.stats()["written"]
        wait_until(lambda: acc.stats()["written"] > written_at_restart + backlog,
                   "the backlog to be written after the cluster came back", timeout_s=60)
    finally:
        stop.set()
        producer.join(timeout=10)
    try:
        assert acc.flush(60) is True
        st = acc.stats()
        assert refused == [] and st["rejected"] == 0
        assert st["accepted"] == len(submitted) == st["written"] + st["dead_lettered"] + st["dropped"] + st["pending"]
        assert (st["dead_lettered"], st["dropped"], st["pending"]) == (0, 0, 0)
        assert st["faulted_batches"] >= 1 and backlog > 0
        with _admin(cluster) as conn:
            total, distinct = conn.execute("SELECT count(*), count(DISTINCT seq) FROM usage").fetchone()
            seqs = {r[0] for r in conn.execute("SELECT seq FROM usage")}
        assert total == distinct == len(submitted), (total, distinct, len(submitted), st)  # none twice, none lost
        assert seqs == set(submitted)
    finally:
        store.close()


def test_breaker_opens_while_the_cluster_is_down_and_admits_after_it_returns(cluster: PgCluster) -> None:
    store = corestore.open(_profile(cluster, "circuit_breaker",
                                    circuit_breaker={"failure_threshold": 3, "cooldown_s": 0.3, "backoff_factor": 1}))
    try:
        with store.transaction():
            store.database.execute_sql("CREATE TABLE t (a int)")
        breaker = store.plugin("circuit_breaker").breaker
        cluster.stop("fast")
        kinds = []
        for _ in range(3):
            with pytest.raises(corestore.TransientError) as info:
                with store.transaction():
                    store.database.execute_sql("INSERT INTO t VALUES (1)")
            assert info.value.classification is not None and info.value.classification.trips_breaker
            kinds.append(info.value.classification.name)
        assert breaker.state is corestore_breaker_state("OPEN"), kinds
        opened = store.stats()["connections_opened"]
        with pytest.raises(corestore.CircuitOpenError, match="without touching the server"):
            with store.transaction():
                store.database.execute_sql("INSERT INTO t VALUES (1)")
        assert store.stats()["connections_opened"] == opened  # refused before any connection attempt
        cluster.start()

        def admitted() -> bool:
            try:
                with store.transaction():
                    store.database.execute_sql("INSERT INTO t VALUES (2)")
            except corestore.CircuitOpenError:
                return False
            return True

        wait_until(admitted, "the breaker to admit a probe after the cooldown", timeout_s=10)
        assert breaker.state is corestore_breaker_state("CLOSED")
        path = [(t.previous.name, t.current.name) for t in breaker.transitions]
        assert path[-3:] == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")], path
        with store.read():
            assert store.database.execute_sql("SELECT count(*) FROM t WHERE a = 2").fetchone() == (1,)
    finally:
        store.close()


def corestore_breaker_state(name: str) -> Any:
    from corestore_plugins.circuit_breaker import BreakerState

    return BreakerState[name]


def _corrupt_heap(cluster: PgCluster) -> None:
    """Fill a table, then overwrite its first page's header on disk (cluster stopped): the next
    read of that page fails the server's page check with XX001 'invalid page in block 0'."""
    with _admin(cluster) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO ledger SELECT g, repeat('x', 100) FROM generate_series(1, 200) g")
        conn.execute("CHECKPOINT")
        relpath = conn.execute("SELECT pg_relation_filepath('ledger')").fetchone()[0]
    cluster.stop("fast")
    with open(os.path.join(cluster.datadir, relpath), "r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 8)  # pd_lsn .. pd_upper: no longer a valid page header
        f.flush()
        os.fsync(f.fileno())
    cluster.start()


def test_quarantine_on_real_data_corruption_and_its_marker_table(cluster: PgCluster) -> None:
    _corrupt_heap(cluster)
    profile = _profile(cluster, "circuit_breaker", "quarantine", quarantine={"recheck_s": 0})
    store = corestore.open(profile)
    try:
        with pytest.raises(corestore.CorruptionError) as info:
            with store.read():
                store.database.execute_sql("SELECT count(*), max(length(body)) FROM ledger").fetchone()
        assert info.value.classification is not None and info.value.classification.name == "DATA_CORRUPTED"
        quarantine = store.plugin("quarantine")
        assert quarantine.quarantined
        record = quarantine.record
        assert record is not None and record["evidence"]["sqlstate"] == "XX001"
        assert record["marker"] == f"table {QUARANTINE_TABLE} in 127.0.0.1:{cluster.port}/postgres"
        with pytest.raises(corestore.CorruptionError, match="quarantined since"):
            with store.transaction():
                store.database.execute_sql("CREATE TABLE other (a int)")
        assert store.health().components["quarantine"].status is corestore.HealthStatus.DOWN
        with _admin(cluster) as conn:
            marker = read_table_marker(conn)
        assert marker is not None and marker["reason"].startswith("CORRUPT: DATA_CORRUPTED")
    finally:
        store.close()
    store = corestore.open(profile)  # a restarted service: quarantined from the marker, at open
    try:
        assert store.plugin("quarantine").quarantined
        with pytest.raises(corestore.CorruptionError):
            with store.transaction():
                store.database.execute_sql("CREATE TABLE other (a int)")
        # the doctor reports the marker (DOWN), re-reads the damaged table (the relation's file is
        # named in the XX001 message), refuses to clear while the damage is there, and --force clears
        doctor = [sys.executable, "-m", "corestore", "doctor", "--clear-quarantine", cluster.url]
        refused = subprocess.run(doctor, capture_output=True, text=True, timeout=120, env=child_env())
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "the damage is still there" in refused.stdout and "XX001" in refused.stdout, refused.stdout
        assert "the marker stays" in refused.stdout
        with _admin(cluster) as conn:
            assert read_table_marker(conn) is not None
        forced = subprocess.run([*doctor, "--force"], capture_output=True, text=True, timeout=120, env=child_env())
        assert "quarantine marker removed (forced despite damage)" in forced.stdout, forced.stdout + forced.stderr
        with _admin(cluster) as conn:
            assert read_table_marker(conn) is None and clear_table_marker(conn) is None
        with store.transaction():  # recheck_s = 0: the next write sees the marker gone
            store.database.execute_sql("CREATE TABLE other (a int)")
        assert not store.plugin("quarantine").quarantined
    finally:
        store.close()


def test_health_reports_a_standby_and_degrades_a_store_that_writes(cluster: PgCluster) -> None:
    """A hot standby made from the throwaway cluster: the health plugin's server probe reports
    role "standby" with a replay lag; a store whose profile writes is DEGRADED there (every
    write would fail with 25006), a read-only one is UP."""
    with _admin(cluster) as conn:
        conn.execute("CREATE TABLE seen (a int)")
        conn.execute("INSERT INTO seen VALUES (1)")
    standby = cluster.make_standby()
    try:
        standby.start()
        writer = corestore.open(_profile(standby, "health", health={"probe_interval_s": 0.05}))
        reader = corestore.open(attrs.evolve(_profile(standby, "health", health={"probe_interval_s": 0.05}),
                                             name="drill-ro", read_only=True))
        try:
            for store in (writer, reader):
                details = wait_until(lambda s=store: s.health().components["health"].details["server"].get("role"),
                                     "the server probe on the standby")
                assert details == "standby"
            server = writer.health().components["health"].details["server"]
            assert server["replay_lag_s"] is None or server["replay_lag_s"] >= 0
            assert writer.health().components["health"].status is corestore.HealthStatus.DEGRADED
            assert "standby is read-only" in writer.health().components["health"].summary
            assert reader.health().components["health"].status is corestore.HealthStatus.UP
            with reader.read():
                assert reader.database.execute_sql("SELECT a FROM seen").fetchall() == [(1,)]
        finally:
            writer.close()
            reader.close()
    finally:
        standby.remove()
