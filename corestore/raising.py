"""From a database error to the exception the caller sees, and the fault it counts.

Every path of the store that catches a driver error ends here: :func:`failed` asks the
``classify_error`` hook for a verdict (:func:`classify`), builds the :class:`~corestore.StoreError`
subclass for its kind with a message that says what happened, to which file, whether it was
committed and what to do next (:func:`exception_for`), and applies the verdict: count the fault,
reopen when it says so, tell ``on_fatal`` (:func:`note_fault`).

The functions take the store as their first argument; they are the store's own machinery (used by
:mod:`corestore.transaction` and :mod:`corestore.store`), not an API for plugins. Which exception
types are database errors at all is the backend's business (:mod:`corestore.backends`).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import peewee

from .backends.postgresql import is_driver_error as is_pg_driver_error
from .backends.sqlite import is_driver_error
from .classify import driver_error, error_codes
from .classify_pg import ADVICE_PG, pg_error
from .errors import (
    BusyError,
    Classification,
    ConstraintError,
    CorruptionError,
    ErrorKind,
    FatalError,
    InvariantViolation,
    QueryError,
    ReadOnlyError,
    StoreError,
    TransientError,
)
from .operation import Operation
from .readonly import readonly_wal_problem
from .redact import redact_text

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = [
    "commit_failed",
    "EXCEPTION_FOR_KIND",
    "ADVICE",
    "is_db_error",
    "is_peewee_own",
    "classify",
    "exception_for",
    "failed",
    "note_fault",
    "fire_on_fatal",
    "write_in_read",
    "translate_in_transaction",
    "translate_open_error",
]

logger = logging.getLogger(__name__)

#: The exception a caller sees for each kind of error.
EXCEPTION_FOR_KIND: dict[ErrorKind, type[StoreError]] = {
    ErrorKind.BUSY: BusyError,
    ErrorKind.TRANSIENT_IO: TransientError,
    ErrorKind.FATAL_IO: FatalError,
    ErrorKind.FULL: FatalError,
    ErrorKind.READONLY: FatalError,
    ErrorKind.ENVIRONMENT: FatalError,
    ErrorKind.CORRUPT: CorruptionError,
    ErrorKind.CONSTRAINT: ConstraintError,
    ErrorKind.PROGRAMMING: QueryError,
    ErrorKind.INVARIANT: InvariantViolation,
    ErrorKind.UNKNOWN: StoreError,
}

#: What to do next, per kind: the last part of every message.
ADVICE: dict[ErrorKind, str] = {
    ErrorKind.BUSY: "another connection held the lock past the busy timeout; retry later or use store.run()",
    ErrorKind.TRANSIENT_IO: "a transient storage fault; store.run() retries it within the profile's budget",
    ErrorKind.FATAL_IO: "the disk reported an I/O error; check the device and the kernel log (`corestore doctor PATH`)",
    ErrorKind.CORRUPT: "the file is damaged; stop writing, keep the -wal and -shm files, run `corestore doctor PATH`",
    ErrorKind.FULL: "the disk is full; free space, then retry",
    ErrorKind.READONLY: "the file or its directory is not writable by this process",
    ErrorKind.ENVIRONMENT: "the environment refuses this database (permissions, missing directory, file system)",
    ErrorKind.CONSTRAINT: "the data broke a constraint",
    ErrorKind.PROGRAMMING: "the statement is wrong (syntax, missing table, misuse)",
    ErrorKind.INVARIANT: "a post-commit invariant failed; the data IS committed, do not retry",
    ErrorKind.UNKNOWN: "an unexpected database error",
}

_PEEWEE_ERRORS: tuple[type[BaseException], ...] = (peewee.DatabaseError, peewee.InterfaceError)


def is_db_error(err: BaseException) -> bool:
    """True for an error from the database (the driver's or peewee's), False for the caller's own."""
    if isinstance(err, _PEEWEE_ERRORS) or is_driver_error(err) or is_pg_driver_error(err):
        return True
    return driver_error(err) is not None or pg_error(err) is not None


def is_peewee_own(err: BaseException) -> bool:
    """An error peewee raised itself (no driver error behind it: "Attempting to close database
    while transaction is open", "Connection already opened"): it reaches the caller unchanged."""
    return isinstance(err, peewee.PeeweeException) and not isinstance(err, StoreError) and driver_error(err) is None


def classify(store: Store, err: BaseException, op: Operation | None) -> Classification:
    """The verdict on ``err``: its own classification if it has one, else the ``classify_error`` hook's."""
    if isinstance(err, StoreError) and err.classification is not None:
        return err.classification
    return store.hooks.classify_error(store, err, op)


def note_fault(store: Store, c: Classification, op: Operation | None, err: BaseException, *, report: bool) -> None:
    """Apply the verdict ``c``: count a fault, reopen when asked, tell ``on_fatal`` (``report``)."""
    if c.is_fault:
        with store._stats_lock:
            store._stats["faults"] += 1
            store._faults_by_kind[c.kind.name] = store._faults_by_kind.get(c.kind.name, 0) + 1
        store._last_fault = (time.time(), c)
    if c.reopen:
        store.invalidate()
    if report and c.is_fault:
        fire_on_fatal(store, err, c, op)


