"""The PostgreSQL doctor: :func:`diagnose_postgres` a server from its URL without changing it.

``corestore doctor postgresql://...`` answers the questions an operator asks first when a
PostgreSQL-backed store misbehaves: can we connect, to what (server version; primary or standby),
how full is the server (connections used of ``max_connections``), who is holding it up
(sessions in a long transaction, sessions *idle in transaction* that hold locks and the xmin
horizon), on a standby how far behind the primary it is, and whether the database is
quarantined (the quarantine plugin's marker row, :mod:`corestore.doctor_pg_quarantine`: DOWN).

It changes nothing: its session is made read-only (``SET SESSION CHARACTERISTICS AS TRANSACTION
READ ONLY``, checked with ``SHOW transaction_read_only`` before any other query), every query is
bounded by ``statement_timeout``, and only catalog views and functions are read
(``pg_stat_activity``, ``pg_settings`` through ``current_setting``, ``pg_is_in_recovery()``,
``pg_stat_wal_receiver``, ``pg_stat_replication``, ``pg_replication_slots``). Query texts of
other sessions are never read or printed (they may hold secrets); a session is shown by pid,
user, database, application name, client address, state and ages.

The URL's password is never printed: the project's one redaction helper,
:func:`corestore.redact.redact_url`, replaces it (in the user info, everything up to the last
``@`` before the host part, and in ``password=`` / ``sslpassword=`` query parameters) with ``***``
for the diagnosis' ``path``, and every message taken from the driver goes through
:func:`corestore.redact.redact_text` as well. A malformed URL (an unencoded ``/ ? # @`` in the
password) is a usage error (exit 64) named by its redacted form.

The findings are the SQLite doctor's (:mod:`corestore.findings`), so ``--json``, the text table
and the exit codes are the same: 0 UP, 1 DEGRADED (a warning), 2 DOWN (an error, e.g. no
connection), 64 usage (a URL that cannot be parsed).
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from typing import Any

import attrs

from .doctor_pg_quarantine import quarantine_finding
from .errors import ConfigError
from .findings import Diagnosis, Finding, Severity
from .redact import URL_SCHEMES, check_server_url, is_server_url, redact_text, redact_url

__all__ = ["diagnose_postgres", "is_postgres_url", "redact_url", "Thresholds", "SCHEMES"]

logger = logging.getLogger(__name__)

#: URL prefixes the doctor (and ``corestore.open``) treat as PostgreSQL.
SCHEMES = URL_SCHEMES
_SHOWN = 10  # sessions listed in a finding's message at most (all of them are in details)


def is_postgres_url(target: str) -> bool:
    """Whether ``target`` is a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return is_server_url(target.strip())


def _nonnegative(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0 seconds, got {value}")


@attrs.frozen(kw_only=True)
class Thresholds:
    """When a finding becomes a warning.

    ``long_running_s``: an active session whose transaction is older than this. ``idle_in_transaction_s``:
    a session idle inside an open transaction for longer than this. ``replication_lag_s``: a
    standby whose last replayed transaction is older than this while WAL it received is still
    waiting to be replayed. ``connections_pct``: connections in use, as a percentage of those
    available to ordinary roles (``max_connections`` minus the reserved ones).
    """

    long_running_s: float = attrs.field(default=300.0, validator=_nonnegative)
    idle_in_transaction_s: float = attrs.field(default=60.0, validator=_nonnegative)
    replication_lag_s: float = attrs.field(default=30.0, validator=_nonnegative)
    connections_pct: float = attrs.field(default=80.0, validator=_nonnegative)


class _Scrubber:
    """Removes the URL's password from any text taken from the driver (:func:`redact_text`,
    which knows the password once :func:`redact_url` has seen the URL)."""

    def __init__(self, url: str) -> None:
        redact_url(url)

    def __call__(self, text: str) -> str:
        return redact_text(text)


def _sqlstate(err: BaseException) -> str | None:
    return getattr(err, "sqlstate", None)


def _error_text(err: BaseException, scrub: _Scrubber) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    code = _sqlstate(err)
    return scrub(f"{type(err).__name__}{f' [{code}]' if code else ''}: {text}")


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- the queries --------------------------------------------------------------------------------------
_SERVER = ("SELECT current_setting('server_version'), current_setting('server_version_num')::int, version(), "
           "current_database(), current_user, host(inet_server_addr()), inet_server_port(), pg_backend_pid()")
_CONNECTIONS = ("SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "OR (backend_type IS NULL AND usesysid IS NOT NULL)), "  # a row hidden from this role counts too
                "current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
                "coalesce(current_setting('reserved_connections', true), '0')::int")
