"""After a fault: is the file still sound?"""
from __future__ import annotations

import os
import sqlite3

__all__ = ["integrity_check"]


def integrity_check(path: str | os.PathLike[str], *, driver: str = "sqlite3", vfs: str | None = None) -> str:
    """``PRAGMA integrity_check`` on ``path`` through a fresh connection: ``"ok"`` when the file
    (with its ``-wal``) is sound, else SQLite's findings, one per line.

    Use the driver the store used (``"apsw"`` with the failpoint VFS's name as ``vfs``): two
    drivers in one process do not see each other's locks. Call it after ``store.close()``; the
    connection is closed again before returning.
    """
    if driver == "sqlite3":
        conn = sqlite3.connect(os.fspath(path), isolation_level=None)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    elif driver == "apsw":
        import apsw

        aconn = apsw.Connection(os.fspath(path), vfs=vfs)
        try:
            rows = aconn.execute("PRAGMA integrity_check").fetchall()
        finally:
            aconn.close()
    else:
        raise ValueError(f"driver must be 'sqlite3' or 'apsw', got {driver!r}")
    return "\n".join(str(row[0]) for row in rows)
