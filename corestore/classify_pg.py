"""The PostgreSQL SQLSTATE table: what a server error *means* for the core (site/postgresql.md).

The counterpart of :mod:`corestore.classify` (SQLite result codes) for the PostgreSQL backend
(:mod:`corestore.backends.postgresql`): the same :class:`~corestore.ErrorKind` verdicts, decided by
the five-character SQLSTATE psycopg puts on every server error (``err.sqlstate``). A row for the
exact code wins, then a row for its two-character class, else UNKNOWN.

Errors without a SQLSTATE are the driver's own, and only some of them mean the connection is
gone. ``psycopg.OperationalError`` / ``InterfaceError`` (a connection that broke: the server went
away, the network dropped, ``pg_terminate_backend()`` killed the session before it could say so;
"the connection is closed"; a connection that could not be made) are ``CONNECTION_LOST``
(TRANSIENT_IO, reconnect), except a refused login (``password authentication failed``,
``database ... does not exist``), which is ENVIRONMENT, recognised by the driver's words. A
``ProgrammingError`` / ``DataError`` / ``NotSupportedError`` the driver raised on the client
side, before anything reached the server (a stray ``%`` placeholder, a wrong parameter count, a
value it cannot adapt), is ``CLIENT_ERROR``: PROGRAMMING (a ``QueryError``, the caller's
mistake), never retried, never counted by the breaker. Any other psycopg error without a SQLSTATE
is CONNECTION_LOST only when its words say the connection is gone, else UNKNOWN.

The commit rule (which outcome a failed COMMIT has) is not in this table: it depends on whether
the connection survived, and lives in :func:`corestore.backends.postgresql.commit_outcome`.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .classify import FLAGS_BY_KIND, _chain, _text
from .errors import Classification, ErrorKind, StoreError
from .redact import redact_text

__all__ = ["ADVICE_PG", "PgRow", "SQLSTATE_ROWS", "CLASS_ROWS", "row_for", "pg_error", "sqlstate_of", "classify_pg_exception",
           "CONNECTION_LOST", "CLIENT_ERROR", "DRIVER_ERROR", "LOST_CONNECTION_STATES"]

logger = logging.getLogger(__name__)

_MESSAGE_LIMIT = 200


class PgRow(NamedTuple):
    """One row of the table: the kind, the name reported, and the core's flags when they differ
    from the kind's usual ones (``None``: the kind's, :data:`corestore.classify.FLAGS_BY_KIND`)."""

    kind: ErrorKind
    name: str
    retryable: bool | None = None
    trips_breaker: bool | None = None
    reopen: bool | None = None


_B, _T, _F, _C = ErrorKind.BUSY, ErrorKind.TRANSIENT_IO, ErrorKind.FATAL_IO, ErrorKind.CORRUPT
_K, _P, _R, _E, _U = ErrorKind.CONSTRAINT, ErrorKind.PROGRAMMING, ErrorKind.READONLY, ErrorKind.ENVIRONMENT, ErrorKind.UNKNOWN

#: Exact SQLSTATEs (the rows of the docs' table, in its order).
SQLSTATE_ROWS: Mapping[str, PgRow] = MappingProxyType({
    "40001": PgRow(_B, "SERIALIZATION_FAILURE"),  # retried as a whole unit by run()
    "40P01": PgRow(_B, "DEADLOCK_DETECTED"),
    "55P03": PgRow(_B, "LOCK_NOT_AVAILABLE"),  # lock_timeout, NOWAIT
    "55006": PgRow(_B, "OBJECT_IN_USE"),
    "72000": PgRow(_B, "SNAPSHOT_TOO_OLD"),
    "40002": PgRow(_K, "TRANSACTION_INTEGRITY_CONSTRAINT_VIOLATION"),
    "40003": PgRow(_U, "STATEMENT_COMPLETION_UNKNOWN"),
    "08007": PgRow(_T, "TRANSACTION_RESOLUTION_UNKNOWN"),  # at COMMIT: committed=None
    "25P03": PgRow(_T, "IDLE_IN_TRANSACTION_SESSION_TIMEOUT", retryable=True, trips_breaker=False, reopen=True),
    "57P05": PgRow(_T, "IDLE_SESSION_TIMEOUT", retryable=True, trips_breaker=False, reopen=True),
    "57P01": PgRow(_T, "ADMIN_SHUTDOWN"),  # also pg_terminate_backend()
    "57P02": PgRow(_T, "CRASH_SHUTDOWN"),
    "57P03": PgRow(_T, "CANNOT_CONNECT_NOW"),
    "57014": PgRow(_U, "QUERY_CANCELED"),  # statement_timeout or a cancel: its own outcome, not a fault
    "25006": PgRow(_R, "READ_ONLY_SQL_TRANSACTION", reopen=True),  # a standby after failover (read(): caller error)
    "25P02": PgRow(_P, "IN_FAILED_SQL_TRANSACTION"),  # a follow-on of the transaction's first error
    "53100": PgRow(ErrorKind.FULL, "DISK_FULL"),
    "53300": PgRow(_T, "TOO_MANY_CONNECTIONS"),
    "58030": PgRow(_F, "IO_ERROR"),
    "XX001": PgRow(_C, "DATA_CORRUPTED"),
    "XX002": PgRow(_C, "INDEX_CORRUPTED"),
    "42501": PgRow(_E, "INSUFFICIENT_PRIVILEGE"),
    "28000": PgRow(_E, "INVALID_AUTHORIZATION_SPECIFICATION"),
    "28P01": PgRow(_E, "INVALID_PASSWORD"),
    "3D000": PgRow(_E, "INVALID_CATALOG_NAME"),  # the database does not exist
})

#: Two-character SQLSTATE classes, for every code without a row of its own.
CLASS_ROWS: Mapping[str, PgRow] = MappingProxyType({
    "08": PgRow(_T, "CONNECTION_EXCEPTION"),
    "23": PgRow(_K, "INTEGRITY_CONSTRAINT_VIOLATION"),
    "22": PgRow(_K, "DATA_EXCEPTION"),
    "42": PgRow(_P, "SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION"),
    "40": PgRow(_B, "TRANSACTION_ROLLBACK"),
    "53": PgRow(_T, "INSUFFICIENT_RESOURCES"),
    "54": PgRow(_P, "PROGRAM_LIMIT_EXCEEDED"),
    "55": PgRow(_P, "OBJECT_NOT_IN_PREREQUISITE_STATE"),
    "57": PgRow(_T, "OPERATOR_INTERVENTION"),
    "58": PgRow(_F, "SYSTEM_ERROR"),
    "XX": PgRow(_U, "INTERNAL_ERROR"),
    "0A": PgRow(_P, "FEATURE_NOT_SUPPORTED"),
    "25": PgRow(_P, "INVALID_TRANSACTION_STATE"),
    "28": PgRow(_E, "INVALID_AUTHORIZATION_SPECIFICATION"),
    "3D": PgRow(_E, "INVALID_CATALOG_NAME"),
    "3F": PgRow(_P, "INVALID_SCHEMA_NAME"),
    "44": PgRow(_K, "WITH_CHECK_OPTION_VIOLATION"),
    "21": PgRow(_P, "CARDINALITY_VIOLATION"),
    "26": PgRow(_P, "INVALID_SQL_STATEMENT_NAME"),
    "34": PgRow(_P, "INVALID_CURSOR_NAME"),
    "3B": PgRow(_P, "SAVEPOINT_EXCEPTION"),
    "P0": PgRow(_P, "PLPGSQL_ERROR"),
})

#: What to do next on a PostgreSQL store, where it differs from the SQLite advice (corestore.raising.ADVICE).
ADVICE_PG: Mapping[ErrorKind, str] = MappingProxyType({
    ErrorKind.BUSY: "a lock, serialization or deadlock conflict with another session; store.run() retries the unit",
    ErrorKind.TRANSIENT_IO: "the connection or the server failed (it is reopened); store.run() retries it within "
                            "the profile's budget when nothing may have been committed",
    ErrorKind.FATAL_IO: "the server reported an I/O error; check the server's disk and its log",
    ErrorKind.CORRUPT: "the server reports damaged data; stop writing and check the server (amcheck, its log)",
    ErrorKind.FULL: "the server's disk is full; free space there, then retry",
    ErrorKind.READONLY: "the server refuses writes (a standby, or default_transaction_read_only); the connection "
                        "is reopened, and may reach the primary after a failover",
    ErrorKind.ENVIRONMENT: "the server refuses this login or database (credentials, pg_hba.conf, privileges)",
    ErrorKind.UNKNOWN: "an unexpected database error (QUERY_CANCELED: statement_timeout or a cancel; not retried)",
})

#: The verdict on a driver error with no SQLSTATE that means the connection is gone (or never
#: came): ``OperationalError`` / ``InterfaceError``.
CONNECTION_LOST = PgRow(_T, "CONNECTION_LOST")
#: The verdict on a ``ProgrammingError`` / ``DataError`` / ``NotSupportedError`` the driver raised
#: itself, with no SQLSTATE (the statement never reached the server): the caller's mistake.
CLIENT_ERROR = PgRow(_P, "CLIENT_ERROR")
#: Any other driver error without a SQLSTATE (CONNECTION_LOST instead when its words say the
#: connection is gone).
DRIVER_ERROR = PgRow(_U, "DRIVER_ERROR")
#: SQLSTATEs after which the connection is gone: an error in reply to COMMIT with one of these
#: (or with none) leaves the outcome unknown.
LOST_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03", "25P03", "57P05"})

_REFUSED_LOGIN = ("password authentication failed", "does not exist", "no pg_hba.conf entry", "role ")
#: The driver's classes for a broken or unusable connection (DB-API: "unexpected disconnect").
_CONNECTION_CLASSES = ("OperationalError", "InterfaceError")
#: The driver's classes for a mistake it catches on the client side.
_CLIENT_CLASSES = ("ProgrammingError", "DataError", "NotSupportedError")
#: Words of the driver (and libpq) when the connection is gone.
_GONE = ("connection is closed", "connection is lost", "server closed the connection", "terminating connection",
         "could not receive data", "could not send data", "consuming input failed", "sending query",
         "ssl syscall error", "eof detected", "connection reset", "broken pipe", "no connection to the server")


def row_for(sqlstate: str) -> PgRow | None:
    """The table's row for ``sqlstate``: its own, else its class's, else None."""
    return SQLSTATE_ROWS.get(sqlstate) or CLASS_ROWS.get(sqlstate[:2])


def _psycopg_error_type() -> type | None:
    """``psycopg.Error`` if psycopg is loaded; never imports it (no psycopg error exists otherwise)."""
    module = sys.modules.get("psycopg")
    return getattr(module, "Error", None) if module is not None else None


def pg_error(exc: BaseException) -> BaseException | None:
    """The psycopg error behind ``exc`` (walking ``.orig``, ``__cause__``, ``__context__`` as the
    SQLite table does): the first with a SQLSTATE, else the first without; None when there is none."""
    base = _psycopg_error_type()
    if base is None:
        return None
    first: BaseException | None = None
    for current in _chain(exc):
        if isinstance(current, base):
            if getattr(current, "sqlstate", None):
                return current
            if first is None:
                first = current
    return first


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of the psycopg error behind ``exc``, or None."""
    err = pg_error(exc)
    state = getattr(err, "sqlstate", None) if err is not None else None
    return state if isinstance(state, str) and state else None


