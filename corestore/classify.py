"""The SQLite result-code table: what a database error *means* for the core (site/concepts/errors.md).

The store calls the ``classify_error`` hook whenever the database raised; :class:`CoreClassifier`
is the last implementation asked (``trylast``), so any plugin can override it. It classifies by
SQLite result code, extended code first and then its primary (``code & 0xFF``), and trusts
message text only when no code is available at all.

Finding the code takes a walk: peewee wraps the driver error (``.orig``), and on IOERR or FULL
SQLite rolls the transaction back by itself, so peewee's own ``ROLLBACK`` fails with "cannot
rollback - no transaction is active" and the real error survives only in ``__context__``.
:func:`driver_error` walks ``.orig``, ``__cause__`` and ``__context__`` breadth-first and looks
past such symptoms. It understands stdlib ``sqlite3`` errors (``sqlite_errorcode``) and apsw
errors (``extendedresult``/``result``) without importing apsw: an apsw error can only exist if
apsw is already in ``sys.modules``.

Decisions for the codes the taxonomy (site/concepts/errors.md) does not name:

* ``PERM`` 3 and ``NOLFS`` 22 are ``ENVIRONMENT`` (file-system permissions, no large-file
  support: the host is wrong, not the data or the caller).
* ``SCHEMA`` 17 is ``BUSY``: SQLite re-prepares a statement after a schema change by itself and
  only reports SCHEMA when another connection kept changing the schema; a fresh attempt of the
  unit of work is the remedy, bounded like any contention.
* ``NOMEM`` 7, ``INTERRUPT`` 9 (the application asked for it), ``ABORT`` 4 (incl.
  ``ABORT_ROLLBACK``), ``INTERNAL`` 2, ``NOTFOUND`` 12, ``EMPTY`` 16, ``FORMAT`` 24 (unused by
  SQLite), ``NOTICE`` 27 and ``WARNING`` 28 (only ever sent to the log callback), and the
  non-errors ``OK``/``ROW``/``DONE`` are ``UNKNOWN``: no retry, no breaker, no reopen. None of
  them says anything about the health of the file.
* Every other extended code follows its primary; an extended code newer than this table does too.
* Message text is trusted only on database exceptions (``sqlite3.Error``, apsw errors, peewee's
  exceptions): a ``ValueError("database is locked")`` from application code stays ``UNKNOWN``
  and is never retried.
"""
from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import peewee

from corestore.errors import Classification, ErrorKind, StoreError
from corestore.hookspecs import hookimpl

__all__ = [
    "SQLITE_CODES",
    "KIND_BY_CODE",
    "KindFlags",
    "FLAGS_BY_KIND",
    "MESSAGE_CODES",
    "kind_for_code",
    "code_name",
    "classify_code",
    "driver_error",
    "error_codes",
    "classify_exception",
    "CoreClassifier",
]

logger = logging.getLogger(__name__)

