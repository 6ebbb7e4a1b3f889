"""The PostgreSQL doctor and the quarantine marker table: report it, re-check it, clear it.

On PostgreSQL the quarantine plugin's marker is a row in ``_corestore_quarantine`` in the
database itself (:mod:`corestore.quarantine_table`). ``corestore doctor URL`` reports an active
marker as an ERROR finding (status DOWN, exit 2), as it reports a SQLite marker file.

``corestore doctor --clear-quarantine URL`` follows the SQLite flow: show the evidence, run the
check, and remove the marker unless the check finds damage (``--force`` removes it anyway). The
SQLite check is ``quick_check``; here it is :func:`recheck_finding`: the relation the evidence
names (the server's ``schema``/``table`` fields, or the file named in an ``XX001`` message such
as "invalid page in block 0 of relation base/16384/16385", or an index named in an ``XX002``
message) is read again in a read-only session, a table by a sequential scan of every page, an
index with amcheck's ``bt_index_check`` when the extension is installed. The same ``XX001`` /
``XX002`` again is damage (refused). When the evidence names no relation, or the relation is
gone, or the read runs past ``statement_timeout``, there is nothing to re-check and the finding
says so (INFO): the marker is removed, as a person asked after looking (``amcheck``, the server
log, a restore). Only the removal writes, on a connection of its own.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from .findings import Finding, Severity
from .quarantine_table import QUARANTINE_TABLE, clear_table_marker, read_table_marker
from .redact import redact_text, redact_url

__all__ = ["quarantine_finding", "recheck_finding", "clear_server_marker", "RECHECK", "DAMAGE_STATES"]

logger = logging.getLogger(__name__)

#: The check name of the re-read (what ``--clear-quarantine`` refuses on, like ``quick_check``).
RECHECK = "recheck"
#: The SQLSTATEs that mean the damage is still there.
DAMAGE_STATES = frozenset({"XX001", "XX002"})
_FILE = re.compile(r"relation (?:base/\d+|pg_tblspc/\d+/[^/\s]+/\d+)/(\d+)")
_INDEX = re.compile(r'index "([^"]+)"')


def quarantine_finding(cur: Any, url: str) -> Finding:
    """The ``quarantine`` finding: ERROR (DOWN) when the marker row exists, else OK."""
    record = read_table_marker(cur.connection)
    if record is None:
        return Finding(check="quarantine", severity=Severity.OK, message="no quarantine marker")
    reason = record.get("reason") or "no reason recorded"
    since = record.get("since")
    return Finding(check="quarantine", severity=Severity.ERROR,
                   message=f"quarantined{f' since {since}' if since else ''}: {redact_text(str(reason))}",
                   advice="writes are refused until the marker is removed: read the evidence (--json), "
                          f"then `corestore doctor --clear-quarantine {redact_url(url)}`",
                   details={"marker": f"table {QUARANTINE_TABLE}", "evidence": record})


def _target(cur: Any, record: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(regclass text, relkind)`` of the relation the evidence names, None if none (or gone)."""
    found_evidence = record.get("evidence")
    evidence: Mapping[str, Any] = found_evidence if isinstance(found_evidence, Mapping) else {}
    found_diag = evidence.get("diag")
    diag: Mapping[str, Any] = found_diag if isinstance(found_diag, Mapping) else {}
    text = " ".join(str(x) for x in (diag.get("message_primary"), evidence.get("error"), record.get("reason")) if x)
    oid = None
    if diag.get("table_name"):
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid",
                    (diag.get("schema_name") or "public", diag["table_name"]))
        oid = cur.fetchone()[0]
    if oid is None and (found := _FILE.search(text)):
        cur.execute("SELECT pg_filenode_relation(0, %s::oid)::oid", (found.group(1),))
        oid = cur.fetchone()[0]
    if oid is None and (found := _INDEX.search(text)):
        cur.execute("SELECT to_regclass(%s)::oid", (found.group(1),))
        oid = cur.fetchone()[0]
    if oid is None:
        return None
    cur.execute("SELECT %s::oid::regclass::text, relkind::text FROM pg_class WHERE oid = %s", (oid, oid))
    row = cur.fetchone()
    return (str(row[0]), str(row[1])) if row else None


def recheck_finding(url: str, record: Mapping[str, Any], *, connect_timeout_s: float = 5.0,
                    statement_timeout_s: float = 60.0) -> Finding:
    """Read the damaged relation again (see the module docstring): ERROR when the server still
    reports ``XX001``/``XX002``, OK when the read succeeds, INFO when there is nothing to read."""
    import psycopg

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(2, round(connect_timeout_s)),
                               application_name="corestore doctor")
    except psycopg.Error as err:
        return Finding(check=RECHECK, severity=Severity.ERROR, message=f"cannot connect to re-check: {_text(err)}")
    with conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{round(statement_timeout_s * 1000)}ms",))
                target = _target(cur, record)
                if target is None:
                    return Finding(check=RECHECK, severity=Severity.INFO,
                                   message="not re-checked: the evidence names no relation that still exists")
                name, kind = target
                if kind == "i":
                    cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")
                    if cur.fetchone() is None:
                        return Finding(check=RECHECK, severity=Severity.INFO,
                                       message=f"not re-checked: {name} is an index and amcheck is not installed",
                                       advice=f"CREATE EXTENSION amcheck; SELECT bt_index_check('{name}')")
                    cur.execute("SELECT bt_index_check(%s::regclass)", (name,))
                    how = "bt_index_check"
                else:
                    for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
                        cur.execute("SELECT set_config(%s, 'off', true)", (setting,))
                    cur.execute(f"SELECT count(*) FROM {name}")  # name: the server's own regclass text
                    counted = cur.fetchone()
                    how = f"{counted[0] if counted else 0} rows read by a sequential scan"
        except psycopg.Error as err:
            state = getattr(err, "sqlstate", None)
            if state in DAMAGE_STATES:
                return Finding(check=RECHECK, severity=Severity.ERROR,
                               message=f"the damage is still there: {_text(err)}",
                               advice="recover the data first (a restore, REINDEX for an index); --force removes "
                                      "the marker anyway", details={"sqlstate": state})
            return Finding(check=RECHECK, severity=Severity.INFO, message=f"not re-checked: {_text(err)}",
                           details={"sqlstate": state})
    return Finding(check=RECHECK, severity=Severity.OK, message=f"re-read {name}: no error ({how})",
                   details={"relation": name})


def clear_server_marker(url: str, *, connect_timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Remove the marker row on a connection of its own; return the record removed (None: none)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=max(2, round(connect_timeout_s)),
                         application_name="corestore doctor --clear-quarantine") as conn:
        conn.execute("SELECT set_config('statement_timeout', '5000ms', false)")
        record = clear_table_marker(conn)
    logger.warning("doctor: quarantine marker removed from %s", redact_url(url))
    return record


def _text(err: BaseException) -> str:
    code = getattr(err, "sqlstate", None)
    return redact_text(f"{type(err).__name__}{f' [{code}]' if code else ''}: {' '.join(str(err).split())}")
