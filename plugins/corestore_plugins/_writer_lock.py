"""SQLite's own WAL writer lock, held by the checkpoint governor on a connection of its own.

**When.** Every checkpoint of the WAL-reset mitigation (site/plugins/checkpoint_governor.md) runs
inside :meth:`WriterLock.held`.

**Why.** The WAL-reset bug needs a checkpoint and a commit that resets the WAL to run at the same
time. A commit, and the WAL reset it may do (``walRestartLog`` in ``wal.c``, called from
``sqlite3WalFrames``), needs SQLite's writer lock (``WAL_WRITE_LOCK``). ``BEGIN IMMEDIATE`` on
this connection takes that lock (``sqlite3WalBeginWriteTransaction``) and keeps it until
``ROLLBACK``: while it is held no connection of any process can commit, so a checkpoint run on
another connection meanwhile cannot race a WAL reset. The writers pay nothing per transaction;
they wait in SQLite's busy handler for the length of one checkpoint. This connection never writes
(it only rolls back), so it never resets the WAL or commits anything itself.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["WriterLock"]

logger = logging.getLogger(__name__)


class WriterLock:
    """A dedicated connection to ``path`` (driver ``"sqlite3"`` or ``"apsw"``) whose only use is
    ``BEGIN IMMEDIATE`` ... ``ROLLBACK``: SQLite's writer lock, bounded by a busy timeout."""

    def __init__(self, path: str, driver: str, journal_size_limit: int) -> None:
        self.path = path
        self.driver = driver
        self.journal_size_limit = journal_size_limit
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            if self.driver == "apsw":
                import apsw

                conn: Any = apsw.Connection(self.path)
            else:
                import sqlite3

                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            cur = conn.cursor()
            cur.execute("PRAGMA wal_autocheckpoint = 0")  # its only commit is restart_wal's: no checkpoint after it
            cur.execute(f"PRAGMA journal_size_limit = {int(self.journal_size_limit)}")  # what restart_wal truncates to
            self._conn = conn
        return self._conn

    def _set_timeout(self, conn: Any, timeout_s: float) -> None:
        ms = max(0, int(timeout_s * 1000))
        if self.driver == "apsw":
            conn.setbusytimeout(ms)
        else:
            conn.cursor().execute(f"PRAGMA busy_timeout = {ms}")

    @contextlib.contextmanager
    def held(self, timeout_s: float) -> Iterator[bool]:
        """Yield True while SQLite's writer lock is held (``BEGIN IMMEDIATE`` succeeded within
        ``timeout_s``), False when it could not be had (busy): the caller then runs nothing."""
        conn = self._connection()
        self._set_timeout(conn, timeout_s)
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
        except Exception as err:  # sqlite3.OperationalError / apsw.BusyError: the lock was not free in time
            logger.debug("%s: SQLite's writer lock not had within %.3f s: %s", self.path, timeout_s, err)
            yield False
            return
        try:
            yield True
        finally:
            cur.execute("ROLLBACK")

    def restart_wal(self, timeout_s: float) -> bool:
        """Commit a transaction that changes nothing (``user_version`` rewritten with its own value):
        when the WAL is fully checkpointed, SQLite restarts it at this commit (``walRestartLog``) and
        truncates ``-wal`` to ``journal_size_limit``. The writer lock is held throughout, so no other
        commit, and no governed checkpoint of any process, runs meanwhile. False when the lock was busy."""
        conn = self._connection()
        self._set_timeout(conn, timeout_s)
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
        except Exception as err:
            logger.debug("%s: SQLite's writer lock not had within %.3f s: %s", self.path, timeout_s, err)
            return False
        try:
            version = int(cur.execute("PRAGMA user_version").fetchone()[0])
            cur.execute(f"PRAGMA user_version = {version}")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return True

    def close(self) -> None:
        """Close the connection (the store closes)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def forget(self) -> None:
        """In a forked child: the connection is the parent's; drop it without closing it."""
        self._conn = None
