"""The store's peewee database: every statement through the policy layer, and a registry of
every thread's connection.

peewee keeps one connection per thread (thread-local). corestore keeps, in addition, a registry
of all of them, each with its own lock, so ``store.close()`` and ``store.invalidate()`` can close
idle connections from any thread and have busy ones closed by their owner at the end of their
transaction. After ``close()`` the database refuses to reconnect: no silent autoconnect.

Statements outside any transaction (autocommit ``execute_sql``, model calls) still pass through
``before_operation``, classification and ``on_fatal``. peewee's transaction API keeps peewee's own
objects and call sequence (``atomic()`` decides between a transaction and a savepoint when it is
entered, ``manual_commit()`` refuses ``atomic()``, sessions, ``batch_commit()``), and every
BEGIN / COMMIT / ROLLBACK goes through :meth:`begin`, :meth:`commit` and :meth:`rollback`, which
run them under the store's policies (see ``site/peewee-compatibility.md``).

Nothing here waits without a bound: the connection record's lock and peewee's connect/close lock
are taken with the profile's ``busy_timeout``, and a re-entry by the thread that already holds
them is refused with an error that names the misuse instead of deadlocking.

**The store link.** The database never calls the store's private methods. The store hands it a
:class:`~corestore.backends.StoreLink` (the store's implementation is
:data:`corestore.link.LINK`) whose members take the store as first argument: preparing a
new connection, translating an error, running an autocommit statement, and peewee's
``transaction()``/``begin()``/``commit()``/``rollback()``/``close()`` inside a store transaction.
The database holds its store only weakly (``store``), so a store nobody closed is still freed.

A thread's connection record and the bounded connect/close lock are in
:mod:`corestore.connections`. The engine-specific subclasses (``PolicySqliteDatabase``,
``PolicyAPSWDatabase``) and how they are built for a profile live in the backend
(:mod:`corestore.backends.sqlite`); :class:`PolicyMixin` and :func:`build_database` are what a
backend builds them from.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, cast

import peewee

from . import forking
from .connections import BoundedLock, ConnectionRecord, PolicyState, misuse
from .dbfork import ForkMixin, forget_connection
from .errors import BusyError, Classification, ConfigError, ErrorKind, QueryError, StoreClosedError
from .sqlkind import is_read_sql

if TYPE_CHECKING:  # pragma: no cover
    from .backends import StoreLink
    from .store import Store

__all__ = ["ConnectionRecord", "PolicyMixin", "build_database", "forget_connection", "all_databases"]

logger = logging.getLogger(__name__)


#: Statement classification for autocommit statements (kept under its old name; see sqlkind).
_is_read_sql = is_read_sql
_peewee_logger = logging.getLogger("peewee")
_exception_wrapper = getattr(peewee, "__exception_wrapper__")  # noqa: B009 - a dunder name in peewee's module

# Every policy database of this process (what the fork hooks walk; see corestore.forking).
_DATABASES: weakref.WeakSet[PolicyMixin] = weakref.WeakSet()


def all_databases() -> list[PolicyMixin]:
    """Every store database alive in this process, closed or not."""
    return list(_DATABASES)


class PolicyMixin(ForkMixin):
    """The policy layer, mixed into a peewee database class by a backend (see
    :mod:`corestore.backends.sqlite`) and set up by :func:`build_database`."""

    _store_ref: weakref.ref[Store]
    #: peewee 4 sets its own list per instance; peewee 3.17 has no query hooks
    query_hooks: Any = ()
    if TYPE_CHECKING:  # supplied by the peewee database class this is mixed into (see build_database)
        database: str
        _state: PolicyState
        _lock: BoundedLock
        _fork_clean: bool  # set by corestore.forking while a fork is prepared

        def in_transaction(self) -> bool: ...

    def _setup_policy(self, store: Store, link: StoreLink) -> None:
        self._store_ref = weakref.ref(store)
        # the instance has 30 attributes with peewee's own: CPython (3.11+) shares the keys of at
        # most 30 per class, and one more makes every attribute read of the database slower (about
        # 1 % per default-profile transaction, measured with benchmarks.instructions)
        self._link = link
        self._records: set[ConnectionRecord] = set()
        self._registry_lock = threading.Lock()
        self.generation = 0
        self.shut = False
        busy_ms = store.profile.pragmas.get("busy_timeout")
        #: how long a caller waits for a lock the store holds (the profile's busy_timeout; 5 s without one)
        self.lock_wait_s = max(0.001, int(busy_ms) / 1000.0) if busy_ms is not None else 5.0
        self._opening = 0  # connections being opened now (not yet registered)
        self._held_for_fork: list[ConnectionRecord] = []
        self.fork_refusal: str | None = None  # set in a forked child: why this database is refused
        _DATABASES.add(self)

    # -- connections -----------------------------------------------------------------------
    @property
    def store(self) -> Store:
        store = self._store_ref()
        if store is None:  # pragma: no cover - the store owns the database
            raise StoreClosedError("the store of this database was garbage-collected")
        return store

    def _connect(self) -> Any:
        if self.shut:
            raise StoreClosedError(
                f"{self.database}: the store was closed; open it again with corestore.open()",
                path=str(self.database),
            )
        forking.check(self.store, self.fork_refusal)  # a child refused this file: before SQLite
        self._sweep_dead_threads()
        forking.enter_open(self)  # waits (bounded) while a fork is being prepared
        try:
            conn = super()._connect()  # type: ignore[misc]
            try:
                self._link.init_connection(self.store, conn)
            except BaseException:
                try:
                    conn.close()
                except Exception:  # pragma: no cover - closing a half-initialised connection
                    logger.debug("closing a refused connection failed", exc_info=True)
                raise
            record = ConnectionRecord(conn, self.generation)
            with self._registry_lock:
                self._records.add(record)
        finally:
            forking.exit_open(self)
        self._state.record = record
        return conn

    def connect(self, reuse_if_open: bool = False) -> bool:
        # Errors from opening are classified by the store (outside peewee's wrapper, which would
        # rename corestore's exceptions).
        try:
            connected: bool = super().connect(reuse_if_open)  # type: ignore[misc]  # peewee's Database supplies it
            return connected
        except StoreClosedError:
            raise
        except Exception as err:
            translated = self._link.translate_open_error(self.store, err)
            if translated is err:
                raise  # already a StoreError (e.g. from on_open): keep its own __cause__
            raise translated from err

    def _close(self, conn: Any) -> None:
        record = getattr(self._state, "record", None)
        if record is not None and record.conn is conn:
            self._state.record = None
            with self._registry_lock:
                self._records.discard(record)
            with record.lock:
                record.closed = True
        conn.close()

    def _sweep_dead_threads(self) -> None:
        with self._registry_lock:
            dead = [r for r in self._records if not r.thread.is_alive()]
        for record in dead:
            self._close_record(record, wait=False)

    def _close_record(self, record: ConnectionRecord, *, wait: bool, spare_cursor: bool = False) -> bool:
        """Close ``record`` now if idle (True); else doom it so its owner closes it (False).

        Never closes a connection while a thread uses it: a busy record (held for a transaction,
        a statement or the post-commit checks) is only doomed, and its owner closes it when it
        releases it. With ``spare_cursor`` an idle record whose last use was an autocommit read
        on another thread is doomed too (its caller may still be fetching rows from it; the
        stdlib driver is not safe against a close from another thread in the middle of that)."""
        if not record.lock.acquire(blocking=wait):
            record.doomed = True
            return False
        try:
            if record.busy or (spare_cursor and record.cursor_out and record.thread is not threading.current_thread()
                               and record.thread.is_alive()):
                record.doomed = True
                return False
            if not record.closed:
                record.closed = True
                try:
                    record.conn.close()
                except Exception:
                    logger.warning("%s: closing a connection failed", self.database, exc_info=True)
        finally:
            record.lock.release()
        with self._registry_lock:
            self._records.discard(record)
        return True

    def close_all(self, *, shut: bool) -> int:
        """Close every idle connection of every thread; doom the busy ones. Returns how many were
        still busy. With ``shut`` the database never reconnects."""
        if shut:
            self.shut = True
        with self._registry_lock:
            records = list(self._records)
        busy = 0
        for record in records:
            if not self._close_record(record, wait=False, spare_cursor=not shut):
                busy += 1
        if not self.in_transaction():
            self._state.reset()
            self._state.record = None
        return busy

    def invalidate(self) -> int:
        """Bump the generation: idle connections close now, busy ones (and another thread's
        connection whose autocommit read cursor may still be in use) when their owner releases
        them or next uses the store."""
        with self._registry_lock:
            self.generation += 1
        return self.close_all(shut=False)

    def connection_count(self) -> int:
        with self._registry_lock:
            return len(self._records)

    def acquire(self) -> ConnectionRecord:
        """This thread's connection record, fresh and locked, marked busy (for a transaction or
        one autocommit statement). Reconnects when it was closed or invalidated elsewhere.

        Bounded: only another thread closing this record (``invalidate()``, ``close()``) can hold
        its lock, and the wait for it ends after ``lock_wait_s`` in :class:`BusyError`. A record
        is only ever acquired by its own thread, so finding it busy means this thread re-entered
        (a hook or a callback running a statement while its own transaction holds the
        connection): refused with :class:`QueryError` instead of a deadlock.
        """
        state = self._state
        return self.acquire_from(state, getattr(state, "record", None) if not state.closed else None)

    def acquire_from(self, state: PolicyState, record: ConnectionRecord | None) -> ConnectionRecord:
        """:meth:`acquire` given this thread's ``state`` and ``record`` (``state.record``, read by
        the caller: each read of a thread-local attribute costs ~500 instructions; a record is
        only ever set while the state is open, so ``record`` implies ``not state.closed``)."""
        if record is not None:
            if record.busy:
                raise self._reentry_error()
            lock = record.lock
            if not lock.acquire(False) and not lock.acquire(True, self.lock_wait_s):
                raise self._lock_timeout()
            if not record.closed and not record.doomed and record.generation == self.generation:
                record.busy = True
                return record
            record.lock.release()
            self._drop_stale(record)
        self.connect()
        record = cast(ConnectionRecord, state.record)  # connect() has just registered it (_connect)
        if not record.lock.acquire(True, self.lock_wait_s):
            raise self._lock_timeout()
        if record.closed:  # closed by close()/invalidate() on another thread before it was locked
            record.lock.release()
            self._drop_stale(record)
            return self.acquire()
        record.busy = True
        return record

    def _lock_timeout(self) -> BusyError:
        return BusyError(
            f"{self.database}: waited {self.lock_wait_s:g} s (busy_timeout) for this thread's connection, "
            "held by another thread closing it (invalidate() or close())",
            classification=Classification(kind=ErrorKind.BUSY, name="CONNECTION_LOCK_TIMEOUT", retryable=True),
            path=str(self.database),
        )

    def _reentry_error(self) -> QueryError:
        active = self._active()
        holder = f"a {active.kind} transaction ({active.name or 'unnamed'})" if active is not None else "a statement"
        err = misuse(
            f"{self.database}: this thread's connection is already held by {holder} of this same thread, and "
            "something on the thread asked for it again outside that transaction (a store hook or callback "
            "running a statement, or store.transaction()/read() after db.begin()); run it inside the open "
            "transaction or after it ends", "REENTRANT_CONNECTION")
        err.path = str(self.database)
        return err

    def release(self, record: ConnectionRecord) -> None:
        record.busy = False
        stale = record.doomed or record.generation != self.generation or self.shut
        if stale and record.cursor_out and not self.shut:
            # an autocommit read: its cursor goes back to the caller, who may still fetch rows;
            # this thread closes the connection at its next statement (doomed), not now
            record.doomed = True
            stale = False
        record.lock.release()
        if stale:
            self._drop_stale(record)

    def _drop_stale(self, record: ConnectionRecord) -> None:
        self._close_record(record, wait=True)
        state = self._state
        if getattr(state, "record", None) is record and not state.transactions:
            state.reset()
            state.record = None

    # -- the policy layer --------------------------------------------------------------------
    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        state = self._state
        record = state.record
        if record is not None and record.active is not None and not kwargs.get("named_cursor"):  # checked at BEGIN
            return state.conn.cursor()  # (a named, server-side cursor is made by the driver's database class)
        if not state.closed:
            record = getattr(state, "record", None)
            # A busy record is this thread's own, acquired for the statement running now (an
            # autocommit execute_sql): it was checked then and is released (and dropped if stale)
            # after the statement; dropping it here would wait for this thread's own lock.
            if record is not None and not record.busy and (
                    record.closed or (record.generation != self.generation and not state.transactions)):
                self._drop_stale(record)
        if state.closed and self.shut:
            raise StoreClosedError(
                f"{self.database}: the store was closed; open it again with corestore.open()",
                path=str(self.database),
            )
        cursor = super().cursor(*args, **kwargs)  # type: ignore[misc]
        record = state.record
        if record is not None and record.query_only:  # the application's own cursor, after a read()
            self._link.set_query_only(self.store, record, False)
        return cursor

    def connection(self) -> Any:
        """peewee's ``connection()``; outside a store transaction the raw connection is
        writable (``query_only``, left on by a read transaction, is switched off)."""
        conn = super().connection()  # type: ignore[misc]
        record = self._state.record
        if record is not None and record.query_only and record.active is None:
            self._link.set_query_only(self.store, record, False)
        return conn

    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        record = self._state.record
        if record is not None and record.active is not None:  # inside this thread's store transaction
            if record.active.gate is not None:  # an arun() unit: cancelled -> stop before this statement
                record.active.gate.check()
            try:
                if args or kwargs or self.query_hooks:  # peewee's own path (its query hooks, 3.17's commit=)
                    return super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
                # peewee's execute_sql inline (log, exception wrapper, cursor, execute) on the
                # transaction's connection: what cursor() would return here, without looking the
                # thread's state up twice more (peewee 3.17 and 4.x do exactly these steps)
                if _peewee_logger.isEnabledFor(logging.DEBUG):
                    _peewee_logger.debug((sql, params))
                try:
                    cursor = record.conn.cursor()
                    cursor.execute(sql, params or ())
                except Exception as exc:  # peewee's `with __exception_wrapper__:` without its two calls
                    _exception_wrapper.__exit__(type(exc), exc, exc.__traceback__)  # raises peewee's class
                    raise
                return cursor
            except Exception as err:
                raise self._link.translate_in_transaction(self.store, err) from err
        return self._link.autocommit(self.store, super().execute_sql,  # type: ignore[misc]  # peewee's Database supplies it
                                     sql, params, is_read_sql(sql), args, kwargs)

    def _active(self) -> Any:
        """The store transaction holding this thread's connection, or None."""
        record = self._state.record
        return record.active if record is not None else None

    # -- peewee's transaction API -------------------------------------------------------------
    # atomic(), savepoint(), manual_commit(), session_*(), batch_commit(), connection_context()
    # and `with db:` are peewee's own: they call transaction(), begin(), commit() and rollback()
    # below exactly as on a plain SqliteDatabase, which is where the policies are applied.
    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        """peewee's ``transaction()``: a store write transaction when entered at depth 0 (BEGIN
        through :meth:`begin`, COMMIT through :meth:`commit`), joined (pushed only) when nested."""
        return self._link.db_transaction(self.store, args, kwargs)

    def begin(self, lock_type: str | None = None) -> None:
        """BEGIN. Inside a store transaction (its re-BEGIN after ``txn.commit()``): on its
        connection. Otherwise (``db.begin()`` called by the application) it opens a store write
        transaction that holds this thread's connection until :meth:`commit` or :meth:`rollback`."""
        active = self._active()
        if lock_type is None:
            lock_type = getattr(self, "_lock_type", None)
        if active is None:
            self._link.direct_begin(self.store, lock_type)
            return
        self._link.begin_again(self.store, active, lock_type)

    def commit(self) -> None:
        """COMMIT this thread's store transaction: the outcome is classified as in
        ``store.transaction()`` and the post-commit policies (invariants, ``on_success``) run
        after the real COMMIT. Without one (nothing to commit), the installed peewee's own
        ``commit()``, with its own errors."""
        active = self._active()
        if active is not None:
            self._link.commit_active(self.store, active)
            return None
        return super().commit()  # type: ignore[misc, no-any-return]  # each peewee release's own

    def rollback(self) -> None:
        """ROLLBACK this thread's store transaction (skipped when SQLite already rolled it back
        itself after an I/O error: a ROLLBACK that cannot succeed never masks the real error).
        Without one, the installed peewee's own ``rollback()``."""
        active = self._active()
        if active is not None:
            self._link.rollback_active(self.store, active)
            return None
        return super().rollback()  # type: ignore[misc, no-any-return]  # each peewee release's own

    def close(self) -> bool:
        """peewee's ``close()`` (its error inside a transaction). A transaction opened with a
        bare :meth:`begin` and never finished is rolled back first, as closing the sqlite3
        connection would."""
        active = self._active()
        if active is not None and not self.in_transaction():
            self._link.abandon_direct(self.store, active)
        return bool(super().close())  # type: ignore[misc]

    def init(self, database: Any, *args: Any, **kwargs: Any) -> None:
        """Refused on a store's database: it would move the database off the path that the
        store's cache, locks, breaker and quarantine are keyed on."""
        if isinstance(getattr(self, "_state", None), PolicyState):  # built (build_database sets it last)
            raise ConfigError(
                f"{self.database}: init() on a store's database is refused: the store's connections, init lock, "
                "circuit breaker and quarantine belong to this path. Open a store for the other database with "
                "corestore.open(path) and bind the models to its database (store.bind([...]))"
            )
        super().init(database, *args, **kwargs)  # type: ignore[misc]


def build_database(cls: type[PolicyMixin], store: Store, link: StoreLink, database: str, **kwargs: Any) -> Any:
    """An instance of ``cls`` (a backend's subclass of :class:`PolicyMixin` and a peewee database)
    for ``store``, talking to it through ``link``; ``kwargs`` go to peewee's ``__init__``."""
    db: Any = cls.__new__(cls)  # with the peewee database's __init__ (mixed in by the backend)
    db._setup_policy(store, link)
    db.__init__(database, **kwargs)
    db._lock = BoundedLock(db.lock_wait_s, f"{database}")
    db._state = PolicyState()  # last: from now on init() is refused
    return db


def __getattr__(name: str) -> Any:
    """``PolicySqliteDatabase`` moved to :mod:`corestore.backends.sqlite`."""
    if name == "PolicySqliteDatabase":
        from .backends import sqlite

        return getattr(sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