#: Every primary and extended result code of SQLite 3.40 through 3.54 (sqlite3.h), by family.
SQLITE_CODES: Mapping[int, str] = MappingProxyType({
    0: "SQLITE_OK",
    256: "SQLITE_OK_LOAD_PERMANENTLY",
    512: "SQLITE_OK_SYMLINK",
    1: "SQLITE_ERROR",
    257: "SQLITE_ERROR_MISSING_COLLSEQ",
    513: "SQLITE_ERROR_RETRY",
    769: "SQLITE_ERROR_SNAPSHOT",
    1025: "SQLITE_ERROR_RESERVESIZE",
    1281: "SQLITE_ERROR_KEY",
    1537: "SQLITE_ERROR_UNABLE",
    2: "SQLITE_INTERNAL",
    3: "SQLITE_PERM",
    4: "SQLITE_ABORT",
    516: "SQLITE_ABORT_ROLLBACK",
    5: "SQLITE_BUSY",
    261: "SQLITE_BUSY_RECOVERY",
    517: "SQLITE_BUSY_SNAPSHOT",
    773: "SQLITE_BUSY_TIMEOUT",
    6: "SQLITE_LOCKED",
    262: "SQLITE_LOCKED_SHAREDCACHE",
    518: "SQLITE_LOCKED_VTAB",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    264: "SQLITE_READONLY_RECOVERY",
    520: "SQLITE_READONLY_CANTLOCK",
    776: "SQLITE_READONLY_ROLLBACK",
    1032: "SQLITE_READONLY_DBMOVED",
    1288: "SQLITE_READONLY_CANTINIT",
    1544: "SQLITE_READONLY_DIRECTORY",
    9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR",
    266: "SQLITE_IOERR_READ",
    522: "SQLITE_IOERR_SHORT_READ",
    778: "SQLITE_IOERR_WRITE",
    1034: "SQLITE_IOERR_FSYNC",
    1290: "SQLITE_IOERR_DIR_FSYNC",
    1546: "SQLITE_IOERR_TRUNCATE",
    1802: "SQLITE_IOERR_FSTAT",
    2058: "SQLITE_IOERR_UNLOCK",
    2314: "SQLITE_IOERR_RDLOCK",
    2570: "SQLITE_IOERR_DELETE",
    2826: "SQLITE_IOERR_BLOCKED",
    3082: "SQLITE_IOERR_NOMEM",
    3338: "SQLITE_IOERR_ACCESS",
    3594: "SQLITE_IOERR_CHECKRESERVEDLOCK",
    3850: "SQLITE_IOERR_LOCK",
    4106: "SQLITE_IOERR_CLOSE",
    4362: "SQLITE_IOERR_DIR_CLOSE",
    4618: "SQLITE_IOERR_SHMOPEN",
    4874: "SQLITE_IOERR_SHMSIZE",
    5130: "SQLITE_IOERR_SHMLOCK",
    5386: "SQLITE_IOERR_SHMMAP",
    5642: "SQLITE_IOERR_SEEK",
    5898: "SQLITE_IOERR_DELETE_NOENT",
    6154: "SQLITE_IOERR_MMAP",
    6410: "SQLITE_IOERR_GETTEMPPATH",
    6666: "SQLITE_IOERR_CONVPATH",
    6922: "SQLITE_IOERR_VNODE",
    7178: "SQLITE_IOERR_AUTH",
    7434: "SQLITE_IOERR_BEGIN_ATOMIC",
    7690: "SQLITE_IOERR_COMMIT_ATOMIC",
    7946: "SQLITE_IOERR_ROLLBACK_ATOMIC",
    8202: "SQLITE_IOERR_DATA",
    8458: "SQLITE_IOERR_CORRUPTFS",
    8714: "SQLITE_IOERR_IN_PAGE",
    8970: "SQLITE_IOERR_BADKEY",
    9226: "SQLITE_IOERR_CODEC",
    11: "SQLITE_CORRUPT",
    267: "SQLITE_CORRUPT_VTAB",
    523: "SQLITE_CORRUPT_SEQUENCE",
    779: "SQLITE_CORRUPT_INDEX",
    12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    270: "SQLITE_CANTOPEN_NOTEMPDIR",
    526: "SQLITE_CANTOPEN_ISDIR",
    782: "SQLITE_CANTOPEN_FULLPATH",
    1038: "SQLITE_CANTOPEN_CONVPATH",
    1294: "SQLITE_CANTOPEN_DIRTYWAL",
    1550: "SQLITE_CANTOPEN_SYMLINK",
    15: "SQLITE_PROTOCOL",
    16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA",
    18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT",
    275: "SQLITE_CONSTRAINT_CHECK",
    531: "SQLITE_CONSTRAINT_COMMITHOOK",
    787: "SQLITE_CONSTRAINT_FOREIGNKEY",
    1043: "SQLITE_CONSTRAINT_FUNCTION",
    1299: "SQLITE_CONSTRAINT_NOTNULL",
    1555: "SQLITE_CONSTRAINT_PRIMARYKEY",
    1811: "SQLITE_CONSTRAINT_TRIGGER",
    2067: "SQLITE_CONSTRAINT_UNIQUE",
    2323: "SQLITE_CONSTRAINT_VTAB",
    2579: "SQLITE_CONSTRAINT_ROWID",
    2835: "SQLITE_CONSTRAINT_PINNED",
    3091: "SQLITE_CONSTRAINT_DATATYPE",
    20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE",
    22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH",
    279: "SQLITE_AUTH_USER",
    24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE",
    26: "SQLITE_NOTADB",
    27: "SQLITE_NOTICE",
    283: "SQLITE_NOTICE_RECOVER_WAL",
    539: "SQLITE_NOTICE_RECOVER_ROLLBACK",
    795: "SQLITE_NOTICE_RBU",
    28: "SQLITE_WARNING",
    284: "SQLITE_WARNING_AUTOINDEX",
    100: "SQLITE_ROW",
    101: "SQLITE_DONE",
})

