"""The core's cross-process init lock.

First-connection setup (the journal-mode switch) and a store's ``setup=`` callable run under it,
so two processes never initialise one database at the same time. It is a sidecar file
``<db>.corestore-lock`` (created through :mod:`corestore.sidecar`: ``O_NOFOLLOW``, owner checked,
readable and writable only by the classes of users that may write the database, so 0600 beside a
0644 database) held with a **write** lock, which needs a writable descriptor, so a user who cannot
write the database cannot hold it (``flock`` would accept a read-only descriptor, and a reader
could hold a read lock, hence the mode): on Linux an open-file-description lock (``F_OFD_SETLK``: per open file
description like ``flock``, so not dropped when some other descriptor of the file closes), a
classic ``fcntl`` record lock elsewhere. A per-path re-entrant thread lock excludes the threads
of one process.

Every wait is bounded (the profile's ``init_timeout_s``) and ends in a :class:`~corestore.BusyError`
naming the holder's PID where it can be found: ``F_GETLK`` reports it for classic locks; OFD locks
have no owning process, so the holder also writes its PID into the lock file. The sidecar is never
deleted: deleting a lock file races with its holders. In a read-only directory (or where the lock
file is not ours to write) the lock degrades to the thread lock, with one WARNING. A database name
too long for ``<db>.corestore-lock`` gets a hashed lock name (:func:`corestore.sidecar.sidecar_path`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .errors import BusyError, Classification, ErrorKind, FatalError
from .sidecar import SidecarError, open_sidecar, sidecar_path, writers_mode

__all__ = ["InitLock", "ReentrantHold", "lock_path_for", "LOCK_SUFFIX", "DEFAULT_TIMEOUT_S"]

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".corestore-lock"
#: ``init_timeout_s`` when the profile does not set it.
DEFAULT_TIMEOUT_S = 30.0

# struct flock on Linux (x86-64 and aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid. Python's fcntl exports F_OFD_* since 3.9 on Linux; the values are fixed.
_FLOCK = "hhqqi4x"
_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_USE_OFD = sys.platform.startswith("linux") and struct.calcsize("P") == 8  # the layout above is the 64-bit one

_registry: dict[str, InitLock] = {}
_registry_lock = threading.Lock()
_warned: set[str] = set()


def lock_path_for(db_path: str) -> str:
    """The lock sidecar of ``db_path`` (hashed when ``<db>.corestore-lock`` is too long a name)."""
    return sidecar_path(db_path, LOCK_SUFFIX)


def _flock(kind: int) -> bytes:
    """A whole-file ``struct flock`` of ``kind`` (Linux layout; used only on Linux)."""
    return struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)


def _try_lock(fd: int) -> bool:
    """One non-blocking attempt at the write lock; False when another holder has it."""
    try:
        if _USE_OFD:
            fcntl.fcntl(fd, _OFD_SETLK, _flock(fcntl.F_WRLCK))
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    if _USE_OFD:
        fcntl.fcntl(fd, _OFD_SETLK, _flock(fcntl.F_UNLCK))
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)


def _record_pid(fd: int) -> None:
    """Write this process's PID into the held lock file, for waiters (OFD locks have no owner
    PID; best effort, an empty file is fine). Nothing is written when the file already says so
    (a process opening its databases again), and the file is only truncated when an older, longer
    PID is left behind: truncating a file to zero and writing it again costs the file system a
    journal transaction each time."""
    record = f"{os.getpid()}\n".encode("ascii")
    try:
        current = os.pread(fd, 32, 0)
        if current == record:
            return
        os.pwrite(fd, record, 0)
        if len(current) > len(record):
            os.ftruncate(fd, len(record))
    except OSError:
        pass


def _holder(fd: int) -> str:
    """Who holds the lock, as far as can be found: ``"PID n"`` or a description."""
    pid = -1
    try:
        if _USE_OFD:  # elsewhere only the PID the holder recorded is known
            got = fcntl.fcntl(fd, _OFD_GETLK, _flock(fcntl.F_WRLCK))
            pid = struct.unpack(_FLOCK, got)[4]
            if pid <= 0:  # an OFD lock has no owning process: try a classic query (a non-corestore holder)
                got = fcntl.fcntl(fd, fcntl.F_GETLK, _flock(fcntl.F_WRLCK))
                pid = struct.unpack(_FLOCK, got)[4]
    except OSError:
        pid = -1
    if pid > 0:
        return f"PID {pid}"
    try:
        recorded = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        recorded = ""
    if recorded.isdigit():
        try:
            os.kill(int(recorded), 0)
        except ProcessLookupError:
            return (f"another process (its PID could not be found; PID {recorded}, the last holder recorded in the lock file, "
                    "has exited)")
        except OSError:
            pass  # alive, another user's process
        return f"PID {recorded} (recorded in the lock file by its holder)"
    return "another process (its PID could not be found)"


class ReentrantHold:
    """The bounded, re-entrant ``hold()`` shared by the init locks of both engines: a thread lock
    first (other threads of this process), then, on the outermost entry only, the cross-process
    lock (:meth:`_acquire`: a sidecar file lock here, an advisory lock on PostgreSQL), released by
    :meth:`_release` when the outermost block ends. One deadline covers both waits."""

    db_path: str
    path: str | None

    def __init__(self) -> None:
        self._rlock = threading.RLock()
        self._depth = 0
        self._handle: Any = None

    def _acquire(self, deadline: float, timeout: float) -> Any:
        """Take the cross-process lock by ``deadline``; the handle to release (None: nothing held)."""
        raise NotImplementedError

    def _release(self, handle: Any) -> None:
        """Release what :meth:`_acquire` returned."""
        raise NotImplementedError

    @contextlib.contextmanager
    def hold(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the lock for the ``with`` block, waiting at most ``timeout_s`` seconds in total
        (default :data:`DEFAULT_TIMEOUT_S`); on timeout a :class:`~corestore.BusyError` names the
        lock and its holder."""
        timeout = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
        deadline = time.monotonic() + timeout
        if not self._rlock.acquire(timeout=max(0.0, timeout)):
            raise self._timeout(timeout, "another thread of this process")
        try:
            self._depth += 1
            if self._depth == 1:
                self._handle = self._acquire(deadline, timeout)
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._handle is not None:
                handle, self._handle = self._handle, None
                self._release(handle)
            self._rlock.release()

    def _timeout(self, timeout: float, holder: str) -> BusyError:
        message = (f"{self.db_path}: the init lock ({self.path}) was not acquired within init_timeout_s = {timeout:g} s; "
                   f"it is held by {holder}. Another process is initialising (or migrating) this database, or "
                   "is stuck: wait for it or stop it; raise init_timeout_s if setup legitimately takes longer")
        return BusyError(message, path=self.db_path, classification=Classification(
            kind=ErrorKind.BUSY, name="INIT_LOCK_TIMEOUT", message=f"init lock held by {holder}"))

    def _after_fork_in_child(self) -> None:
        self._rlock = threading.RLock()
        self._depth = 0
        self._handle = None  # the parent's lock stays the parent's: the child forgets it, never releases it


