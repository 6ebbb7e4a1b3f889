"""Transactions: how the store begins, ends, commits and retries units of work.

A store transaction (:class:`_Txn`, returned by ``store.transaction()`` and ``store.read()``) and
peewee's own ``db.transaction()`` through the store (:class:`_DbTxn`) are pushed onto peewee's
transaction stack, so an inner ``db.atomic()`` becomes a savepoint. The functions below are the
machinery behind them; each takes the store first: beginning (policies, the thread's connection,
``BEGIN``), ending (``COMMIT`` or ``ROLLBACK``, the truthful ``committed`` outcome, post-commit
invariants, ``on_success``), peewee's ``begin()``/``commit()``/``rollback()`` on a store
transaction (in :mod:`corestore.peeweetxn`), and :func:`run` with its retry rules
(:func:`may_retry`). Statements outside any transaction are in :mod:`corestore.statements`.

Truthful outcomes: on IOERR and FULL SQLite has already rolled back, so ROLLBACK is issued only
when the connection is still in a transaction (a failing ROLLBACK never masks the real error).
An error from the COMMIT statement leaves the outcome unknown (``committed=None``) unless the
connection is visibly still inside its transaction (then nothing was committed: it is rolled back
and ``committed=False``). After a successful COMMIT nothing surfaces as a retryable error, and
:func:`run` never retries a unit whose COMMIT was issued unless it is ``idempotent``.

This module, like :mod:`corestore.raising`, is the store's own: it reads and updates the store's
counters and state directly. It is not an API for plugins.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import peewee

from .errors import (
    Classification,
    ErrorKind,
    InvariantViolation,
    QueryError,
    ReadOnlyError,
    StoreClosedError,
    StoreError,
)
from .operation import Operation, Violation, new_operation
from .raising import (
    commit_failed,
    failed,
    fire_on_fatal,
    is_db_error,
    is_peewee_own,
    note_fault,
    write_in_read,
)

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = [
    "run",
    "may_retry",
    "lock_name",
    "begin_txn",
    "end_txn",
    "set_query_only",
    "finish",
    "commit_invariants",
    "after_commit",
    "noop",
    "BEGIN",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BEGIN = {None: "BEGIN", "": "BEGIN", "IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED",
          "EXCLUSIVE": "BEGIN EXCLUSIVE"}


def noop() -> None:
    """Stands in for peewee's commit callbacks on a peewee without them (3.17)."""
    return None


#: peewee >= 4: ``_savepoint.rollback(begin=True)`` (3.17: ``rollback()``, and it stays open)
_SAVEPOINT_ROLLBACK_BEGINS = "begin" in peewee._savepoint.rollback.__code__.co_varnames