_SESSION_COLUMNS = ("pid, usename, datname, application_name, host(client_addr), state, wait_event_type, wait_event, "
                    "extract(epoch FROM now() - xact_start)::float8, extract(epoch FROM now() - state_change)::float8")
_SESSION_KEYS = ("pid", "user", "database", "application_name", "client_addr", "state", "wait_event_type",
                 "wait_event", "transaction_seconds", "state_seconds")
_LONG_RUNNING = (f"SELECT {_SESSION_COLUMNS} FROM pg_stat_activity WHERE backend_type = 'client backend' "
                 "AND pid <> pg_backend_pid() AND state = 'active' AND xact_start IS NOT NULL "
                 "AND now() - xact_start > make_interval(secs => %s) ORDER BY xact_start")
_IDLE_IN_TXN = (f"SELECT {_SESSION_COLUMNS} FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
                "AND now() - state_change > make_interval(secs => %s) ORDER BY state_change")
_STANDBY = ("SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
            "pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8, "
            "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, "
            "pg_is_wal_replay_paused(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)")
_STANDBYS = ("SELECT application_name, host(client_addr), state, sync_state, "
             "extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication ORDER BY application_name")
_SLOTS = ("SELECT slot_name, slot_type, active, "
          "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 FROM pg_replication_slots ORDER BY slot_name")


# a row this role may not see has its state and backend_type nulled; its role is still shown
_HIDDEN = ("SELECT count(*) FROM pg_stat_activity WHERE usesysid IS NOT NULL AND backend_type IS NULL "
           "AND state IS NULL AND pid <> pg_backend_pid()")


def _hidden(cur: Any) -> int:
    """Client sessions whose state this role may not see (another role's, without
    ``pg_read_all_stats``): the session checks cannot speak for them."""
    cur.execute(_HIDDEN)
    return int(cur.fetchone()[0])


def _unseen(check: str, message: str, hidden: int, details: dict[str, Any]) -> Finding:
    """The all-clear of a session check, or INFO when some sessions were invisible to it."""
    details["hidden_sessions"] = hidden
    if not hidden:
        return Finding(check=check, severity=Severity.OK, message=message, details=details)
    return Finding(check=check, severity=Severity.INFO,
                   message=f"{message}, as far as this role sees: {hidden} session(s) of other roles hidden from it",
                   advice="connect as a role with pg_monitor (GRANT pg_monitor TO ...) to see every session",
                   details=details)


def _sessions(cur: Any, sql: str, threshold: float) -> list[dict[str, Any]]:
    cur.execute(sql, (threshold,))
    return [dict(zip(_SESSION_KEYS, row, strict=True)) for row in cur.fetchall()]


def _describe(session: dict[str, Any], age_key: str) -> str:
    who = f"pid {session['pid']} ({session['user']}@{session['database']}"
    if session.get("application_name"):
        who += f", {session['application_name']}"
    if session.get("client_addr"):
        who += f", from {session['client_addr']}"
    return f"{who}) {_fmt_age(float(session[age_key] or 0.0))}"


# -- the checks -----------------------------------------------------------------------------------------
def _check_server(cur: Any) -> tuple[Finding, dict[str, Any]]:
    cur.execute(_SERVER)
    version, num, full, database, user, addr, port, pid = cur.fetchone()
    info = {"server_version": version, "server_version_num": num, "version": full, "database": database,
            "user": user, "server_addr": addr, "server_port": port, "backend_pid": pid}
    if num < 120000:
        return Finding(check="server", severity=Severity.WARNING,
                       message=f"PostgreSQL {version}: no longer supported by the PostgreSQL project",
                       advice="upgrade to a supported major version (see postgresql.org/support/versioning)",
                       details=info), info
    return Finding(check="server", severity=Severity.OK, message=f"PostgreSQL {version}; database {database!r} as {user!r}",
                   details=info), info