# The kind of each primary code; an extended code inherits it unless _EXTENDED_KIND says otherwise.
_PRIMARY_KIND: dict[int, ErrorKind] = {
    1: ErrorKind.PROGRAMMING,  # ERROR: syntax, no such table
    3: ErrorKind.ENVIRONMENT,  # PERM
    5: ErrorKind.BUSY,
    6: ErrorKind.BUSY,  # LOCKED
    8: ErrorKind.READONLY,
    10: ErrorKind.FATAL_IO,
    11: ErrorKind.CORRUPT,
    13: ErrorKind.FULL,
    14: ErrorKind.ENVIRONMENT,  # CANTOPEN (the open path retries it briefly: EMFILE is transient)
    15: ErrorKind.TRANSIENT_IO,  # PROTOCOL: a WAL lock race lost repeatedly (wal_guard decides
    #                               when it persists and so means ENVIRONMENT, e.g. NFS)
    17: ErrorKind.BUSY,  # SCHEMA: another connection keeps changing the schema
    18: ErrorKind.CONSTRAINT,  # TOOBIG
    19: ErrorKind.CONSTRAINT,
    20: ErrorKind.CONSTRAINT,  # MISMATCH
    21: ErrorKind.PROGRAMMING,  # MISUSE
    22: ErrorKind.ENVIRONMENT,  # NOLFS
    23: ErrorKind.ENVIRONMENT,  # AUTH
    25: ErrorKind.CONSTRAINT,  # RANGE
    26: ErrorKind.CORRUPT,  # NOTADB
}
# Extended codes whose kind differs from their primary's.
_EXTENDED_KIND: dict[int, ErrorKind] = {
    4618: ErrorKind.TRANSIENT_IO,  # IOERR_SHMOPEN
    4874: ErrorKind.TRANSIENT_IO,  # IOERR_SHMSIZE
    5130: ErrorKind.TRANSIENT_IO,  # IOERR_SHMLOCK
    5386: ErrorKind.TRANSIENT_IO,  # IOERR_SHMMAP
    1546: ErrorKind.TRANSIENT_IO,  # IOERR_TRUNCATE
    1032: ErrorKind.TRANSIENT_IO,  # READONLY_DBMOVED
}

#: The kind of every code in :data:`SQLITE_CODES` (UNKNOWN where the taxonomy names none).
KIND_BY_CODE: Mapping[int, ErrorKind] = MappingProxyType({
    code: _EXTENDED_KIND.get(code) or _PRIMARY_KIND.get(code & 0xFF, ErrorKind.UNKNOWN) for code in SQLITE_CODES
})