class _Txn:
    """A store transaction (write: ``BEGIN IMMEDIATE`` unless told; read: ``BEGIN DEFERRED``).

    Pushed onto peewee's transaction stack, so an inner ``db.atomic()`` becomes a savepoint.
    While it holds the thread's connection it is that record's ``active``. ``qo`` counts
    the read scopes open on it (while above 0 the connection has ``PRAGMA query_only`` on, and
    SQLite's refusal to write is a caller's ``ReadOnlyError``); ``direct``
    marks the transaction a bare ``db.begin()`` opened (not on peewee's stack; it ends at
    ``db.commit()`` / ``db.rollback()``); ``peewee`` marks :class:`_DbTxn`.
    """

    __slots__ = ("store", "kind", "lock_type", "name", "op", "record", "nested", "report", "_savepoint", "result",
                 "qo", "direct", "peewee", "gate")

    def __init__(self, store: Store, kind: str, lock_type: str | None = None, name: str | None = None,
                 op: Operation | None = None, report: bool = True) -> None:
        # (positional on the hot path: a call with keywords builds a dict, ~600 instructions)
        self.store = store
        self.kind = kind
        self.lock_type = lock_type
        self.name = name
        self.op = op
        self.record: Any = None
        self.nested = False
        self.report = report
        self._savepoint: Any = None
        self.result: Any = None
        self.qo = 0
        self.direct = False
        self.peewee = False
        self.gate: Any = None  # an arun() unit's cancellation gate (corestore.aio), checked per statement

    # peewee's transaction API, for code that calls txn.commit()/rollback() inside the block
    def commit(self, begin: bool = True) -> None:
        commit_inside(self.store, self, begin)

    def rollback(self, begin: bool = True) -> None:
        rollback_inside(self.store, self, begin)

    def __enter__(self) -> _Txn:
        try:
            return begin_txn(self.store, self)
        except BaseException as err:
            if self.report and self.op is not None and not self.nested:
                self.store.hooks.after_operation(self.store, self.op, err)
            raise

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        # run() reports its own attempts (report=False); no try/finally: the success path stays
        # as short as it was before after_operation had an outcome
        try:
            result = end_txn(self.store, self, exc)
        except BaseException as err:
            if self.report and self.op is not None and not self.nested:
                self.store.hooks.after_operation(self.store, self.op, err)
            raise
        if self.report and self.op is not None and not self.nested:
            self.store.hooks.after_operation(self.store, self.op, exc)
        return result

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:  # decorator use, like peewee
        import functools

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T:
            with _Txn(self.store, self.kind, lock_type=self.lock_type, name=self.name):
                return fn(*args, **kwargs)
            return cast(T, None)  # as before: only if __exit__ swallowed the error (it never does)

        return inner


def run(store: Store, fn: Callable[[], T], *, read: bool = False, deadline_s: float | None = None,
        idempotent: bool = False, name: str | None = None, gate: Any = None) -> T:
    """``store.run()``: ``fn()`` inside ``store.transaction()`` (``read=True``: ``store.read()``),
    retried as a whole by policy: BUSY and TRANSIENT_IO within the profile's retry budget and
    ``deadline_s`` (whichever is shorter), FATAL_IO only when the profile's
    ``retry.fatal_attempts`` allows (after a reopen). Once COMMIT was issued nothing is
    retried unless ``idempotent=True``. ``on_fatal`` hears about the final failure only: a
    run is one outcome, however many attempts it took.

    ``gate`` (``store.arun()``, :mod:`corestore.aio`): checked when each attempt starts, before
    each statement and, last, before COMMIT (``gate.commit()``: after it the unit can no longer
    be stopped); whatever it raises rolls the attempt back and is never retried.
    """
    policy = store.profile.retry
    started = time.monotonic()
    budget = policy.budget_s if deadline_s is None else min(policy.budget_s, deadline_s)
    deadline = started + budget
    attempts: dict[ErrorKind, int] = {}
    attempt = 0
    kind = "read" if read else "write"
    while True:
        attempt += 1
        op = new_operation(kind, name, attempt,  # started: now, this attempt's start
                           None if deadline_s is None else started + deadline_s)
        txn = _Txn(store, kind, "DEFERRED" if read else "IMMEDIATE", name, op, False)
        error: BaseException | None = None
        delay: float | None = None
        try:
            with txn:
                if gate is not None:
                    gate.start(txn)
                result = fn()
                txn.result = result
                if gate is not None:
                    gate.commit()
            return result
        except InvariantViolation as err:
            error = err
            err.result = txn.result
            raise
        except StoreError as err:
            error = err
            c = err.classification
            if c is None or not may_retry(store, err, c, attempts, policy, deadline, idempotent):
                if c is not None and c.is_fault:
                    fire_on_fatal(store, err, c, op)
                raise
            with store._stats_lock:
                store._stats["retries"] += 1
                if c.kind is ErrorKind.BUSY:
                    store._stats["busy_waits"] += 1
            n = attempts[c.kind]
            delay = min(policy.max_delay_s, policy.base_delay_s * (2 ** (n - 1)))
            delay = random.uniform(delay / 2, delay)
        except BaseException as err:
            error = err
            raise
        finally:
            store.hooks.after_operation(store, op, error, delay is not None)
            error = None  # no reference cycle through the traceback
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))


