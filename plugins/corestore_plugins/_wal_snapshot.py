"""wal_invariants' helpers: what one read transaction saw (:class:`_Snapshot`), ending that
transaction, and file sizes (moved verbatim out of ``wal_invariants.py``)."""
from __future__ import annotations

import logging
from typing import Any

from corestore.errors import StoreError
from corestore.sqlitefile import SqliteHeader, file_size

__all__: list[str] = []  # private to wal_invariants

logger = logging.getLogger(__name__)


def _in_transaction(conn: Any) -> bool:
    """Whether ``conn`` (sqlite3 or apsw) is inside a transaction."""
    value = getattr(conn, "in_transaction", None)
    if isinstance(value, bool):
        return value
    return not conn.getautocommit()


class _Snapshot:
    """What one read transaction saw: page count, page size, mode, sizes and header."""

    __slots__ = ("page_count", "page_size", "mode", "file_bytes", "wal_bytes", "header")

    def __init__(self, page_count: int, page_size: int, mode: str, file_bytes: int | None,
                 wal_bytes: int | None, header: SqliteHeader | None) -> None:
        self.page_count = page_count
        self.page_size = page_size
        self.mode = mode
        self.file_bytes = file_bytes
        self.wal_bytes = wal_bytes
        self.header = header


class _Inconclusive(Exception):
    """The check could not conclude (busy, closed, in a transaction): stay silent."""


def _size(path: str) -> int | None:
    """Evidence only: the file's size, None when it is missing or cannot be read."""
    try:
        return file_size(path)
    except StoreError:
        return None


def _end_read(conn: Any) -> None:
    """End the check's read transaction (COMMIT of a read; ROLLBACK if that fails)."""
    try:
        if _in_transaction(conn):
            conn.execute("COMMIT")
    except Exception:
        logger.debug("COMMIT of the invariant's read transaction failed; rolling back", exc_info=True)
        try:
            if _in_transaction(conn):
                conn.execute("ROLLBACK")
        except Exception:
            logger.debug("ROLLBACK of the invariant's read transaction failed", exc_info=True)