class KindFlags(NamedTuple):
    """What the core does about one kind: retry it, count it against the breaker, reopen.

    ``retryable`` False for FATAL_IO means the core does not retry it on its own; a policy
    plugin may (the taxonomy's "by policy").
    """

    retryable: bool
    trips_breaker: bool
    reopen: bool


#: The retry / breaker / reopen columns of the error taxonomy (site/concepts/errors.md).
FLAGS_BY_KIND: Mapping[ErrorKind, KindFlags] = MappingProxyType({
    ErrorKind.BUSY: KindFlags(retryable=True, trips_breaker=False, reopen=False),
    ErrorKind.TRANSIENT_IO: KindFlags(retryable=True, trips_breaker=True, reopen=True),
    ErrorKind.FATAL_IO: KindFlags(retryable=False, trips_breaker=True, reopen=True),
    ErrorKind.CORRUPT: KindFlags(retryable=False, trips_breaker=True, reopen=True),
    ErrorKind.FULL: KindFlags(retryable=False, trips_breaker=True, reopen=False),
    ErrorKind.READONLY: KindFlags(retryable=False, trips_breaker=True, reopen=False),
    ErrorKind.ENVIRONMENT: KindFlags(retryable=False, trips_breaker=True, reopen=False),
    ErrorKind.CONSTRAINT: KindFlags(retryable=False, trips_breaker=False, reopen=False),
    ErrorKind.PROGRAMMING: KindFlags(retryable=False, trips_breaker=False, reopen=False),
    ErrorKind.INVARIANT: KindFlags(retryable=False, trips_breaker=True, reopen=False),
    ErrorKind.UNKNOWN: KindFlags(retryable=False, trips_breaker=False, reopen=False),
})

#: Fallback when a database exception carries no code: a lower-case phrase of SQLite's (or the
#: driver's) message and the primary code it stands for. First match wins.
MESSAGE_CODES: tuple[tuple[str, int], ...] = (
    ("database is locked", 5),
    ("database table is locked", 6),
    ("database schema is locked", 6),
    ("disk i/o error", 10),
    ("database disk image is malformed", 11),
    ("file is not a database", 26),
    ("database or disk is full", 13),
    ("attempt to write a readonly database", 8),
    ("unable to open database file", 14),
    ("not authorized", 23),
    ("locking protocol", 15),
    ("access permission denied", 3),
    ("large file support is disabled", 22),
    ("database schema has changed", 17),
    ("constraint failed", 19),
    ("datatype mismatch", 20),
    ("string or blob too big", 18),
    ("column index out of range", 25),
    ("no such table", 1),
    ("no such column", 1),
    ("syntax error", 1),
    ("cannot operate on a closed", 21),  # sqlite3: closed database / cursor
    ("has been closed", 21),  # apsw: ConnectionClosedError / CursorClosedError
    ("incorrect number of bindings", 21),
    ("bad parameter or other api misuse", 21),
    ("interrupted", 9),
    ("out of memory", 7),
)

# Messages of a failure caused by an earlier one (SQLite already rolled back): look past them.
_SYMPTOM_PHRASES = ("cannot rollback - no transaction is active", "cannot commit - no transaction is active")
_SYMPTOM_CODES = frozenset({516})  # ABORT_ROLLBACK: aborted because the transaction rolled back
_MAX_CHAIN = 32  # exceptions visited per walk; chains are 1-5 long in practice
_MESSAGE_LIMIT = 200


def kind_for_code(code: int) -> ErrorKind:
    """The kind of a result code: the extended code's row first, then its primary's, else UNKNOWN."""
    return KIND_BY_CODE.get(code) or KIND_BY_CODE.get(code & 0xFF) or ErrorKind.UNKNOWN


def code_name(code: int) -> str:
    """``SQLITE_*`` name of a code; a code newer than the table is named after its primary."""
    name = SQLITE_CODES.get(code)
    if name is None:
        name = f"{SQLITE_CODES.get(code & 0xFF, 'SQLITE_UNKNOWN')}_{code}"
    return name