def may_retry(store: Store, err: StoreError, c: Classification, attempts: dict[ErrorKind, int], policy: Any,
               deadline: float, idempotent: bool) -> bool:
    if err.committed is True or (err.committed is None and not idempotent):
        return False  # COMMIT was issued: never retried unless the caller said it is safe
    limit = {ErrorKind.BUSY: policy.busy_attempts, ErrorKind.TRANSIENT_IO: policy.transient_attempts,
             ErrorKind.FATAL_IO: policy.fatal_attempts}.get(c.kind, 0)
    if c.kind is not ErrorKind.FATAL_IO and not c.retryable:
        return False
    attempts[c.kind] = attempts.get(c.kind, 0) + 1
    return attempts[c.kind] < limit and time.monotonic() < deadline


# -- transactions (internal) ---------------------------------------------------------------


def lock_name(store: Store, lock_type: Any) -> str | None:
    if lock_type not in BEGIN:
        upper = str(lock_type).upper()
        if upper not in BEGIN:
            raise QueryError(
                f"{store.path}: lock type {lock_type!r} is not allowed; allowed: DEFERRED, IMMEDIATE, EXCLUSIVE",
                classification=Classification(kind=ErrorKind.PROGRAMMING, name="BAD_LOCK_TYPE"), path=store.path,
            )
        return upper
    return lock_type  # type: ignore[no-any-return]


