"""One thread's connection (:class:`ConnectionRecord`), peewee's per-thread state with it, and
the bounded connect/close lock (:class:`BoundedLock`) of the store's database.

Nothing here waits without a bound: the connect/close lock is taken with the profile's
``busy_timeout``, and a re-entry by the thread that already holds it is refused with an error that
names the misuse instead of deadlocking. Used by :mod:`corestore.database`.
"""
from __future__ import annotations

import threading
from typing import Any

import peewee

from .errors import BusyError, Classification, ErrorKind, QueryError

__all__ = ["ConnectionRecord", "PolicyState", "BoundedLock", "misuse"]


class ConnectionRecord:
    """One thread's driver connection: its lock (held while a statement or transaction runs),
    the generation it was opened in, and whether it was closed or doomed from elsewhere."""

    __slots__ = ("conn", "cur", "stack", "callbacks", "lock", "generation", "thread", "closed", "doomed", "busy",
                 "active", "query_only", "cursor_out", "__weakref__")

    def __init__(self, conn: Any, generation: int) -> None:
        self.conn = conn
        # the cursor BEGIN and COMMIT run on: one per connection, not a new one per statement
        # (conn.execute() allocates a cursor each time; measured, about 1,500 instructions each)
        self.cur = conn.cursor()
        # peewee's per-thread transaction stack and commit callbacks of this thread's connection,
        # bound by PolicyState.set_connection: the hot path reaches them without a thread-local lookup
        self.stack: list[Any] = []
        self.callbacks: list[Any] | None = None
        self.lock = threading.Lock()
        self.generation = generation
        self.thread = threading.current_thread()
        self.closed = False
        self.doomed = False
        self.busy = False
        self.active: Any = None  # the store transaction holding it (set by the store, same thread)
        self.query_only = False  # PRAGMA query_only is on (left on by a read transaction)
        # True after an autocommit read: the caller may still be stepping the cursor it got, on
        # its own thread, after the record was released (see _PolicyMixin.close_all).
        self.cursor_out = False


class PolicyState(peewee._ConnectionLocal):
    """peewee's per-thread connection state; ``record`` (this thread's :class:`ConnectionRecord`)
    is always present, None when the thread has no connection."""

    record: ConnectionRecord | None
    closed: bool
    transactions: list[Any]

    def reset(self) -> None:
        super().reset()
        self.record = None

    def set_connection(self, conn: Any) -> None:
        """peewee's, then bind the fresh transaction stack and commit-callback list to this
        thread's record (peewee replaces both lists here and in :meth:`reset`, which drops the
        record: a record's ``stack`` is always this thread's ``transactions``)."""
        super().set_connection(conn)
        record = self.record
        if record is not None and record.conn is conn:
            record.stack = self.transactions
            record.callbacks = getattr(self, "commit_callbacks", None)  # peewee >= 4


def misuse(message: str, name: str) -> QueryError:
    return QueryError(message, classification=Classification(kind=ErrorKind.PROGRAMMING, name=name))


class BoundedLock:
    """peewee's connect/close lock, bounded: waits at most ``timeout`` seconds (then
    :class:`BusyError`) and refuses a re-entry by the thread that holds it (a hook that uses the
    database while its own connection is being opened) instead of deadlocking."""

    __slots__ = ("_lock", "_owner", "timeout", "what")

    def __init__(self, timeout: float, what: str) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self.timeout = timeout
        self.what = what

    def __enter__(self) -> BoundedLock:
        me = threading.get_ident()
        if self._owner == me:
            raise misuse(f"{self.what}: this thread re-entered the database's connect/close while opening or "
                          "closing its own connection (a hook that uses store.database from on_open?); use the "
                          "connection the hook is given", "REENTRANT_CONNECT")
        if not self._lock.acquire(True, self.timeout):
            raise BusyError(
                f"{self.what}: waited {self.timeout:g} s (busy_timeout) for another thread opening or closing "
                "its connection",
                classification=Classification(kind=ErrorKind.BUSY, name="CONNECT_LOCK_TIMEOUT", retryable=True),
            )
        self._owner = me
        return self

    def __exit__(self, *exc: Any) -> None:
        self._owner = None
        self._lock.release()
