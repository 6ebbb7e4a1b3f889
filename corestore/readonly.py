"""A WAL database in a directory this process cannot write: when a read-only open works, and
what to change when it cannot.

SQLite reads a WAL database through its ``-shm`` (and ``-wal``). When both already exist (the
writer is running, or left them), a read-only connection opens them as they are, even in a
read-only directory. When they do not, SQLite must create them, and a read-only directory makes
that fail (``SQLITE_READONLY_DIRECTORY`` / ``SQLITE_CANTOPEN``). corestore never falls back to
``immutable=1`` on its own: an immutable open ignores the ``-wal``, so committed rows would
silently disappear from what it reads.
"""
from __future__ import annotations

import logging
import os

from .sqlitefile import parse_header

__all__ = ["readonly_wal_problem"]

logger = logging.getLogger(__name__)


def readonly_wal_problem(path: str) -> str | None:
    """Why a read-only open of the WAL database at ``path`` cannot work from this process, and
    exactly what to change; None when it can (not WAL, the directory is writable, or the
    ``-wal`` and ``-shm`` it needs already exist and are readable)."""
    try:
        with open(path, "rb") as fh:
            header = parse_header(fh.read(100))
    except OSError:
        return None
    if header is None or (header.write_version, header.read_version) != (2, 2):
        return None
    directory = os.path.dirname(path) or "."
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    missing = [suffix for suffix in ("-wal", "-shm") if not os.path.exists(path + suffix)]
    unreadable = [suffix for suffix in ("-wal", "-shm")
                  if suffix not in missing and not os.access(path + suffix, os.R_OK)]
    if not missing and not unreadable:
        return None
    what = (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing" if missing else
            f"{' and '.join(unreadable)} {'is' if len(unreadable) == 1 else 'are'} not readable by this process")
    return (
        f"a WAL database in a directory this process cannot write ({directory}, uid {os.geteuid()}): "
        f"SQLite reads it through its -wal and -shm files, and {what} (SQLite cannot create "
        f"{'them' if len(missing) != 1 else 'it'} here). Change one of: make {directory} writable by this user "
        "(e.g. a group both the writer and this reader are in); run the reader while the writer has the database "
        "open (its -wal and -shm then exist and a read-only open uses them)"
        + ("; make the -wal/-shm readable by this user" if unreadable else "")
        + "; or, if nothing writes it any more, convert it once as its owner with "
        f"`sqlite3 {path} 'PRAGMA journal_mode=DELETE'`. corestore never opens with immutable=1 on its own: that "
        "ignores the -wal, so committed rows would silently disappear"
    )
