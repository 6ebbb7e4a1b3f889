"""The init lock of a PostgreSQL store: a session-level ``pg_advisory_lock`` with a bounded wait.

The counterpart of :class:`corestore.initlock.InitLock` (a sidecar file lock) for a server: every
process and machine that opens the same database serialises ``setup`` (and migrations) on one
advisory lock key. The key is the first 8 bytes of BLAKE2b of ``"corestore.init_lock:"`` and the
*redacted* URL's host, port and database name (stable across processes, releases and Python
versions; the password and the query parameters take no part in it).

The lock is held on a connection of its own, opened for the ``with`` block and closed after it
(closing a session releases its advisory locks even if ``pg_advisory_unlock`` never ran). The
wait polls ``pg_try_advisory_lock`` with a backoff until the deadline, then raises a
:class:`~corestore.BusyError` naming the key and the PID of the session that holds it.
Re-entrant in one thread, like the file lock.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import urllib.parse
from typing import Any

from .errors import BusyError, Classification, ErrorKind
from .initlock import ReentrantHold
from .redact import redact_text, redact_url, split_url

__all__ = ["AdvisoryInitLock", "advisory_key"]

logger = logging.getLogger(__name__)

_registry: dict[str, AdvisoryInitLock] = {}
_registry_lock = threading.Lock()


def advisory_key(url: str) -> int:
    """The signed 64-bit advisory lock key of the database ``url`` names (host, port, database)."""
    split = split_url(redact_url(url))
    rest = split[2] if split is not None else url
    hostspec, _, path = rest.partition("/")
    hostspec = hostspec.split("?", 1)[0]
    if "," in hostspec:  # several hosts: the list names the database
        where = hostspec.lower()
    else:
        parts = urllib.parse.urlsplit(f"postgresql://{hostspec}")
        where = f"{parts.hostname or ''}:{parts.port or 5432}"
    ident = f"corestore.init_lock:{where}:{path.split('?', 1)[0]}"
    return int.from_bytes(hashlib.blake2b(ident.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


class AdvisoryInitLock(ReentrantHold):
    """One per URL per process (use :meth:`for_url`). Re-entrant in one thread."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self.db_path = redact_url(url)
        self.key = advisory_key(url)
        self.path = f"pg_advisory_lock({self.key})"  # what the lock is, for messages (InitLock's path)

    def __repr__(self) -> str:
        return f"<AdvisoryInitLock {self.db_path!r} key={self.key}>"

    @classmethod
    def for_url(cls, url: str) -> AdvisoryInitLock:
        with _registry_lock:
            lock = _registry.get(url)
            if lock is None:
                lock = _registry[url] = cls(url)
            return lock

    def _acquire(self, deadline: float, timeout: float) -> Any:
        return self._lock(deadline, timeout)

    def _release(self, handle: Any) -> None:
        try:
            handle.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except Exception:  # closing the session releases it anyway
            logger.debug("%s: pg_advisory_unlock failed; closing the session releases the lock", self.db_path,
                         exc_info=True)
        finally:
            handle.close()

    def _connect(self, deadline: float) -> Any:
        import psycopg

        left = max(1, int(deadline - time.monotonic() + 0.999))
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=min(left, 30),
                                   application_name="corestore-init-lock")
        except psycopg.Error as err:
            raise BusyError(f"{self.db_path}: could not connect to take the init lock ({self.path}): "
                            f"{redact_text(str(err).strip())}", path=self.db_path,
                            classification=Classification(kind=ErrorKind.TRANSIENT_IO, name="INIT_LOCK_CONNECT",
                                                          message=redact_text(str(err))[:200])) from None

    def _holder(self, conn: Any) -> str:
        try:
            row = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND ((classid::bigint << 32) | objid::bigint) = %s LIMIT 1", (self.key,)).fetchone()
        except Exception:  # noqa: BLE001 - naming the holder is best effort
            return "another session (its PID could not be read)"
        return f"server process PID {row[0]}" if row else "another session (it has just released it)"

    def _lock(self, deadline: float, timeout: float) -> Any:
        conn = self._connect(deadline)
        try:
            delay = 0.002
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout(timeout, self._holder(conn))
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)
        except BaseException:
            conn.close()
            raise
        return conn



def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for lock in _registry.values():
        lock._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)
