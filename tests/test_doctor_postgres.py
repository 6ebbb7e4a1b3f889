"""``corestore doctor postgresql://...`` against the real local server (CORESTORE_TEST_POSTGRES_URL,
default ``postgresql://127.0.0.1:5432/test``): connectivity, version, role, connections, sessions
held open by the test itself (idle in transaction, a long statement), the read-only session, the
redaction of the URL's password, and the exit codes. Skipped when no server answers, unless
``CORESTORE_REQUIRE_POSTGRES=1``.

The server is shared with other tests: findings about *other* sessions may appear at any time, so
assertions look for the sessions this test holds (by pid) and use thresholds far above anything a
test holds when they expect no warning.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from pgserver import require_server, server_url

from corestore.doctor_postgres import Thresholds, diagnose_postgres, is_postgres_url, redact_url
from corestore_contrib.waiting import wait_until

from helpers import child_env

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'corestore[postgresql]')")

CLI = [sys.executable, "-m", "corestore.cli"]
LONG = "3600"  # a threshold no other test's session reaches


@pytest.fixture(scope="module")
def pg_url() -> str:
    """The test server itself (the doctor looks at the whole server, not at a schema)."""
    require_server()
    return server_url()


def with_password(url: str, password: str, *, encode: bool = True) -> str:
    """``url`` with a password in it (trust authentication ignores it; the server still answers);
    ``encode=False`` puts it in as typed, unencoded ``/`` and ``?`` included (an invalid URL)."""
    parts = urllib.parse.urlsplit(url)
    user = parts.username or _current_user(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    secret = urllib.parse.quote(password, safe="") if encode else password
    return urllib.parse.urlunsplit((parts.scheme, f"{user}:{secret}@{host}", parts.path, parts.query, parts.fragment))


def _current_user(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        assert row is not None
        return str(row[0])


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=child_env())


def doctor_json(target: str, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli("doctor", target, "--json", *extra)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_check(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in data["findings"]}


def pids(finding: dict[str, Any]) -> set[int]:
    return {s["pid"] for s in finding["details"]["sessions"]}


def session_age(url: str, pid: int, state: str) -> float:
    """Seconds ``pid`` has been in ``state`` (-1 when it is not in it), seen from another session."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT state, extract(epoch FROM now() - state_change)::float8 FROM pg_stat_activity "
                           "WHERE pid = %s", (pid,)).fetchone()
    return float(row[1]) if row is not None and row[0] == state else -1.0


@pytest.fixture
def idle_in_transaction(pg_url: str) -> Iterator[int]:
    """A session of this test, idle inside an open transaction (BEGIN; SELECT 1), for the test's
    duration; yields its backend pid."""
    conn = psycopg.connect(pg_url, application_name="corestore-test idle-in-txn")
    try:
        conn.execute("SELECT 1")  # psycopg opened a transaction: the session is now idle in it
        pid = conn.info.backend_pid
        yield pid
    finally:
        conn.rollback()
        conn.close()


# -- a healthy server ------------------------------------------------------------------------------
def test_primary_server_is_up(pg_url: str) -> None:
    code, data = doctor_json(pg_url, "--long-running", LONG, "--idle-in-transaction", LONG)
    found = by_check(data)
    assert list(found) == ["connect", "server", "role", "connections", "long_running", "idle_in_transaction",
                           "replication", "quarantine"]
    assert found["quarantine"]["severity"] == "ok"
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int, current_setting('max_connections')::int,"
                           " pg_is_in_recovery()").fetchone()
    assert row is not None
    version_num, max_connections, in_recovery = row
    assert found["server"]["details"]["server_version_num"] == version_num
    assert found["role"]["details"]["role"] == ("standby" if in_recovery else "primary")
    conns = found["connections"]["details"]
    assert conns["max_connections"] == max_connections and 1 <= conns["used"] <= max_connections
    assert found["connect"]["details"]["read_only"] is True
    if data["status"] == "up":
        assert code == 0
    else:  # the shared server may carry an inactive slot or a crowd from other tests: say which
        assert code == 1, [f for f in data["findings"] if f["severity"] != "ok"]