def _verdict(primary: int, extended: int | None, name: str, message: str, source: str) -> Classification:
    kind = kind_for_code(extended if extended is not None else primary)
    flags = FLAGS_BY_KIND[kind]
    return Classification(
        kind=kind,
        code=primary,
        extended_code=extended,
        name=name,
        message=message,
        retryable=flags.retryable,
        trips_breaker=flags.trips_breaker,
        reopen=flags.reopen,
        source=source,
    )


def classify_code(code: int | None, message: str = "", *, source: str = "core") -> Classification:
    """Build the :class:`Classification` of a (preferably extended) result code.

    For plugins and the store when they hold a bare code (e.g. from a pragma's result); ``None``
    gives UNKNOWN. ``message`` is kept as given, cut to 200 characters.
    """
    if code is None:
        return Classification(kind=ErrorKind.UNKNOWN, message=message[:_MESSAGE_LIMIT], source=source)
    return _verdict(code & 0xFF, code, code_name(code), message[:_MESSAGE_LIMIT], source)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (``.orig``, ``__cause__``, ``__context__``): breadth-first,
    each exception once, at most ``_MAX_CHAIN`` of them.

    ``__context__`` is followed even when suppressed (``raise ... from None``): display
    preferences do not change which fault happened.
    """
    queue = [exc]
    seen = {id(exc)}
    i = 0
    while i < len(queue) and i < _MAX_CHAIN:
        current = queue[i]
        i += 1
        yield current
        for nxt in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(nxt, BaseException) and id(nxt) not in seen:
                seen.add(id(nxt))
                queue.append(nxt)


def _apsw_error_type() -> type | None:
    """``apsw.Error`` if apsw is loaded; never imports it (no apsw error exists otherwise)."""
    apsw = sys.modules.get("apsw")
    return getattr(apsw, "Error", None) if apsw is not None else None


def _code_of(exc: BaseException, apsw_error: type | None) -> int | None:
    """The (extended) SQLite code an exception carries, or None.

    sqlite3 (and API-compatible builds such as pysqlite3) set ``sqlite_errorcode``, already
    extended; apsw sets ``extendedresult`` and ``result``. Non-positive codes are not errors.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None and apsw_error is not None and isinstance(exc, apsw_error):
        code = getattr(exc, "extendedresult", None)
        if not isinstance(code, int) or code <= 0:
            code = getattr(exc, "result", None)
    if isinstance(code, int) and not isinstance(code, bool) and code > 0:
        return code
    return None


