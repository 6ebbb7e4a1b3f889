"""peewee's transaction API on a store: ``db.transaction()`` and ``db.begin()`` / ``db.commit()`` /
``db.rollback()`` / ``db.close()`` while a store transaction holds the thread's connection.

peewee's ``atomic()``, ``savepoint()``, sessions and ``batch_commit()`` call these exactly as on a
plain ``SqliteDatabase`` (see :mod:`corestore.database`); here they run under the store's
policies, with peewee's semantics and call sequence (``site/peewee-compatibility.md``). The
functions take the store first, like those of :mod:`corestore.transaction`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .errors import StoreError
from .raising import commit_failed, failed, is_db_error, is_peewee_own, note_fault, translate_in_transaction
from .transaction import _Txn, after_commit, begin_txn, commit_invariants, finish, lock_name

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = ["db_transaction", "direct_begin", "begin_again", "commit_active", "rollback_active",
           "abandon_direct", "end_db"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _DbTxn(_Txn):
    """peewee's ``db.transaction()`` (and so ``atomic()`` at depth 0, ``session_start()``,
    ``batch_commit()``) through the store, with peewee's semantics and call sequence.

    Entered at depth 0 it is a store write transaction: policies, then BEGIN through
    ``db.begin()``; on exit COMMIT through ``db.commit()`` and ``db._run_commit_callbacks()``
    (ROLLBACK through ``db.rollback()`` on an error), as peewee's ``_transaction`` does. Entered
    inside another transaction it only joins (pushed, nothing issued), as in peewee. Committed or
    rolled back with ``begin=False`` after being popped (``session_commit()``), it ends there.
    """

    __slots__ = ("_args", "exiting")

    def __init__(self, store: Store, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        lock = args[0] if args else kwargs.get("lock_type")
        super().__init__(store, "write", lock_type=lock_name(store, lock), name="transaction")
        self._args = (args, dict(kwargs))
        self.peewee = True
        self.exiting = False

    def __enter__(self) -> _DbTxn:
        db = self.store.database
        if db.transaction_depth() == 0:
            return super().__enter__()  # type: ignore[return-value]
        db.push_transaction(self)  # peewee: a nested transaction() only joins the open one
        self.nested = True
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self.nested:
            self.store.database.pop_transaction()
            return False
        return end_db(self.store, self, exc)

    def _ends_here(self, begin: bool) -> bool:
        return (not begin and not self.exiting and self.record is not None
                and self not in self.store.database._state.transactions)

    def commit(self, begin: bool = True) -> None:
        self._end_inside(self.store.database.commit, self.store._run_callbacks, begin)

    def rollback(self, begin: bool = True) -> None:
        self._end_inside(self.store.database.rollback, self.store._clear_callbacks, begin)

    def _end_inside(self, end: Callable[[], Any], callbacks: Callable[[], None], begin: bool) -> None:
        """peewee's ``commit()``/``rollback()`` on this transaction: through ``db.commit()`` /
        ``db.rollback()`` (wrappers see them), then peewee's callbacks, then BEGIN again when asked;
        the transaction's operation ends here when this was its last word."""
        ends = self._ends_here(begin)
        error: BaseException | None = None
        try:
            end()
            callbacks()
            if begin:
                self.store.database.begin(self.lock_type)
        except BaseException as err:
            error = err
            raise
        finally:
            if ends:
                finish(self.store, self, error)
            error = None  # no reference cycle through the traceback

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:  # a fresh transaction per call, as peewee
        import functools

        args, kwargs = self._args

        @functools.wraps(fn)
        def inner(*a: Any, **k: Any) -> T:
            with _DbTxn(self.store, args, kwargs):
                return fn(*a, **k)
            return cast(T, None)  # as before: only if __exit__ swallowed the error (it never does)

        return inner