def test_text_output_names_each_check(pg_url: str) -> None:
    proc = run_cli("doctor", pg_url, "--long-running", LONG, "--idle-in-transaction", LONG)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"corestore doctor: {redact_url(pg_url)}"
    assert any(ln.split()[:2] == ["ok", "role"] for ln in lines), proc.stdout
    assert lines[-1].startswith("status: ") and f"(exit {proc.returncode})" in lines[-1]


def test_the_doctor_session_is_read_only(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write attempted in the doctor's own session (hooked into one check) fails with 25006."""
    import corestore.doctor_postgres as dp

    seen: list[BaseException] = []
    original = dp._check_role

    def role_after_a_write_attempt(cur: Any) -> Any:
        try:
            cur.execute("CREATE TABLE corestore_doctor_must_not_write (x int)")
        except psycopg.Error as err:
            seen.append(err)
        return original(cur)

    monkeypatch.setattr(dp, "_check_role", role_after_a_write_attempt)
    diag = diagnose_postgres(pg_url, thresholds=Thresholds(long_running_s=3600, idle_in_transaction_s=3600))
    assert len(seen) == 1 and seen[0].sqlstate == "25006", seen  # read_only_sql_transaction
    assert diag.finding("role") is not None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('corestore_doctor_must_not_write')").fetchone() == (None,)


# -- sessions that hold the server up ---------------------------------------------------------------
def test_idle_in_transaction_session_is_a_warning(pg_url: str, idle_in_transaction: int) -> None:
    pid = idle_in_transaction
    wait_until(lambda: session_age(pg_url, pid, "idle in transaction") > 0.5,
               f"pid {pid} to be idle in transaction for 0.5 s")
    code, data = doctor_json(pg_url, "--idle-in-transaction", "0.5", "--long-running", LONG)
    found = by_check(data)["idle_in_transaction"]
    assert code == 1 and data["status"] == "degraded"
    assert found["severity"] == "warning" and pid in pids(found), found
    assert f"pid {pid} " in found["message"] and "idle_in_transaction_session_timeout" in found["advice"]
    mine = next(s for s in found["details"]["sessions"] if s["pid"] == pid)
    assert mine["application_name"] == "corestore-test idle-in-txn" and mine["state_seconds"] > 0.5
    # above the threshold: not reported
    code, data = doctor_json(pg_url, "--idle-in-transaction", LONG, "--long-running", LONG)
    assert pid not in pids(by_check(data)["idle_in_transaction"])


def test_session_gone_is_no_longer_reported(pg_url: str) -> None:
    conn = psycopg.connect(pg_url)
    conn.execute("SELECT 1")
    pid = conn.info.backend_pid
    wait_until(lambda: session_age(pg_url, pid, "idle in transaction") > 0.2, f"pid {pid} idle in transaction")
    diag = diagnose_postgres(pg_url, thresholds=Thresholds(idle_in_transaction_s=0.2, long_running_s=3600))
    finding = diag.finding("idle_in_transaction")
    assert finding is not None and pid in {s["pid"] for s in finding.details["sessions"]}
    conn.rollback()  # the transaction ends: the session is idle, no longer in a transaction
    wait_until(lambda: session_age(pg_url, pid, "idle") >= 0, f"pid {pid} to leave its transaction")
    diag = diagnose_postgres(pg_url, thresholds=Thresholds(idle_in_transaction_s=0.2, long_running_s=3600))
    finding = diag.finding("idle_in_transaction")
    assert finding is not None and pid not in {s["pid"] for s in finding.details["sessions"]}
    conn.close()


def test_long_running_statement_is_a_warning(pg_url: str) -> None:
    conn = psycopg.connect(pg_url, autocommit=True, application_name="corestore-test long-running")
    pid = conn.info.backend_pid
    errors: list[BaseException] = []

    def sleep() -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
        except psycopg.Error as err:  # canceled below
            errors.append(err)

    worker = threading.Thread(target=sleep, daemon=True)
    worker.start()
    try:
        wait_until(lambda: session_age(pg_url, pid, "active") > 0.5, f"pid {pid} to run pg_sleep for 0.5 s")
        code, data = doctor_json(pg_url, "--long-running", "0.5", "--idle-in-transaction", LONG)
        found = by_check(data)["long_running"]
        assert code == 1 and found["severity"] == "warning" and pid in pids(found), found
        mine = next(s for s in found["details"]["sessions"] if s["pid"] == pid)
        assert mine["state"] == "active" and mine["transaction_seconds"] > 0.5
        assert "pg_sleep" not in json.dumps(data)  # query texts are never read or shown
    finally:
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("SELECT pg_cancel_backend(%s)", (pid,))
        worker.join(30)
        conn.close()
    assert not worker.is_alive() and errors and errors[0].sqlstate == "57014"


def test_connections_threshold(pg_url: str) -> None:
    diag = diagnose_postgres(pg_url, thresholds=Thresholds(connections_pct=0, long_running_s=3600,
                                                           idle_in_transaction_s=3600))
    finding = diag.finding("connections")
    assert finding is not None and finding.severity == "warning" and "max_connections" in finding.message
    assert diag.exit_code >= 1


# -- failures and usage ----------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_is_down() -> None:
    code, data = doctor_json(f"postgresql://127.0.0.1:{_closed_port()}/test", "--connect-timeout", "2")
    assert code == 2 and data["status"] == "down"
    assert [f["check"] for f in data["findings"]] == ["connect"]
    assert "cannot connect" in data["findings"][0]["message"]


def test_missing_database_is_down(pg_url: str) -> None:
    parts = urllib.parse.urlsplit(pg_url)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/corestore_no_such_database", "", ""))
    code, data = doctor_json(url)
    # libpq reports a refused startup without a SQLSTATE: the server's message says what is wrong
    assert code == 2 and 'database "corestore_no_such_database" does not exist' in data["findings"][0]["message"]


def test_usage_errors_exit_64(pg_url: str, tmp_path: Any) -> None:
    code, data = doctor_json("postgresql://127.0.0.1:5432/test?no_such_option=1")
    assert code == 64 and data["findings"][0]["check"] == "url"
    proc = run_cli("doctor", pg_url, "--integrity")
    assert proc.returncode == 64 and "only for a SQLite file" in proc.stderr
    proc = run_cli("doctor", str(tmp_path / "app.db"), "--idle-in-transaction", "5")
    assert proc.returncode == 64 and "only for a PostgreSQL server" in proc.stderr
    assert run_cli("doctor", pg_url, "--long-running", "-1").returncode == 64


def test_name_bound_to_a_url_in_the_config(pg_url: str, tmp_path: Any) -> None:
    """A ``[databases]`` binding whose ``url`` is a PostgreSQL URL is diagnosed as a server."""
    config = tmp_path / "corestore.toml"
    config.write_text(f'[databases.main]\nurl = "{pg_url}"\n')
    proc = subprocess.run([*CLI, "--config", str(config), "doctor", "main", "--json", "--long-running", LONG,
                           "--idle-in-transaction", LONG], capture_output=True, text=True, timeout=60, env=child_env())
    data = json.loads(proc.stdout)
    assert data["path"] == redact_url(pg_url) and by_check(data)["role"]["severity"] == "ok"


# -- the password is never printed ---------------------------------------------------------------------------
SECRET = "Sup3r-s3cret/pw?"


@pytest.mark.parametrize("case", ["reachable", "missing-database", "no-server", "query-parameter", "unencoded"])
def test_password_is_never_printed(pg_url: str, case: str) -> None:
    url = with_password(pg_url, SECRET, encode=case != "unencoded")
    parts = urllib.parse.urlsplit(url)
    if case == "missing-database":
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/corestore_no_such_database", "", ""))
    elif case == "no-server":
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit(":", 1)[0] + f":{_closed_port()}",
                                       parts.path, "", ""))
    elif case == "query-parameter":
        host = parts.netloc.rsplit("@", 1)[-1]
        url = urllib.parse.urlunsplit((parts.scheme, host, parts.path,
                                       "password=" + urllib.parse.quote(SECRET, safe=""), ""))
    encoded = urllib.parse.quote(SECRET, safe="")
    outputs = []
    for extra in (["--json"], [], ["-v"]):
        args = ["-v", "doctor", url] if extra == ["-v"] else ["doctor", url, *extra]
        proc = run_cli(*args, "--connect-timeout", "2")
        outputs.append(proc.stdout + proc.stderr)
        expected = {"reachable": (0, 1), "query-parameter": (0, 1), "unencoded": (64,)}.get(case, (2,))
        assert proc.returncode in expected, proc.stdout + proc.stderr
    for text in outputs:
        assert SECRET not in text and encoded not in text and "s3cret" not in text, text
        assert "***" in text


