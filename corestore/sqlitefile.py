"""Reading a SQLite file's header (and its ``-wal``) without disturbing the process's locks.

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
from typing import Any, NamedTuple

from .oserrors import os_store_error

__all__ = [
    "SqliteHeader", "parse_header", "read_header", "header_descriptor", "header_says_wal", "file_size", "MAGIC",
    "WAL_MAGICS", "WAL_VERIFY_LIMIT", "wal_checksum", "read_wal_summary",
]

MAGIC = b"SQLite format 3\x00"
WAL_MAGICS = (0x377F0682, 0x377F0683)
WAL_VERIFY_LIMIT = 64 * 1024 * 1024  # checksum-verify at most this much -wal (pure Python)

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


# -- the write-ahead log ------------------------------------------------------------------------------------------
def wal_checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) continued from ``(s0, s1)``;
    ``order`` is ``">"`` (big-endian words, magic 0x377F0683) or ``"<"``."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def read_wal_summary(wal_path: str, *, verify_limit: int = WAL_VERIFY_LIMIT) -> dict[str, Any]:
    """What a ``-wal`` file holds, read the way SQLite's recovery reads it: the header, then
    frames while their salts match the header and their cumulative checksums verify. Frames up
    to the last commit frame are committed transactions SQLite will replay; frames after it are
    an unfinished transaction it will ignore. Beyond ``verify_limit`` bytes frames are counted by
    salt only (``verified`` False). Plain reads; nothing is written."""
    size = os.stat(wal_path).st_size
    out: dict[str, Any] = {"size": size, "valid": False}
    with open(wal_path, "rb") as fh:
        header = fh.read(32)
        if len(header) < 32:
            out["reason"] = "shorter than the 32-byte WAL header" if size else "empty"
            return out
        magic, version, page_size, ckpt_seq, salt1, salt2, c1, c2 = struct.unpack(">8I", header)
        if magic not in WAL_MAGICS:
            out["reason"] = f"bad magic 0x{magic:08x}"
            return out
        order = ">" if magic & 1 else "<"
        if wal_checksum(header[:24], 0, 0, order) != (c1, c2):
            out["reason"] = "header checksum mismatch"
            return out
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            out["reason"] = f"invalid page size {page_size}"
            return out
        out.update(valid=True, version=version, page_size=page_size, checkpoint_seq=ckpt_seq)
        frame_size = 24 + page_size
        slots = (size - 32) // frame_size
        s0, s1 = c1, c2
        valid = committed = transactions = 0
        db_pages: int | None = None
        verified = True
        for index in range(slots):
            fh_bytes = fh.read(24)
            page = fh.read(page_size)
            if len(fh_bytes) < 24 or len(page) < page_size:
                break
            pgno, commit, f_salt1, f_salt2, f_c1, f_c2 = struct.unpack(">6I", fh_bytes)
            if (f_salt1, f_salt2) != (salt1, salt2) or pgno == 0:
                break
            if 32 + (index + 1) * frame_size <= verify_limit:
                s0, s1 = wal_checksum(fh_bytes[:8], s0, s1, order)
                s0, s1 = wal_checksum(page, s0, s1, order)
                if (s0, s1) != (f_c1, f_c2):
                    break
            else:
                verified = False
            valid += 1
            if commit:
                committed = valid
                transactions += 1
                db_pages = commit
        out.update(frames_in_file=slots, valid_frames=valid, committed_frames=committed,
                   uncommitted_frames=valid - committed, transactions=transactions,
                   database_pages_after_replay=db_pages, verified=verified)
    return out
