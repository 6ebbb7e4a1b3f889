"""The core's cross-process init lock.

First-connection setup (the journal-mode switch) and a store's ``setup=`` callable run under it,
so two processes never initialise one database at the same time. It is a sidecar file
``<db>.corestore-lock`` held with ``flock`` (whole-file, per open file description, not dropped
when some other descriptor of the database closes) plus a per-path re-entrant thread lock (flock
does not exclude threads of one process that share a description, and POSIX record locks would be
dropped by any close). The sidecar is never deleted: deleting a lock file races with its holders.
In a read-only directory the lock degrades to the thread lock, with one WARNING.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from typing import Iterator

__all__ = ["InitLock", "lock_path_for"]

logger = logging.getLogger(__name__)

_registry: dict[str, "InitLock"] = {}
_registry_lock = threading.Lock()
_warned: set[str] = set()


def lock_path_for(db_path: str) -> str:
    return db_path + ".corestore-lock"


class InitLock:
    """One per database path per process (use :meth:`for_path`). Re-entrant in one thread."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.path = None if db_path == ":memory:" else lock_path_for(db_path)
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @classmethod
    def for_path(cls, db_path: str) -> "InitLock":
        with _registry_lock:
            lock = _registry.get(db_path)
            if lock is None:
                lock = _registry[db_path] = cls(db_path)
            return lock

    @contextlib.contextmanager
    def hold(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the lock (thread lock, then flock on the sidecar) for the ``with`` block."""
        if not self._rlock.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise TimeoutError(f"{self.db_path}: init lock not acquired within {timeout_s} s")
        try:
            self._depth += 1
            if self._depth == 1:
                self._fd = self._lock_file()
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)  # the sidecar, never the database: no SQLite lock is affected
            self._rlock.release()

    def _lock_file(self) -> int | None:
        if self.path is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as err:
                if self.path not in _warned:
                    _warned.add(self.path)
                    logger.warning(
                        "%s: cannot create the init lock file (%s); other processes are not excluded "
                        "during initialisation, only other threads of this one", self.path, err.strerror,
                    )
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _after_fork_in_child(self) -> None:
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd = None  # the parent's flock stays the parent's (flock descriptions are shared:
        # do not unlock it from here; the child simply forgets the descriptor)


def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for lock in _registry.values():
        lock._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)
