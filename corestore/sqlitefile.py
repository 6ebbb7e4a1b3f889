"""Reading a SQLite file's header without disturbing the process's locks.

Closing *any* descriptor of a file drops *all* of the process's POSIX locks on it, including the
ones SQLite holds (site/operations.md, rule 2). So a process that has SQLite connections to a file reads its
header through one read-only descriptor per file that stays open for the life of the process;
sizes come from ``os.stat``. The doctor CLI, a separate process, may read freely.

Every ``OSError`` here (other than a missing file, which each helper answers with None) is
classified like SQLite's own errors and raised as the matching :class:`~corestore.StoreError`
(see :mod:`corestore.oserrors`: EIO is FATAL_IO, ENOSPC FULL, EMFILE ENVIRONMENT, EACCES
READONLY ...), never raw; the exception is also an ``OSError`` for callers that catch that.
"""
from __future__ import annotations

import os
import struct
import threading
from typing import NamedTuple

from .oserrors import os_store_error

__all__ = ["SqliteHeader", "parse_header", "read_header", "header_descriptor", "header_says_wal", "file_size", "MAGIC"]

MAGIC = b"SQLite format 3\x00"

_fds: dict[tuple[int, int], int] = {}
_fd_lock = threading.Lock()


class SqliteHeader(NamedTuple):
    """The fields of the 100-byte database header that corestore looks at."""

    page_size: int
    write_version: int
    read_version: int
    change_counter: int
    page_count: int
    version_valid_for: int

    @property
    def is_wal(self) -> bool:
        """Bytes 18-19 == 2: the file is in WAL mode (what every process opening it will use)."""
        return self.write_version == 2 and self.read_version == 2

    @property
    def journal_mode(self) -> str:
        """``"wal"`` or ``"rollback"`` as the header records it."""
        return "wal" if self.is_wal else "rollback"


def parse_header(data: bytes) -> SqliteHeader | None:
    """Parse the first 100 bytes of a database file; None if it is not a SQLite file."""
    if len(data) < 100 or not data.startswith(MAGIC):
        return None
    page_size = struct.unpack(">H", data[16:18])[0]
    if page_size == 1:
        page_size = 65536
    change_counter, page_count = struct.unpack(">II", data[24:32])
    version_valid_for = struct.unpack(">I", data[92:96])[0]
    return SqliteHeader(page_size, data[18], data[19], change_counter, page_count, version_valid_for)


def _fd_for(path: str) -> int | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise os_store_error(err, path, "stat of the database file", stat=True) from err
    key = (st.st_dev, st.st_ino)
    with _fd_lock:
        fd = _fds.get(key)
        if fd is None:
            # Kept open for the life of the process on purpose: closing it would drop SQLite's
            # POSIX locks on this file. One per (device, inode), so at most one per file.
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                return None
            except OSError as err:
                raise os_store_error(err, path, "opening the database file to read its header") from err
            _fds[key] = fd
        return fd


def header_descriptor(path: str) -> int | None:
    """The process-lifetime read-only descriptor of ``path`` (None if the file is missing), for
    hot paths that ``os.pread`` a few header bytes themselves (and classify their own
    ``OSError`` with :func:`corestore.oserrors.os_store_error`). Never close it."""
    return _fd_for(path)


def read_header(path: str) -> SqliteHeader | None:
    """The header of the database at ``path`` (None if missing, empty or not SQLite).

    Safe in a process that has SQLite connections to ``path``: reads through the process-wide
    descriptor for that file, never opening and closing one.
    """
    fd = _fd_for(path)
    if fd is None:
        return None
    try:
        data = os.pread(fd, 100, 0)
    except OSError as err:
        raise os_store_error(err, path, "reading the database header") from err
    return parse_header(data)


def header_says_wal(path: str) -> bool | None:
    """True/False from header bytes 18-19; None when there is no readable header yet."""
    header = read_header(path)
    return None if header is None else header.is_wal


def file_size(path: str) -> int | None:
    """``os.stat`` size, or None if the file does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None
    except OSError as err:
        raise os_store_error(err, path, "stat", stat=True) from err
