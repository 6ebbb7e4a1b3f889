"""Durable file writes for the core and plugins: replace a file atomically (readers see the old
complete file or the new one, never a torn one) and fsync a directory so a created or renamed
entry survives a power cut.

When: any small state file a plugin writes beside the database (a health snapshot, a
quarantine marker, a dead-letter file). Why one copy: three hand-written ones differed in what
they did when the directory fsync failed; here the caller says it (``required``).

Third-party plugins::

    from corestore.fileio import atomic_write
    atomic_write(path, json.dumps(state).encode(), mode=0o600)
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

__all__ = ["atomic_write", "fsync_directory", "write_all"]

logger = logging.getLogger(__name__)


def write_all(fd: int, payload: bytes) -> None:
    """``os.write`` until every byte of ``payload`` is written (a short write is not an error)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(directory: str, *, required: bool = True) -> None:
    """fsync ``directory`` (``""`` is the current one) so an entry created or renamed in it is
    durable. ``required=False``: best effort, an error (a file system that refuses a directory
    fsync, a platform without directory descriptors) is ignored; otherwise it is raised."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        if required:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if required:
            raise
    finally:
        os.close(fd)


def _mkstemp(path: str) -> tuple[int, str]:
    directory = os.path.dirname(path) or "."
    return tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)


def atomic_write(path: str, payload: bytes, *, fsync: bool = True, mode: int | None = 0o644,
                 temporary: Callable[[str], tuple[int, str]] = _mkstemp,
                 directory_fsync_required: bool = True) -> None:
    """Replace ``path`` with ``payload`` atomically: a temporary file in the same directory
    (``temporary(path)`` returns its descriptor and name; by default ``O_EXCL``, never through a
    planted link), write, fsync, rename over ``path``, fsync the directory. ``mode`` is set on
    the temporary (None: keep what ``temporary`` created). ``fsync=False`` skips both fsyncs (the
    rename is still atomic, but not durable across a power cut). Raises ``OSError``; the
    temporary is removed on failure. ``directory_fsync_required=False``: a directory fsync the
    file system refuses is ignored (see :func:`fsync_directory`)."""
    fd, tmp = temporary(path)
    try:
        write_all(fd, payload)
        if mode is not None:
            os.fchmod(fd, mode)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if fsync:
        fsync_directory(os.path.dirname(path), required=directory_fsync_required)