class InitLock(ReentrantHold):
    """One per database path per process (use :meth:`for_path`). Re-entrant in one thread."""

    def __init__(self, db_path: str) -> None:
        super().__init__()
        self.db_path = db_path
        self.path = None if db_path == ":memory:" else lock_path_for(db_path)

    @classmethod
    def for_path(cls, db_path: str) -> InitLock:
        with _registry_lock:
            lock = _registry.get(db_path)
            if lock is None:
                lock = _registry[db_path] = cls(db_path)
            return lock

    def _acquire(self, deadline: float, timeout: float) -> int | None:
        return self._lock_file(deadline, timeout)

    def _release(self, handle: Any) -> None:
        try:
            _unlock(handle)
        finally:
            os.close(handle)  # the sidecar, never the database: no SQLite lock is affected

    def _lock_file(self, deadline: float, timeout: float) -> int | None:
        if self.path is None:
            return None
        try:
            fd = open_sidecar(self.path, self.db_path, os.O_RDWR, mode=writers_mode(self.db_path))
        except SidecarError as err:  # a planted link, another user's file: refuse, do not degrade
            raise FatalError(str(err), path=self.db_path, classification=Classification(
                kind=ErrorKind.ENVIRONMENT, name="SIDECAR_REFUSED", message=str(err))) from err
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            if self.path not in _warned:
                _warned.add(self.path)
                logger.warning(
                    "%s: cannot open the init lock file for writing (%s); other processes are not excluded "
                    "during initialisation, only other threads of this one", self.path, err.strerror,
                )
            return None
        try:
            delay = 0.001
            while not _try_lock(fd):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout(timeout, _holder(fd))
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)
            _record_pid(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd



def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for lock in _registry.values():
        lock._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)
