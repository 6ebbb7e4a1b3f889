"""What a store's database does around ``fork()`` (driven by :mod:`corestore.forking`): hold its
connections while the fork is made, let them go in the parent, forget them in the child.

Split from :mod:`corestore.database` (one concept per module); :class:`ForkMixin` is a base of
:class:`~corestore.database.PolicyMixin` and uses its registry of connection records.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .connections import BoundedLock, ConnectionRecord, PolicyState

__all__ = ["ForkMixin", "forget_connection"]

logger = logging.getLogger(__name__)

# Connections inherited across fork() are kept referenced here forever in the child, never
# closed: closing them in the child could checkpoint or unlink the parent's -wal.
_FORGOTTEN: list[Any] = []


def forget_connection(conn: Any) -> None:
    """In a forked child: keep ``conn`` (inherited from the parent) referenced forever, never
    closed (closing it could checkpoint or unlink the parent's ``-wal``)."""
    _FORGOTTEN.append(conn)


class ForkMixin:
    """The fork side of the store's database (see the module docstring)."""

    if TYPE_CHECKING:  # set up by PolicyMixin / peewee
        database: str
        _state: PolicyState
        _lock: BoundedLock
        _records: set[ConnectionRecord]
        _registry_lock: threading.Lock
        _held_for_fork: list[ConnectionRecord]
        _opening: int

    def hold_for_fork(self, deadline: float) -> bool:
        """Before ``fork()``: close every idle connection and keep its record locked until the
        fork is done, waiting until ``deadline`` (monotonic) for busy ones. True when no
        connection of this database is left open (the child may then use the file)."""
        with self._registry_lock:
            records = list(self._records)
        clean = True
        me = threading.current_thread()
        for record in records:
            # Doomed: an owner between two statements lets go of it at once instead of taking
            # it again (it then waits for the fork to end to open a fresh one).
            record.doomed = True
        for record in records:
            if record.thread is me and record.busy:
                clean = False  # this thread forks from inside its own transaction
                continue
            if not record.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                clean = False  # still in use by another thread when the bound ran out
                continue
            self._held_for_fork.append(record)
            if record.busy:  # pragma: no cover - busy is only set with the lock held
                clean = False
                continue
            if not record.closed:
                record.closed = True
                try:
                    record.conn.close()
                except Exception:
                    logger.warning("%s: closing a connection before fork() failed", self.database, exc_info=True)
                    clean = False
            with self._registry_lock:
                self._records.discard(record)
        return clean and self._opening == 0

    def release_after_fork(self) -> None:
        """In the parent after ``fork()``: let the owners of the held records go on (their next
        statement opens a fresh connection)."""
        held, self._held_for_fork = self._held_for_fork, []
        for record in held:
            record.lock.release()

    def open_at_fork(self) -> bool:
        """In a forked child, before :meth:`forget_after_fork`: whether the parent still had a
        connection of this database open (or being opened) at the moment of ``fork()``."""
        return self._opening > 0 or any(not r.closed for r in self._records)

    def forget_after_fork(self) -> None:
        """In a forked child: drop every inherited connection without closing it (closing it
        here could checkpoint or unlink the parent's ``-wal`` and drop the parent's locks)."""
        _FORGOTTEN.extend(r.conn for r in self._records if not r.closed)
        self._records = set()
        self._held_for_fork = []
        self._opening = 0
        self._registry_lock = threading.Lock()
        # peewee's connect()/close() lock (bounded, see BoundedLock): a parent thread opening a
        # connection while the fork was prepared held it; in the child nobody would release it
        old = getattr(self, "_lock", None)
        if isinstance(old, BoundedLock):
            self._lock = BoundedLock(old.timeout, old.what)
        elif old is not None:
            self._lock = type(old)()
        state = self._state
        if state.conn is not None:
            _FORGOTTEN.append(state.conn)
        state.reset()
        state.record = None
