"""SQLite's own WAL writer lock, held by the checkpoint governor on a connection of its own.

**When.** Every checkpoint of the WAL-reset mitigation (site/plugins/checkpoint_governor.md) runs
inside :meth:`WriterLock.held`.

**Why.** The WAL-reset bug needs a checkpoint and a commit that resets the WAL to run at the same
time. A commit, and the WAL reset it may do (``walRestartLog`` in ``wal.c``, called from
``sqlite3WalFrames``), needs SQLite's writer lock (``WAL_WRITE_LOCK``). ``BEGIN IMMEDIATE`` on
this connection takes that lock (``sqlite3WalBeginWriteTransaction``) and keeps it until
``ROLLBACK``: while it is held no connection of any process can commit, so a checkpoint run on
another connection meanwhile cannot race a WAL reset. The writers pay nothing per transaction;
they wait in SQLite's busy handler for the length of one checkpoint. This connection writes
nothing: around a checkpoint it only rolls back, and :meth:`WriterLock.restart_wal` commits a
transaction that changes no data, to restart an idle WAL under the same lock.

**Taking the lock fairly.** SQLite's own busy handler sleeps 1, 2, 5, 10 ... 100 ms between
attempts, so against writers that commit every few microseconds it can lose every race until its
timeout and the round is skipped (measured under load: no checkpoint in 3 s against two tight
writers). The lock is therefore asked for without SQLite's handler (``busy_timeout = 0``) every
:data:`POLL_S` until the deadline: a few hundred attempts per second instead of a handful.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from corestore.classify import classify_exception
from corestore.errors import ErrorKind

__all__ = ["WriterLock"]

logger = logging.getLogger(__name__)

POLL_S = 0.0005
"""The pause between two attempts at ``BEGIN IMMEDIATE`` while the writer lock is busy."""


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
            if self.driver == "apsw":
                conn.setbusytimeout(0)
            else:
                cur.execute("PRAGMA busy_timeout = 0")  # attempts are paced by _begin_immediate
            cur.execute("PRAGMA wal_autocheckpoint = 0")  # its only commit is restart_wal's: no checkpoint after it
            cur.execute(f"PRAGMA journal_size_limit = {int(self.journal_size_limit)}")  # what restart_wal truncates to
            self._conn = conn
        return self._conn

    def _begin_immediate(self, cur: Any, timeout_s: float) -> bool:
        """``BEGIN IMMEDIATE`` on ``cur``, tried every :data:`POLL_S` until ``timeout_s`` has passed.
        True when the writer lock is held; False when it stayed busy (logged at DEBUG)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return True
            except Exception as err:  # sqlite3.OperationalError / apsw.BusyError: the lock is taken
                if classify_exception(err).kind is not ErrorKind.BUSY or time.monotonic() >= deadline:
                    logger.debug("%s: SQLite's writer lock not had within %.3f s: %s", self.path, timeout_s, err)
                    return False
            time.sleep(POLL_S)

    @contextlib.contextmanager
    def held(self, timeout_s: float) -> Iterator[bool]:
        """Yield True while SQLite's writer lock is held (``BEGIN IMMEDIATE`` succeeded within
        ``timeout_s``), False when it could not be had (busy): the caller then runs nothing."""
        cur = self._connection().cursor()
        if not self._begin_immediate(cur, timeout_s):
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
        cur = self._connection().cursor()
        if not self._begin_immediate(cur, timeout_s):
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