def fire_on_fatal(store: Store, err: BaseException, c: Classification, op: Operation | None) -> None:
    """``on_fatal`` on the failing caller's thread: a ``health()`` called from inside it (a
    plugin escalating) never runs the database probe (site/plugins/health.md)."""
    scope = store._fault_scope
    scope.depth = getattr(scope, "depth", 0) + 1
    try:
        store.hooks.on_fatal(store, err, c, op)
    finally:
        scope.depth -= 1


def failed(store: Store, err: BaseException, op: Operation | None, *, committed: bool | None, report: bool,
           classification: Classification | None = None) -> BaseException:
    """Classify ``err``, apply the verdict (reopen, ``on_fatal``), return what to raise."""
    if isinstance(err, StoreError) and err.classification is not None and classification is None:
        if committed is None and err.committed is not None:
            err.committed = None
        note_fault(store, err.classification, op, err, report=report)
        return err
    c = classification or classify(store, err, op)
    exc = exception_for(store, err, c, committed)
    note_fault(store, c, op, exc, report=report)
    return exc


def exception_for(store: Store, err: BaseException, c: Classification, committed: bool | None) -> StoreError:
    """The caller's exception for ``err`` classified as ``c``: what, to which file, committed or not, what next."""
    cls = EXCEPTION_FOR_KIND.get(c.kind, StoreError)
    what = c.name or c.kind.name
    state = {True: "committed", False: "not committed", None: "outcome UNKNOWN (the COMMIT itself failed)"}[committed]
    advice = (ADVICE_PG.get(c.kind) if store.profile.url else None) or ADVICE.get(c.kind, "")
    message = f"{store.path}: {what}: {c.message or redact_text(str(err))}; {state}; {advice}"
    if cls is InvariantViolation:
        return InvariantViolation(message, classification=c, path=store.path)
    return cls(message, classification=c, committed=committed, path=store.path)


def write_in_read(store: Store, err: BaseException) -> ReadOnlyError | None:
    """A ReadOnlyError if ``err`` is SQLite refusing a change because a read scope of this
    thread's transaction has ``query_only`` on; None otherwise."""
    active = store.database._active()
    if active is None or not active.qo:
        return None
    if not store.backend.is_write_refused(err):
        return None
    primary, extended, _name, message = error_codes(err)
    c = store.backend.classify_exception(err)
    if c.sqlstate is not None:
        primary, extended, message = None, None, c.message
    return ReadOnlyError(
        f"{store.path}: a statement inside read() tried to modify the database ({message}); read() and "
        "run(read=True) are read-only and nothing was written. Write inside store.transaction() or run(fn)",
        classification=Classification(kind=ErrorKind.PROGRAMMING, code=primary, extended_code=extended,
                                      name="WRITE_IN_READ", message=message, sqlstate=c.sqlstate),
        committed=False, path=store.path,
    )


def translate_in_transaction(store: Store, err: BaseException) -> BaseException:
    """A statement failed inside this thread's store transaction: the exception to raise (not
    yet a fault: the transaction's end applies the verdict)."""
    if not is_db_error(err) or isinstance(err, StoreError):
        return err
    refused = write_in_read(store, err)
    if refused is not None:
        return refused
    active = store.database._active()
    op = active.op if active is not None else None
    c = classify(store, err, op)
    return exception_for(store, err, c, committed=False)


def translate_open_error(store: Store, err: BaseException) -> BaseException:
    """Opening a connection failed: the exception to raise (not a database: ``CorruptionError``;
    a read-only profile on a WAL file it cannot read: ``FatalError`` naming why)."""
    if isinstance(err, StoreError) or not is_db_error(err):
        return err
    c = classify(store, err, Operation(kind="open"))
    if c.extended_code == 26 or c.code == 26:
        return CorruptionError(
            f"{store.path}: not a SQLite database (SQLITE_NOTADB: {c.message}); corestore will not touch it. "
            "Check the path; `corestore doctor PATH` shows what the file is.",
            classification=c, committed=False, path=store.path,
        )
    if store.profile.read_only and not store.memory and not store.profile.url:
        problem = readonly_wal_problem(store.path)
        if problem is not None:
            return FatalError(f"{store.path}: {c.name or c.kind.name}: {problem}", classification=c,
                              committed=False, path=store.path)
    if c.reopen:
        store.invalidate()
    return exception_for(store, err, c, committed=False)


def commit_failed(store: Store, txn: Any, conn: Any, err: BaseException) -> BaseException:
    """What to raise when the COMMIT statement itself failed. The backend's commit rule decides
    (SQLite: ``committed=None``, unknown, since the frames may have reached ``-wal``;
    PostgreSQL: ``False`` for a server error in reply, ``None`` for a lost connection or
    ``08007``); a connection still inside its transaction committed nothing either way
    (``committed=False``; it is rolled back)."""
    committed = store.backend.commit_outcome(conn, err, store._in_txn)
    if store._in_txn(conn):  # still inside: nothing was committed; roll it back
        committed = False
        try:
            conn.execute("ROLLBACK")
        except Exception:
            logger.debug("%s: ROLLBACK after a failed COMMIT failed", store.path, exc_info=True)
    store._clear_callbacks()
    if committed is None:
        with store._stats_lock:
            store._stats["uncertain_commits"] += 1
    return failed(store, err, txn.op, committed=committed, report=txn.report)