def _check_role(cur: Any) -> tuple[Finding, bool]:
    cur.execute("SELECT pg_is_in_recovery()")
    standby = bool(cur.fetchone()[0])
    message = ("standby (pg_is_in_recovery() is true): read-only, writes go to the primary" if standby
               else "primary (pg_is_in_recovery() is false): accepts writes")
    return Finding(check="role", severity=Severity.OK, message=message,
                   details={"role": "standby" if standby else "primary", "in_recovery": standby}), standby


def _check_connections(cur: Any, limits: Thresholds) -> Finding:
    cur.execute(_CONNECTIONS)
    used, max_conn, su_reserved, reserved = (int(v) for v in cur.fetchone())
    available = max(1, max_conn - su_reserved - reserved)
    pct = 100.0 * used / available
    details = {"used": used, "max_connections": max_conn, "superuser_reserved_connections": su_reserved,
               "reserved_connections": reserved, "available_to_ordinary_roles": available,
               "used_pct": round(pct, 1), "warn_pct": limits.connections_pct}
    message = (f"{used} client connection(s) of max_connections {max_conn} "
               f"({pct:.0f}% of the {available} open to ordinary roles)")
    if used >= available:
        return Finding(check="connections", severity=Severity.ERROR, message=message + ": none left",
                       advice="new connections fail with 53300 too_many_connections: find who holds them "
                              "(pg_stat_activity), use a pool, or raise max_connections", details=details)
    if pct >= limits.connections_pct:
        return Finding(check="connections", severity=Severity.WARNING, message=message,
                       advice="close to the limit: check for leaked connections or pools sized above the server",
                       details=details)
    return Finding(check="connections", severity=Severity.OK, message=message, details=details)


def _check_long_running(cur: Any, limits: Thresholds) -> Finding:
    found = _sessions(cur, _LONG_RUNNING, limits.long_running_s)
    details: dict[str, Any] = {"threshold_seconds": limits.long_running_s, "sessions": found}
    if not found:
        return _unseen("long_running", f"no active transaction older than {_fmt_age(limits.long_running_s)}",
                       _hidden(cur), details)
    shown = "; ".join(_describe(s, "transaction_seconds") for s in found[:_SHOWN])
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return Finding(check="long_running", severity=Severity.WARNING,
                   message=f"{len(found)} active transaction(s) older than {_fmt_age(limits.long_running_s)}: {shown}{more}",
                   advice="long transactions hold locks and keep VACUUM from removing dead rows: check what they run "
                          "(pg_stat_activity) and set statement_timeout for the application", details=details)


def _check_idle_in_transaction(cur: Any, limits: Thresholds) -> Finding:
    found = _sessions(cur, _IDLE_IN_TXN, limits.idle_in_transaction_s)
    cur.execute("SELECT current_setting('idle_in_transaction_session_timeout')")
    timeout = cur.fetchone()[0]
    timeout = "0 (disabled)" if timeout == "0" else timeout
    details: dict[str, Any] = {"threshold_seconds": limits.idle_in_transaction_s, "sessions": found,
                               "idle_in_transaction_session_timeout": timeout}
    if not found:
        return _unseen("idle_in_transaction",
                       f"no session idle in a transaction for more than {_fmt_age(limits.idle_in_transaction_s)}"
                       f" (idle_in_transaction_session_timeout = {timeout})", _hidden(cur), details)
    shown = "; ".join(_describe(s, "state_seconds") for s in found[:_SHOWN])
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return Finding(check="idle_in_transaction", severity=Severity.WARNING,
                   message=f"{len(found)} session(s) idle in a transaction for more than "
                           f"{_fmt_age(limits.idle_in_transaction_s)}: {shown}{more}",
                   advice="an application opened a transaction and stopped talking: it holds its locks and the "
                          "xmin horizon; fix the application, or set idle_in_transaction_session_timeout "
                          f"(now {timeout}); pg_terminate_backend(pid) ends one", details=details)