def _verdict(row: PgRow, sqlstate: str | None, message: str) -> Classification:
    flags = FLAGS_BY_KIND[row.kind]
    return Classification(
        kind=row.kind,
        name=row.name,
        message=message,
        retryable=flags.retryable if row.retryable is None else row.retryable,
        trips_breaker=flags.trips_breaker if row.trips_breaker is None else row.trips_breaker,
        reopen=flags.reopen if row.reopen is None else row.reopen,
        source="core",
        sqlstate=sqlstate,
    )


def classify_pg_exception(exc: BaseException) -> Classification:
    """The core's verdict on ``exc`` from a PostgreSQL store (``source="core"``).

    A :class:`~corestore.errors.StoreError` in the chain that already carries a classification
    wins (decided before, possibly by a plugin). Otherwise the SQLSTATE of the psycopg error
    behind it decides (:func:`row_for`); a psycopg error without one is ``CONNECTION_LOST`` when
    it means the connection is gone (or ENVIRONMENT for a refused login), ``CLIENT_ERROR``
    (PROGRAMMING) for the driver's own client-side mistakes; anything else is UNKNOWN. Messages
    are redacted.
    """
    for current in _chain(exc):
        if isinstance(current, StoreError) and current.classification is not None:
            return current.classification
    err = pg_error(exc)
    if err is None:
        return Classification(kind=ErrorKind.UNKNOWN, message=redact_text(_text(exc))[:_MESSAGE_LIMIT])
    message = redact_text(_primary_message(err))[:_MESSAGE_LIMIT]
    state = getattr(err, "sqlstate", None)
    if isinstance(state, str) and state:
        row = row_for(state)
        if row is None:
            return Classification(kind=ErrorKind.UNKNOWN, name=f"SQLSTATE_{state}", message=message, sqlstate=state)
        return _verdict(row, state, message)
    return _verdict(_no_sqlstate_row(err, message), None, message)


def _driver_class(err: BaseException, names: tuple[str, ...]) -> bool:
    module = sys.modules.get("psycopg")
    return any(isinstance(err, cls) for cls in (getattr(module, name, None) for name in names) if isinstance(cls, type))


def _no_sqlstate_row(err: BaseException, message: str) -> PgRow:
    """The row for a psycopg error without a SQLSTATE (see the module docstring)."""
    lowered = message.lower()
    if _driver_class(err, _CONNECTION_CLASSES):
        if any(phrase in lowered for phrase in _REFUSED_LOGIN):
            return PgRow(_E, "CONNECTION_REFUSED_LOGIN")
        return CONNECTION_LOST
    if _driver_class(err, _CLIENT_CLASSES):
        return CLIENT_ERROR
    if any(phrase in lowered for phrase in _GONE):
        return CONNECTION_LOST
    return DRIVER_ERROR


def _primary_message(err: Any) -> str:
    diag = getattr(err, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    try:
        return str(primary) if primary else _text(err).strip().splitlines()[0] if _text(err).strip() else type(err).__name__
    except Exception:  # noqa: BLE001 - classifying never raises
        return type(err).__name__