def test_redact_url_forms() -> None:
    assert redact_url("postgresql://app:pw@db.example:5432/prod") == "postgresql://app:***@db.example:5432/prod"
    assert redact_url("postgres://app@db/prod") == "postgres://app@db/prod"
    assert redact_url("postgresql://db/prod?sslmode=require&password=x%40y") == \
        "postgresql://db/prod?sslmode=require&password=***"
    assert redact_url("postgresql://u:p@h1:5432,h2:5433/prod") == "postgresql://u:***@h1:5432,h2:5433/prod"
    assert redact_url("host=db password='a b' user=app") == "host=db password=*** user=app"
    assert is_postgres_url("postgresql://x/y") and is_postgres_url("POSTGRES://x") and not is_postgres_url("./app.db")


# -- a standby: a throwaway primary and standby of the test's own ----------------------------------------
PG_BIN = os.environ.get("CORESTORE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")


def _as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a server binary as the ``postgres`` user (``initdb`` refuses root), bounded."""
    proc = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


@pytest.fixture(scope="module")
def standby_pair() -> Iterator[tuple[str, str]]:
    """A primary and a streaming standby (``pg_basebackup -R``) in a temporary directory, on free
    ports, stopped (immediate) and removed afterwards: the shared server is never touched.
    Yields (primary URL, standby URL)."""
    if os.geteuid() != 0 or not os.path.exists(os.path.join(PG_BIN, "initdb")):
        pytest.skip(f"needs root (to run the server binaries as postgres) and {PG_BIN}/initdb")
    import pwd
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="corestore-pgpair-")  # pytest's own tmp is root-only (0700)
    entry = pwd.getpwnam("postgres")
    os.chown(root, entry.pw_uid, entry.pw_gid)
    primary, standby = os.path.join(root, "primary"), os.path.join(root, "standby")
    ports = (_closed_port(), _closed_port())
    started: list[str] = []
    try:
        _as_postgres(f"{PG_BIN}/initdb", "-D", primary, "-U", "postgres", "--auth=trust", "--no-sync")
        for directory, port in ((primary, ports[0]),):
            _as_postgres(f"{PG_BIN}/pg_ctl", "-D", directory, "-l", f"{directory}.log", "-w", "-t", "60", "-o",
                         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
            started.append(directory)
        _as_postgres(f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(ports[0]), "-U", "postgres",
                     "-D", standby, "-R", "-X", "stream", "--no-sync")
        _as_postgres(f"{PG_BIN}/pg_ctl", "-D", standby, "-l", f"{standby}.log", "-w", "-t", "60", "-o",
                     f"-p {ports[1]} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        started.append(standby)
        yield (f"postgresql://postgres@127.0.0.1:{ports[0]}/postgres",
               f"postgresql://postgres@127.0.0.1:{ports[1]}/postgres")
    finally:
        for directory in reversed(started):
            subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", directory, "-m", "immediate",
                            "-w", "-t", "60", "stop"], capture_output=True, timeout=90)
        shutil.rmtree(root, ignore_errors=True)


def _replayed(primary: str, standby: str) -> bool:
    with psycopg.connect(primary, autocommit=True) as p, psycopg.connect(standby, autocommit=True) as s:
        lsn = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        row = s.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0", lsn).fetchone()
    return bool(row and row[0])


def test_standby_role_and_replication_lag(standby_pair: tuple[str, str]) -> None:
    primary, standby = standby_pair
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (n int)")
        conn.execute("INSERT INTO ticks VALUES (1)")
    wait_until(lambda: _replayed(primary, standby), "the standby to replay the primary's WAL", timeout_s=60)

    code, data = doctor_json(standby)
    found = by_check(data)
    assert found["role"]["details"]["role"] == "standby"
    assert found["replication"]["severity"] == "ok", found["replication"]
    assert found["replication"]["details"]["wal_receiver"] == "streaming" and "caught up" in found["replication"]["message"]
    code_p, data_p = doctor_json(primary)
    assert by_check(data_p)["role"]["details"]["role"] == "primary"
    assert len(by_check(data_p)["replication"]["details"]["standbys"]) == 1

    # replay paused by an operator: a warning
    with psycopg.connect(standby, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        code, data = doctor_json(standby)
        assert code == 1 and "paused" in by_check(data)["replication"]["message"]
        conn.execute("SELECT pg_wal_replay_resume()")

    # the standby receives WAL but applies it an hour late: behind by more than the threshold
    with psycopg.connect(standby, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        conn.execute("SELECT pg_reload_conf()")
        wait_until(lambda: conn.execute("SHOW recovery_min_apply_delay").fetchone() == ("1h",),
                   "the standby to load recovery_min_apply_delay")
    try:
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute("INSERT INTO ticks VALUES (2)")

        def behind() -> dict[str, Any] | None:
            _, doc = doctor_json(standby, "--replication-lag", "1")
            rep = by_check(doc)["replication"]
            return rep if rep["severity"] == "warning" else None

        rep = wait_until(behind, "the doctor to report the standby more than 1 s behind", timeout_s=60, interval_s=0.5)
        assert "behind" in rep["message"] and rep["details"]["pending_bytes"] > 0
        assert rep["details"]["lag_seconds"] > 1
    finally:
        with psycopg.connect(standby, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
            conn.execute("SELECT pg_reload_conf()")


def test_sessions_hidden_from_an_unprivileged_role(standby_pair: tuple[str, str]) -> None:
    """A role without pg_read_all_stats cannot see another role's session state: the doctor says
    so (INFO, with the advice) instead of an all-clear it cannot give. On the throwaway primary:
    the role is created there, never on the shared server."""
    primary, _ = standby_pair
    with psycopg.connect(primary, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS doctor_plain")
        admin.execute("CREATE ROLE doctor_plain LOGIN")
    holder = psycopg.connect(primary, application_name="corestore-test hidden")
    try:
        holder.execute("SELECT 1")  # postgres's session, idle in a transaction
        pid = holder.info.backend_pid
        wait_until(lambda: session_age(primary, pid, "idle in transaction") > 0.5, f"pid {pid} idle in transaction")
        plain = primary.replace("postgresql://postgres@", "postgresql://doctor_plain@")
        code, data = doctor_json(plain, "--idle-in-transaction", "0.5")
        found = by_check(data)["idle_in_transaction"]
        assert found["severity"] == "info" and found["details"]["hidden_sessions"] >= 1, found
        assert "pg_monitor" in found["advice"] and code == 0
        code, data = doctor_json(primary, "--idle-in-transaction", "0.5")  # a superuser sees it
        assert pid in pids(by_check(data)["idle_in_transaction"]) and code == 1
    finally:
        holder.rollback()
        holder.close()