def _check_standby_lag(cur: Any, limits: Thresholds) -> Finding:
    cur.execute(_STANDBY)
    received, replayed, pending_bytes, since_replay, paused, receiver = cur.fetchone()
    details = {"receive_lsn": received, "replay_lsn": replayed, "pending_bytes": pending_bytes,
               "last_replay_seconds": since_replay, "replay_paused": paused, "wal_receiver": receiver,
               "threshold_seconds": limits.replication_lag_s}
    if paused:
        return Finding(check="replication", severity=Severity.WARNING, message="standby: WAL replay is paused",
                       advice="SELECT pg_wal_replay_resume() on the standby when the pause is not deliberate",
                       details=details)
    caught_up = pending_bytes is not None and pending_bytes <= 0
    lag = 0.0 if caught_up else None if since_replay is None else float(since_replay)
    details["lag_seconds"] = lag
    source = f"wal receiver {receiver}" if receiver else "no wal receiver (replaying from the archive, or disconnected)"
    if receiver != "streaming":
        return Finding(check="replication", severity=Severity.WARNING,
                       message=f"standby not streaming from a primary: {source}; replayed up to {replayed}",
                       advice="check primary_conninfo and the primary's pg_hba.conf, and the standby's log",
                       details=details)
    if lag is None:
        return Finding(check="replication", severity=Severity.INFO,
                       message=f"standby with {pending_bytes or 0:.0f} bytes of WAL to replay and no transaction replayed "
                               f"since it started: lag unknown ({source})", details=details)
    if lag > limits.replication_lag_s:
        return Finding(check="replication", severity=Severity.WARNING,
                       message=f"standby {_fmt_age(lag)} behind: {pending_bytes:.0f} bytes of WAL received "
                               "and not yet replayed",
                       advice="replay is slower than the primary's writes (or blocked by a query on the standby: "
                              "see max_standby_streaming_delay); reads here return old data", details=details)
    state = "caught up with the WAL it received" if caught_up else f"{_fmt_age(lag)} behind"
    return Finding(check="replication", severity=Severity.OK, message=f"standby {state} ({source})", details=details)


def _check_primary_replication(cur: Any) -> Finding:
    cur.execute(_STANDBYS)
    standbys = [dict(zip(("application_name", "client_addr", "state", "sync_state", "replay_lag_seconds"), row,
                         strict=True)) for row in cur.fetchall()]
    cur.execute(_SLOTS)
    slots = [dict(zip(("slot_name", "slot_type", "active", "retained_bytes"), row, strict=True)) for row in cur.fetchall()]
    details = {"standbys": standbys, "slots": slots}
    idle = [s for s in slots if not s["active"]]
    message = f"primary with {len(standbys)} streaming standby(s), {len(slots)} replication slot(s)"
    if idle:
        names = ", ".join(f"{s['slot_name']} ({(s['retained_bytes'] or 0) / 2**20:.0f} MiB of WAL kept)" for s in idle)
        return Finding(check="replication", severity=Severity.WARNING, message=f"{message}; inactive: {names}",
                       advice="an inactive slot keeps WAL until its consumer returns and can fill the disk: "
                              "drop it (pg_drop_replication_slot) when the consumer is gone", details=details)
    return Finding(check="replication", severity=Severity.OK, message=message, details=details)


def _connect(url: str, connect_timeout_s: float) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=max(2, round(connect_timeout_s)),
                           application_name="corestore doctor")