def db_transaction(store: Store, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _DbTxn:
    """peewee's ``db.transaction(*args, **kwargs)`` on the store's database."""
    return _DbTxn(store, args, kwargs)


def direct_begin(store: Store, lock_type: str | None) -> None:
    """``db.begin()`` with no store transaction on the thread: a store write transaction
    (policies, the connection held) that ends at ``db.commit()`` or ``db.rollback()``."""
    txn = _Txn(store, "write", lock_type=lock_name(store, lock_type), name="begin")
    txn.direct = True
    try:
        begin_txn(store, txn)
    except BaseException as err:
        if txn.op is not None:
            store.hooks.after_operation(store, txn.op, err)
        raise


def begin_again(store: Store, active: _Txn, lock_type: str | None) -> None:
    """BEGIN on the connection ``active`` holds (peewee's re-BEGIN after an inner commit)."""
    try:
        begins = store._begin_read if active.kind == "read" else store._begin_write
        active.record.conn.execute(begins[lock_name(store, lock_type)])
    except Exception as err:
        raise translate_in_transaction(store, err) from err


def commit_active(store: Store, txn: _Txn) -> None:
    """COMMIT what ``txn`` holds (``db.commit()``): outcome as in :func:`~corestore.transaction.end_txn`, then the
    post-commit policies. A bare ``db.begin()`` transaction ends here."""
    conn = txn.record.conn
    error: BaseException | None = None
    try:
        try:
            conn.execute("COMMIT")
        except Exception as err:
            raise commit_failed(store, txn, conn, err) from err
        with store._stats_lock:
            store._stats["reads" if txn.kind == "read" else "transactions"] += 1
        if txn.kind == "write":  # the record is still held here (released by _finish)
            after_commit(store, commit_invariants(store, conn, txn.op), txn.op)
        elif store.hooks.has_on_success:
            store.hooks.on_success(store, txn.op)  # type: ignore[arg-type]  # not None: set whenever an operation hook is registered
    except BaseException as err:
        error = err
        raise
    finally:
        if txn.direct:
            finish(store, txn, error)
        error = None  # no reference cycle through the traceback


def rollback_active(store: Store, txn: _Txn) -> None:
    """ROLLBACK what ``txn`` holds (``db.rollback()``), unless SQLite already rolled back."""
    conn = txn.record.conn
    error: BaseException | None = None
    try:
        if store._in_txn(conn):
            try:
                conn.execute("ROLLBACK")
            except Exception as err:
                raise translate_in_transaction(store, err) from err
        with store._stats_lock:
            store._stats["rollbacks"] += 1
    except BaseException as err:
        error = err
        raise
    finally:
        if txn.direct:
            finish(store, txn, error)
        error = None  # no reference cycle through the traceback


def abandon_direct(store: Store, txn: _Txn) -> None:
    """``db.close()`` while a bare ``db.begin()`` transaction is open: roll it back and end it
    (closing the sqlite3 connection would roll it back too)."""
    try:
        rollback_active(store, txn)
    finally:
        finish(store, txn)


def end_db(store: Store, txn: _DbTxn, exc: BaseException | None) -> bool:
    """End a top-level :class:`_DbTxn` as peewee's ``_transaction.__exit__`` does (pop, then
    ``commit(False)``, or ``rollback(False)`` on an error or a failed commit)."""
    db = store.database
    txn.exiting = True
    db.pop_transaction()
    error = exc  # what ended it, for after_operation's outcome
    try:
        if exc is not None:
            try:
                txn.rollback(False)
            except Exception:  # the real error is `exc`; never mask it
                logger.debug("%s: ROLLBACK after an error failed", store.path, exc_info=True)
            if not is_db_error(exc) or is_peewee_own(exc):
                return False
            if isinstance(exc, StoreError) and exc.classification is not None:
                note_fault(store, exc.classification, txn.op, exc, report=txn.report)
                return False
            raise failed(store, exc, txn.op, committed=False, report=txn.report) from exc
        try:
            txn.commit(False)
        except BaseException:
            try:
                txn.rollback(False)
            except Exception:
                logger.debug("%s: ROLLBACK after a failed COMMIT failed", store.path, exc_info=True)
            raise
        return False
    except BaseException as err:
        error = err
        raise
    finally:
        finish(store, txn, error)
        error = None  # no reference cycle through the traceback