def begin_txn(store: Store, txn: _Txn) -> _Txn:
    db = store.database
    state = db._state
    record = state.record  # the one thread-local lookup of the hot path (~500 instructions each)
    if not txn.direct and (record.stack if record is not None else state.transactions):
        return begin_nested(store, txn)
    if store._closed and not store._draining:
        raise StoreClosedError(f"{store.path}: the store was closed", path=store.path)
    if txn.kind == "write" and store.profile.read_only:
        raise ReadOnlyError(
            f"{store.path}: profile {store.profile.name!r} is read-only; writes are refused before reaching SQLite",
            classification=Classification(kind=ErrorKind.READONLY, name="READ_ONLY_PROFILE"),
            path=store.path,
        )
    hooks = store.hooks
    if txn.op is None and hooks.needs_operation:  # some implementation asks for it
        txn.op = new_operation(txn.kind, txn.name)
    if hooks.has_before_operation:
        hooks.before_operation(store, txn.op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered
    try:  # statements.acquire_for(store, txn.op, txn.report), inlined: the hot path
        record = db.acquire_from(state, record)
    except StoreError as err:
        if err.classification is not None:
            note_fault(store, err.classification, txn.op, err, report=txn.report)
        raise
    txn.record = record
    record.active = txn
    try:
        if txn.kind == "read":  # a read cannot write: SQLite refuses any change while query_only is on
            if not record.query_only:
                set_query_only(store, record, True)
            txn.qo = 1
        elif record.query_only:  # the connection's last transaction was a read
            set_query_only(store, record, False)
        if txn.peewee:
            db.begin(txn.lock_type)  # peewee's call sequence: _transaction.__enter__ -> db.begin()
        else:
            record.cur.execute((store._begin_read if txn.kind == "read" else store._begin_write)[txn.lock_type])
    except BaseException as err:
        txn.record = None
        record.active = None
        txn.qo = 0  # query_only may stay on: every write path switches it off first
        db.release(record)
        if not isinstance(err, Exception) or not is_db_error(err):
            raise
        raise failed(store, err, txn.op, committed=False, report=txn.report) from err
    if not txn.direct:
        record.stack.append(txn)  # db.push_transaction(txn): the record's stack is this thread's (no lookup)
    return txn


def begin_nested(store: Store, txn: _Txn) -> _Txn:
    """``txn`` entered inside another transaction of this thread: a savepoint of it."""
    db = store.database
    top = db.top_transaction()
    if isinstance(top, peewee._manual):
        raise ValueError("Cannot enter atomic commit block while in manual commit mode.")  # peewee's error
    if txn.kind == "write" and isinstance(top, _Txn) and top.kind == "read":
        raise QueryError(
            f"{store.path}: transaction() inside read(): a read transaction cannot write; "
            "open the write transaction outside the read",
            classification=Classification(kind=ErrorKind.PROGRAMMING, name="WRITE_IN_READ"),
            path=store.path,
        )
    txn.nested = True
    txn._savepoint = db.savepoint()
    txn._savepoint.__enter__()
    active = db._active()
    if txn.kind == "read" and active is not None:  # read() nested in a write: read-only while it lasts
        if not active.record.query_only:
            set_query_only(store, active.record, True)
        active.qo += 1
    return txn


def set_query_only(store: Store, record: Any, on: bool) -> None:
    """Switch ``PRAGMA query_only`` on ``record``'s connection.

    It stays on after a read transaction (switching it costs a statement and makes SQLite
    re-prepare the connection's cached statements), and every path that may write on the
    connection switches it off first: a write transaction, an autocommit statement,
    checkpoint/backup, and the application's own ``db.connection()`` / ``db.cursor()``
    outside a store transaction. A connection that cannot be switched off is dropped at
    release (never left read-only for a write). On an engine whose read transactions are
    read-only by their BEGIN (PostgreSQL: ``READ ONLY``) only the record's flag changes."""
    sql = store._query_only_sql
    if sql is None:
        record.query_only = on
        return
    try:
        record.conn.execute(sql[1] if on else sql[0])
    except Exception:
        if on:
            raise
        logger.warning("%s: could not switch query_only off; the connection is dropped", store.path, exc_info=True)
        record.doomed = True
        return
    record.query_only = on


def leave_query_only(store: Store, txn: _Txn, record: Any) -> None:
    """``txn`` ends with a read scope still open on a write (an error unwound it): switch
    ``query_only`` off."""
    if txn.qo:
        txn.qo = 0
        if record.query_only:
            set_query_only(store, record, False)


def end_txn(store: Store, txn: _Txn, exc: BaseException | None) -> bool:
    if txn.nested:
        try:
            return bool(txn._savepoint.__exit__(type(exc) if exc else None, exc, None))
        finally:
            active = store.database._active()
            if txn.kind == "read" and active is not None and active.qo:
                active.qo -= 1
                if not active.qo and active.kind != "read":  # back in the write: writable again
                    set_query_only(store, active.record, False)
    db = store.database
    hooks = store.hooks
    record = txn.record
    conn = record.conn
    record.stack.pop()  # db.pop_transaction(), without a thread-local lookup
    callbacks = record.callbacks  # peewee's commit callbacks of this thread (peewee >= 4)
    try:
        if exc is not None:
            if store._in_txn(conn):
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # the real error is `exc`; never mask it
                    logger.debug("%s: ROLLBACK after an error failed", store.path, exc_info=True)
            store._clear_callbacks()
            with store._stats_lock:
                store._stats["rollbacks"] += 1
            if not is_db_error(exc) or is_peewee_own(exc):
                return False  # the caller's own exception (or peewee's own error) propagates untouched
            if isinstance(exc, StoreError) and exc.classification is not None:
                note_fault(store, exc.classification, txn.op, exc, report=txn.report)
                return False
            refused = write_in_read(store, exc)
            if refused is not None:  # a raw cursor's write inside read(): a caller error, not a fault
                raise refused from exc
            raise failed(store, exc, txn.op, committed=False, report=txn.report) from exc
        try:
            record.cur.execute("COMMIT")
        except Exception as err:
            raise commit_failed(store, txn, conn, err) from err
        # (commit_invariants, inlined: no call at all on the hot path when nobody checks)
        checked = (hooks.on_commit_invariant(store, conn, txn.op)  # type: ignore[arg-type]  # set with the hook
                   if txn.kind == "write" and hooks.has_on_commit_invariant else None)
    finally:
        record.active = None
        if txn.qo:
            if txn.kind == "read":
                txn.qo = 0  # query_only stays on for the next read (see set_query_only)
            else:
                leave_query_only(store, txn, record)
        db.release(record)  # only now may close()/invalidate() close the connection
    with store._stats_lock:
        store._stats["reads" if txn.kind == "read" else "transactions"] += 1
    if callbacks:
        store._run_callbacks()
    if checked is not None and checked[0]:  # after_commit(), inlined: violations first, then on_success
        report_violations(store, checked[0], txn.op, checked[1])
    if hooks.has_on_success:
        hooks.on_success(store, txn.op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered
    return False


def commit_invariants(store: Store, conn: Any, op: Operation | None) -> tuple[list[Violation], bool] | None:
    """Run ``on_commit_invariant`` on ``conn``. Called while the caller still holds the
    connection's record (busy): a check runs statements on ``conn``, and a connection closed
    by ``close()``/``invalidate()`` from another thread in the middle of a statement crashes
    the process (the stdlib driver is not safe against a concurrent close)."""
    if store.hooks.has_on_commit_invariant:
        return store.hooks.on_commit_invariant(store, conn, op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered
    return None


def after_commit(store: Store, checked: tuple[list[Violation], bool] | None, op: Operation | None) -> None:
    """After the record is released: report what :func:`commit_invariants` found, then
    ``on_success``."""
    if checked is not None:
        violations, raise_requested = checked
        if violations:
            report_violations(store, violations, op, raise_requested)
    if store.hooks.has_on_success:
        store.hooks.on_success(store, op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered


def report_violations(store: Store, violations: list[Violation], op: Operation | None, raise_it: bool) -> None:
    """Log, count and report (``on_fatal`` with kind INVARIANT) violations found after a
    durable commit; raise ``InvariantViolation(committed=True)`` only when a check asked."""
    text = "; ".join(f"{v.check}: {v.message}" for v in violations)
    with store._stats_lock:
        store._stats["violations"] += len(violations)
    logger.warning("%s: post-commit invariant violated (the data is committed): %s", store.path, text)
    c = Classification(kind=ErrorKind.INVARIANT, name="CORESTORE_INVARIANT", message=text, trips_breaker=True,
                       source=violations[0].check.split(".")[0])
    err = InvariantViolation(f"{store.path}: post-commit invariant violated (the data IS committed; do not retry): {text}",
                             classification=c, violations=tuple(violations), path=store.path)
    note_fault(store, c, op, err, report=True)
    if raise_it:
        raise err


def commit_inside(store: Store, txn: _Txn, begin: bool) -> None:
    """``txn.commit()`` inside a ``store.transaction()`` block: as peewee's, through
    ``db.commit()`` (a real COMMIT: invariants run) and ``db.begin()``; a nested one releases
    its savepoint."""
    if txn.nested:
        txn._savepoint.commit(begin)
        return
    db = store.database
    db.commit()
    store._run_callbacks()
    if begin:
        db.begin(txn.lock_type)


def rollback_inside(store: Store, txn: _Txn, begin: bool) -> None:
    if txn.nested:
        if _SAVEPOINT_ROLLBACK_BEGINS:
            txn._savepoint.rollback(begin)
        else:  # peewee 3.17: ROLLBACK TO leaves the savepoint open; there is no begin argument
            txn._savepoint.rollback()
        return
    db = store.database
    db.rollback()
    store._clear_callbacks()
    if begin:
        db.begin(txn.lock_type)


def finish(store: Store, txn: _Txn, error: BaseException | None = None) -> None:
    """Release the connection ``txn`` holds and end its operation (idempotent); ``error`` is what
    ended it (None: it succeeded), for ``after_operation``'s outcome."""
    record = txn.record
    if record is None:
        return
    txn.record = None
    db = store.database
    if record.active is txn:
        record.active = None
    try:
        leave_query_only(store, txn, record)
        db.release(record)
    finally:
        if txn.report and txn.op is not None:
            store.hooks.after_operation(store, txn.op, error)
