"""The quarantine marker of a PostgreSQL database: a one-row table in that database.

On SQLite the marker is a sidecar file beside the database (``<db>.corestore-quarantine``,
:mod:`corestore.sidecar_formats`). A PostgreSQL database has no file beside it, and the scope
that matters is different: the database is shared by every process on every machine that
connects to it, and corruption (``XX001`` data corrupted, ``XX002`` index corrupted) is a
property of the server's files, not of one client. A marker in a local state directory would
stop the one machine that saw the error and let every other one keep writing. So the marker
lives in the database itself, in the table ``_corestore_quarantine`` (one row: the first
quarantine wins, as with the SQLite marker), where every client — and ``corestore doctor`` —
finds it.

The table is written and read on a connection of its own (autocommit, bounded by
``statement_timeout``), never inside the store's transactions. If the marker cannot be written
(the server is down, or the damage reaches the catalog), the quarantine holds in the process
that saw it and the log says so, as when a SQLite marker cannot be written.

Removing it (after a person has looked): ``corestore doctor --clear-quarantine URL``
(:mod:`corestore.doctor_pg_quarantine`: evidence, a re-read of the damaged relation, then the
removal unless the damage is still there or ``--force``), or :func:`clear_table_marker`. A
running store lifts its quarantine at its next refused operation after the row is gone (at most
``recheck_s`` later).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["QUARANTINE_TABLE", "read_table_marker", "write_table_marker", "clear_table_marker"]

logger = logging.getLogger(__name__)

#: The marker table (in the store's database, first schema of the ``search_path``).
QUARANTINE_TABLE = "_corestore_quarantine"

_CREATE = (f"CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
           "record text NOT NULL, since timestamptz NOT NULL DEFAULT now())")
_UNDEFINED_TABLE = "42P01"


def _sqlstate(err: BaseException) -> str | None:
    return getattr(err, "sqlstate", None)


def read_table_marker(conn: Any) -> dict[str, Any] | None:
    """The marker record (None when there is none, or no table yet). ``conn`` is a psycopg
    connection in autocommit mode; any other error is raised."""
    try:
        row = conn.execute(f"SELECT record FROM {QUARANTINE_TABLE}").fetchone()
    except Exception as err:
        if _sqlstate(err) == _UNDEFINED_TABLE:
            return None
        raise
    if row is None:
        return None
    try:
        record = json.loads(row[0])
    except ValueError:
        record = {"reason": "unreadable quarantine marker", "raw": str(row[0])[:500]}
    return record if isinstance(record, dict) else {"reason": "unreadable quarantine marker"}


def write_table_marker(conn: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``record`` unless a marker is already there; return the marker now in force (the
    existing one when there was one)."""
    conn.execute(_CREATE)
    text = json.dumps(dict(record), default=str, sort_keys=True)
    conn.execute(f"INSERT INTO {QUARANTINE_TABLE} (one, record) VALUES (true, %s) ON CONFLICT (one) DO NOTHING",
                 (text,))
    found = read_table_marker(conn)
    return found if found is not None else dict(record)


def clear_table_marker(conn: Any) -> dict[str, Any] | None:
    """Remove the marker; return the record removed (None: there was none)."""
    found = read_table_marker(conn)
    if found is None:
        return None
    conn.execute(f"DELETE FROM {QUARANTINE_TABLE}")
    return found
