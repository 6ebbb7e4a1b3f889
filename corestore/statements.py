"""Work outside any transaction: one autocommit statement as an operation of its own
(:func:`autocommit`, what ``execute_sql`` does with no store transaction on the thread), and a
function run on the thread's bare connection (:func:`with_connection`: checkpoint, backup, the
health probe). Each still passes through ``before_operation``, classification and ``on_fatal``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import Classification, ErrorKind, QueryError, ReadOnlyError, StoreClosedError, StoreError
from .operation import Operation, new_operation
from .raising import classify, failed, is_db_error, note_fault
from .transaction import after_commit, commit_invariants, set_query_only

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = ["autocommit", "with_connection", "acquire_for"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def with_connection(store: Store, kind: str, fn: Callable[[Any], T], *, name: str | None = None) -> T:
    """Run ``fn(conn)`` on this thread's connection outside any transaction, as an operation."""
    if store.database.in_transaction() or store.database._active() is not None:
        raise QueryError(f"{store.path}: {name or kind} cannot run inside a transaction",
                         classification=Classification(kind=ErrorKind.PROGRAMMING, name="IN_TRANSACTION"), path=store.path)
    op = Operation(kind=kind, name=name)
    error: BaseException | None = None
    try:
        store.hooks.before_operation(store, op)
        record = acquire_for(store, op, True)
        try:
            if record.query_only:
                set_query_only(store, record, False)
            return fn(record.conn)
        except Exception as err:
            raise failed(store, err, op, committed=False, report=True) from err
        finally:
            store.database.release(record)
    except BaseException as err:
        error = err
        raise
    finally:
        store.hooks.after_operation(store, op, error)
        error = None  # no reference cycle through the traceback



def autocommit(store: Store, execute: Callable[..., Any], sql: str, params: Any, is_read: bool,
                args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    if store._closed and not store._draining:
        raise StoreClosedError(f"{store.path}: the store was closed", path=store.path)
    if not is_read and store.profile.read_only:
        raise ReadOnlyError(
            f"{store.path}: profile {store.profile.name!r} is read-only; the statement was refused before reaching SQLite",
            classification=Classification(kind=ErrorKind.READONLY, name="READ_ONLY_PROFILE"), path=store.path,
        )
    hooks = store.hooks
    op = None
    if hooks.needs_operation:
        op = new_operation("read" if is_read else "write", "statement")
    error: BaseException | None = None
    try:
        if hooks.has_before_operation:
            hooks.before_operation(store, op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered
        db = store.database
        record = acquire_for(store, op, True)
        record.cursor_out = is_read  # the caller may go on fetching after the release
        try:
            if record.query_only:  # left on by a read transaction: this statement may write
                set_query_only(store, record, False)
            cursor = execute(sql, params, *args, **kwargs)
        except Exception as err:
            if not is_db_error(err):
                raise
            c = classify(store, err, op)
            committed: bool | None = False
            if not is_read and c.kind in (ErrorKind.FATAL_IO, ErrorKind.TRANSIENT_IO, ErrorKind.CORRUPT):
                committed = None  # the implicit COMMIT may or may not have reached the disk
            raise failed(store, err, op, committed=committed, report=True, classification=c) from err
        else:
            checked = None if is_read else commit_invariants(store, record.conn, op)
        finally:
            db.release(record)  # after the invariants: they run statements on this connection
        with store._stats_lock:
            store._stats["statements"] += 1
        if not is_read:
            after_commit(store, checked, op)
        elif hooks.has_on_success:
            hooks.on_success(store, op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered
        return cursor
    except BaseException as err:
        error = err
        raise
    finally:
        hooks.after_operation(store, op, error)
        error = None  # no reference cycle through the traceback


def acquire_for(store: Store, op: Operation | None, report: bool) -> Any:
    """This thread's connection for ``op``. Failing to open it is the operation's outcome:
    a fault is counted and reported (``on_fatal``, so the circuit breaker sees CANTOPEN)."""
    try:
        return store.database.acquire()
    except StoreError as err:
        if err.classification is not None:
            note_fault(store, err.classification, op, err, report=report)
        raise