def diagnose_postgres(url: str, *, thresholds: Thresholds | None = None, connect_timeout_s: float = 5.0,
                      statement_timeout_s: float = 5.0) -> Diagnosis:
    """Diagnose the PostgreSQL server of ``url`` from a read-only session; see the module
    docstring. The diagnosis' ``path`` is the URL with its password redacted.

    ``thresholds`` sets when sessions and lag become warnings; ``connect_timeout_s`` bounds the
    connection (libpq's ``connect_timeout``, at least 2 s), ``statement_timeout_s`` each query.
    """
    limits = thresholds or Thresholds()
    scrub = _Scrubber(url)
    shown = redact_url(url)
    findings: list[Finding] = []

    def done(usage_error: bool = False) -> Diagnosis:
        return Diagnosis(path=shown, findings=tuple(findings), checked_at=_dt.datetime.now(_dt.UTC),
                         usage_error=usage_error)

    try:
        import psycopg
    except ImportError as err:
        findings.append(Finding(check="connect", severity=Severity.ERROR, message=f"psycopg 3 is not installed ({err})",
                                advice='pip install "corestore[postgresql]"'))
        return done(usage_error=True)
    try:
        check_server_url(url, where="URL")
    except ConfigError as err:
        findings.append(Finding(check="url", severity=Severity.ERROR, message=str(err),
                                advice="percent-encode / ? # @ in the user and password (see libpq's connection URIs)"))
        return done(usage_error=True)
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as err:
        findings.append(Finding(check="url", severity=Severity.ERROR,
                                message=f"not a valid PostgreSQL URL: {_error_text(err, scrub)}",
                                advice="postgresql://USER:PASSWORD@HOST:PORT/DATABASE, with / ? @ # : in a password "
                                       "percent-encoded (see libpq's connection URIs)"))
        return done(usage_error=True)
    started = time.monotonic()
    try:
        conn = _connect(url, connect_timeout_s)
    except psycopg.Error as err:
        logger.info("doctor: cannot connect to %s: %s", shown, _error_text(err, scrub))
        findings.append(Finding(check="connect", severity=Severity.ERROR,
                                message=f"cannot connect: {_error_text(err, scrub)}",
                                advice="check that the server runs and listens there, the credentials, and pg_hba.conf",
                                details={"sqlstate": _sqlstate(err), "connect_timeout_seconds": connect_timeout_s}))
        return done()
    with conn:
        took = time.monotonic() - started
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cur.execute("SELECT set_config('statement_timeout', %s, false)", (f"{round(statement_timeout_s * 1000)}ms",))
                cur.execute("SHOW transaction_read_only")
                read_only = cur.fetchone()[0]
                if read_only != "on":  # never run a check in a session that could write
                    raise RuntimeError(f"the doctor's session is not read-only (transaction_read_only={read_only})")
                server, info = _check_server(cur)
                findings.append(Finding(check="connect", severity=Severity.OK,
                                        message=f"connected in {took * 1000:.0f} ms; read-only session, "
                                                f"statement_timeout {statement_timeout_s:g} s",
                                        details={"seconds": round(took, 4), "read_only": True,
                                                 "statement_timeout_seconds": statement_timeout_s}))
                findings.append(server)
        except psycopg.Error as err:
            findings.append(Finding(check="connect", severity=Severity.ERROR,
                                    message=f"connected, but the first queries failed: {_error_text(err, scrub)}",
                                    details={"sqlstate": _sqlstate(err)}))
            return done()
        standby = False
        checks: list[tuple[str, Any]] = [
            ("role", None), ("connections", _check_connections), ("long_running", _check_long_running),
            ("idle_in_transaction", _check_idle_in_transaction), ("replication", None),
            ("quarantine", lambda cur, _: quarantine_finding(cur, url))]
        for name, check in checks:
            try:
                with conn.cursor() as cur:
                    if name == "role":
                        finding, standby = _check_role(cur)
                    elif name == "replication":
                        finding = _check_standby_lag(cur, limits) if standby else _check_primary_replication(cur)
                    else:
                        finding = check(cur, limits)
            except psycopg.Error as err:
                lost = conn.closed or conn.broken
                finding = Finding(check=name, severity=Severity.ERROR if lost else Severity.WARNING,
                                  message=f"could not check: {_error_text(err, scrub)}",
                                  advice="the connection was lost during the diagnosis" if lost else
                                         "the doctor's role may lack the privilege (pg_monitor gives it)",
                                  details={"sqlstate": _sqlstate(err)})
            findings.append(finding)
            if conn.closed or conn.broken:
                break
        logger.info("doctor: %s is %s (%s)", shown, "standby" if standby else "primary", info.get("server_version"))
    return done()
