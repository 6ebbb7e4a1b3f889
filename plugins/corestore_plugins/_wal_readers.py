"""Which processes hold a WAL snapshot open, read from ``/proc/locks`` (Linux), never from ``-shm``.

A reader in WAL mode holds a shared POSIX lock on one of the read-mark bytes of the ``-shm``
file for as long as its read transaction lasts (``wal.c``: ``WAL_READ_LOCK(I)`` is lock slot
``3+I``; the unix VFS places slot ``n`` at byte ``120+n`` of ``-shm``). Slots 1..4 pin a snapshot
that includes WAL frames: a checkpoint cannot copy the WAL past the oldest of them. Slot 0 means
"reading the database file only": such a reader keeps the file's pages as they were, so a
checkpoint cannot write into the file at all while it lasts (``walCheckpoint`` needs an exclusive
lock on ``WAL_READ_LOCK(0)`` before it backfills). Both kinds starve a checkpoint.

The kernel lists every POSIX lock in ``/proc/locks`` with the holder's pid and the file's device
and inode, so the holders are known without opening ``-shm``: corestore never opens and closes
a file its process has SQLite connections to (closing any descriptor drops the process's POSIX
locks on it), and sizes and inodes come from ``os.stat``. Elsewhere (macOS, a container without
``/proc``) the readers are unknown (None) and the governor says so.
"""
from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["READ_MARK_BYTES", "wal_readers", "process_name"]

logger = logging.getLogger(__name__)

#: Bytes of ``-shm`` locked by readers: WAL_READ_LOCK(0..4) (lock slots 3..7 at base 120).
READ_MARK_BYTES = range(123, 128)
_PROC_LOCKS = "/proc/locks"


def _file_id(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def wal_readers(db_path: str, *, locks_text: str | None = None) -> list[dict[str, Any]] | None:
    """The readers holding a snapshot of ``db_path``: ``[{"pid": int, "slot": 0..4}]`` (the
    calling process included: its own other connections), ``[]`` when none, None when the
    kernel does not say (no ``/proc/locks``). ``locks_text`` replaces the file (tests)."""
    ident = _file_id(db_path + "-shm")
    if ident is None:
        return []
    if locks_text is None:
        try:
            with open(_PROC_LOCKS, encoding="ascii", errors="replace") as fh:  # not a database file
                locks_text = fh.read()
        except OSError:
            return None
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for line in locks_text.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->":
            continue  # a waiter, not a holder
        kind, mode, pid_text, file_text, start_text, end_text = fields[1], fields[3], fields[4], fields[5], fields[6], fields[7]
        if kind not in ("POSIX", "OFDLCK") or mode != "READ":
            continue
        try:
            major, minor, inode = file_text.split(":")
            if (int(major, 16), int(minor, 16), int(inode)) != ident:
                continue
            start = int(start_text)
            end = int(end_text) if end_text != "EOF" else 1 << 62
            pid = int(pid_text)
        except ValueError:
            continue
        for byte in READ_MARK_BYTES:
            if start <= byte <= end:
                found[(pid, byte)] = {"pid": pid if pid > 0 else None, "slot": byte - 123}
    return sorted(found.values(), key=lambda r: (r["pid"] or 0, r["slot"]))


def process_name(pid: int | None) -> str | None:
    """The command name of ``pid`` (``/proc/PID/comm``), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None