def _text(exc: BaseException) -> str:
    """``str(exc)``, or the type's name when its ``__str__`` fails: classifying never raises."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the original error
        return type(exc).__name__


def _is_symptom(exc: BaseException, code: int | None) -> bool:
    """True for an error that only reports the aftermath of an earlier one."""
    if code in _SYMPTOM_CODES:
        return True
    text = _text(exc).lower()
    return any(phrase in text for phrase in _SYMPTOM_PHRASES)


def _is_database_error(exc: BaseException, apsw_error: type | None) -> bool:
    """Whether an exception's text may be read as SQLite's (see the module docstring)."""
    if isinstance(exc, (sqlite3.Error, peewee.PeeweeException)):
        return True
    return apsw_error is not None and isinstance(exc, apsw_error)


def _code_from_text(text: str) -> int | None:
    lowered = text.lower()
    for phrase, code in MESSAGE_CODES:
        if phrase in lowered:
            return code
    return None


class _Walk(NamedTuple):
    """What one walk of an exception chain found."""

    chain: list[BaseException]
    found: BaseException | None  # the driver error (see driver_error)
    code: int | None  # its extended code
    symptom: bool  # found is only a symptom (nothing better had a code)
    decided: Classification | None  # from the first StoreError that carries one


def _walk(exc: BaseException) -> _Walk:
    """Walk the chain once; pick the first coded non-symptom, else the first coded symptom."""
    apsw_error = _apsw_error_type()
    chain: list[BaseException] = []
    found: BaseException | None = None
    found_code: int | None = None
    symptom: tuple[BaseException, int] | None = None
    decided: Classification | None = None
    for current in _chain(exc):
        chain.append(current)
        if decided is None and isinstance(current, StoreError):
            decided = current.classification
        if found is not None:
            continue
        code = _code_of(current, apsw_error)
        if code is None:
            continue
        if not _is_symptom(current, code):
            found, found_code = current, code
        elif symptom is None:
            symptom = (current, code)
    if found is None and symptom is not None:
        return _Walk(chain, symptom[0], symptom[1], True, decided)
    return _Walk(chain, found, found_code, False, decided)


def driver_error(exc: BaseException) -> BaseException | None:
    """The driver exception behind ``exc`` that carries a SQLite code, or None.

    Walks ``.orig``, ``__cause__`` and ``__context__`` breadth-first (cycle-safe, bounded) and
    returns the first ``sqlite3.Error`` with ``sqlite_errorcode`` or apsw error with a result
    code, looking past symptoms ("cannot rollback/commit - no transaction is active",
    ABORT_ROLLBACK) when an error with a code caused them.
    """
    return _walk(exc).found


def _codes(walk: _Walk, exc: BaseException) -> tuple[int | None, int | None, str, str]:
    if walk.found is not None and walk.code is not None and not walk.symptom:
        return walk.code & 0xFF, walk.code, code_name(walk.code), _text(walk.found)[:_MESSAGE_LIMIT]
    # No real code: read SQLite's text on database exceptions, symptoms excepted.
    apsw_error = _apsw_error_type()
    for current in walk.chain:
        if _is_database_error(current, apsw_error) and not _is_symptom(current, None):
            text = _text(current)
            code = _code_from_text(text)
            if code is not None:
                logger.debug("no result code on %s; classified by its message as %s", type(current).__name__, code)
                return code, None, SQLITE_CODES[code], text[:_MESSAGE_LIMIT]
    if walk.found is not None and walk.code is not None:  # only a symptom: report it as it is
        return walk.code & 0xFF, walk.code, code_name(walk.code), _text(walk.found)[:_MESSAGE_LIMIT]
    return None, None, "", _text(exc)[:_MESSAGE_LIMIT]


def error_codes(exc: BaseException) -> tuple[int | None, int | None, str, str]:
    """``(primary, extended, name, message)`` of the error behind ``exc``.

    Codes come from :func:`driver_error`. Without one, the message of a database exception in
    the chain is matched against :data:`MESSAGE_CODES`: primary code and name, extended None.
    Otherwise ``(None, None, "", str(exc)[:200])``. The message is the driver's (never the
    SQL or its parameters), cut to 200 characters.
    """
    return _codes(_walk(exc), exc)


def classify_exception(exc: BaseException) -> Classification:
    """The core's verdict on ``exc`` (``source="core"``).

    A :class:`~corestore.errors.StoreError` in the chain that already carries a classification
    wins (it was decided before, possibly by a plugin). Otherwise the code of the driver error
    decides (:func:`kind_for_code`); with no code and no recognisable text the kind is UNKNOWN.
    """
    walk = _walk(exc)
    if walk.decided is not None:
        return walk.decided
    primary, extended, name, message = _codes(walk, exc)
    if primary is None:
        return Classification(kind=ErrorKind.UNKNOWN, message=message)
    return _verdict(primary, extended, name, message, "core")


class CoreClassifier:
    """The built-in ``classify_error`` implementation: SQLite codes, asked after every plugin."""

    name = "core"

    @hookimpl(trylast=True)
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Classification:
        """Classify ``error`` by the store's engine's table (this one on SQLite); never None."""
        backend = getattr(store, "backend", None)
        return classify_exception(error) if backend is None else backend.classify_exception(error)
