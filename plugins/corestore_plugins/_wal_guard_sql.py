"""wal_guard's helpers: the SQLite codes and pragmas it works with, classifications it makes,
and reading a pragma or the header for its messages (moved verbatim out of ``wal_guard.py``)."""
from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

import peewee

from corestore import Classification, ErrorKind
from corestore.classify import FLAGS_BY_KIND
from corestore.sqlitefile import SqliteHeader

__all__: list[str] = []  # private to wal_guard

logger = logging.getLogger(__name__)

# Kinds retried while switching: contention and the IOERR family (PROTOCOL is TRANSIENT_IO).
_RETRIED = frozenset({ErrorKind.BUSY, ErrorKind.TRANSIENT_IO, ErrorKind.FATAL_IO})
_PROTOCOL = 15
_CANTOPEN = 14
_RESYNC_SQL = "SELECT count(*) FROM sqlite_master"


def _classification(kind: ErrorKind, name: str, message: str, *, code: int | None = None,
                    extended_code: int | None = None) -> Classification:
    flags = FLAGS_BY_KIND[kind]
    return Classification(kind=kind, code=code, extended_code=extended_code, name=name, message=message[:200],
                          retryable=flags.retryable, trips_breaker=flags.trips_breaker, reopen=flags.reopen,
                          source="wal_guard")


def _is_database_error(err: BaseException) -> bool:
    """A driver or peewee database error (never an application bug a classifier might misread)."""
    if isinstance(err, (sqlite3.Error, peewee.DatabaseError, peewee.InterfaceError)):
        return True
    apsw = sys.modules.get("apsw")
    return apsw is not None and isinstance(err, apsw.Error)


def _is_protocol(c: Classification) -> bool:
    code = c.extended_code if c.extended_code is not None else c.code
    return code is not None and code & 0xFF == _PROTOCOL


def _is_core_cantopen(c: Classification) -> bool:
    """CANTOPEN as the core's table calls it (ENVIRONMENT): retried like a transient failure and
    never a reason to downgrade, since it may be EMFILE (site/concepts/errors.md: retried briefly at open).
    A plugin that answers ENVIRONMENT for it itself makes it permanent."""
    code = c.extended_code if c.extended_code is not None else c.code
    return c.source == "core" and code is not None and code & 0xFF == _CANTOPEN


def _pragma_value(conn: Any, sql: str) -> Any:
    """Run ``sql`` to completion and return the first column of its first row (None if none).

    Every row is consumed: ``PRAGMA journal_mode=WAL`` returns its row before the implicit COMMIT
    that writes the header, so an error there surfaces only when the statement is stepped to its end.
    """
    rows = conn.execute(sql).fetchall()
    return rows[0][0] if rows else None


def _mode(conn: Any, sql: str = "PRAGMA journal_mode") -> str:
    value = _pragma_value(conn, sql)
    return "" if value is None else str(value).lower()


def _describe_header(header: SqliteHeader | None) -> str:
    if header is None:
        return "no database header yet (empty file)"
    return f"header bytes 18-19 = {header.write_version},{header.read_version} ({header.journal_mode})"
