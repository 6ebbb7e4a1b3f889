"""Verified backups: ``store.backup(dest)`` and ``corestore backup SRC DEST``.

**When.** Whenever a copy of a live database is taken. **Why.** A backup is only as good as the
check that it opens and passes ``quick_check``; a copy renamed into place before it was synced and
verified can be a torn or damaged file that looks like a backup.

The sequence (each step's failure leaves ``dest`` exactly as it was):

1. **Refuse** when ``dest`` is the database itself, when a ``dest-wal`` or ``dest-journal`` lies
   beside it (SQLite would apply that stale journal to the new file when it is next opened), or
   when ``dest`` is open (a store of this process, or a lock another process holds on it).
2. **Copy** through SQLite's online backup API into a new temporary file beside ``dest``
   (created ``O_EXCL | O_NOFOLLOW`` by :func:`corestore.sidecar.create_temporary`, the database's
   permission bits), ``step_pages`` pages per step, ``progress(copied, total)`` after each.
3. **fsync** the temporary file, **verify** it with ``PRAGMA quick_check`` (``verify =
   "integrity_check"`` on request) through a fresh connection of the same driver, fsync again.
4. **Rename** it onto ``dest`` and fsync the directory.

On any failure the temporary file (and any ``-wal``/``-shm``/``-journal`` SQLite made beside it)
is removed, so no file that looks like a valid backup is left at ``dest`` or beside it.

Errors are classified like every other store error. A fault while copying is attributed by its
SQLite code: read-side codes (``IOERR_READ``, ``IOERR_SHORT_READ``, ``IOERR_CORRUPTFS``,
``CORRUPT``, ``NOTADB``) concern the source database and are reported through ``on_fatal`` as
usual; every other fault concerns the destination and is raised (classified, ``committed=False``)
without ``on_fatal``: a full backup disk must not trip the source database's circuit breaker or
quarantine it. The operation's kind is ``"backup"``.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import attrs

from .errors import Classification, CorruptionError, ErrorKind, StoreError
from .operation import Operation
from .raising import classify, exception_for, failed
from .sidecar import create_temporary
from .statements import acquire_for

__all__ = ["VERIFY_CHECKS", "BackupRefused", "run_backup"]

logger = logging.getLogger(__name__)

#: Allowed values of ``verify``.
VERIFY_CHECKS = ("quick_check", "integrity_check")

# Result codes that can only come from reading the source database.
_SOURCE_EXTENDED = frozenset({266, 522, 8458})  # IOERR_READ, IOERR_SHORT_READ, IOERR_CORRUPTFS
_SOURCE_PRIMARY = frozenset({11, 26, 5, 6})  # CORRUPT, NOTADB, BUSY, LOCKED


class BackupRefused(StoreError):
    """``store.backup(dest)`` refused before copying anything: ``dest`` is the database itself,
    has a stale ``-wal``/``-journal`` beside it, or is open. Nothing was written."""


def _refused(store: Any, dest: str, why: str, name: str) -> BackupRefused:
    return BackupRefused(
        f"{store.path}: backup to {dest} refused: {why}",
        classification=Classification(kind=ErrorKind.PROGRAMMING, name=name, message=why, source="backup"),
        committed=False, path=store.path,
    )


def _preflight(store: Any, dest: str) -> None:
    real = os.path.realpath(dest)
    if store.memory:
        raise _refused(store, dest, "an in-memory database has no file to copy from this process's "
                                    "view of other processes; use VACUUM INTO", "BACKUP_MEMORY")
    if real == os.path.realpath(store.path):
        raise _refused(store, dest, "the destination is the database itself", "BACKUP_SELF")
    if os.path.isdir(real):
        raise _refused(store, dest, "the destination is a directory; give the path of the copy", "BACKUP_DIRECTORY")
    for suffix in ("-wal", "-journal"):
        if os.path.lexists(real + suffix):
            raise _refused(store, dest, f"{real + suffix} exists beside it: SQLite would apply that stale "
                                        f"journal to the new copy when it is next opened (move it away first)",
                           "BACKUP_STALE_JOURNAL")
    from . import opening

    if real in opening._drivers:
        raise _refused(store, dest, "the destination is open in this process (a corestore store); close it first",
                       "BACKUP_DEST_OPEN")
    if os.path.exists(real):
        from .osprobe import probe_locks  # the destination has no connection in this process (checked above)

        _method, holders = probe_locks(real)
        if holders:
            who = ", ".join(sorted({f"pid {h.pid}" if h.pid else "another process" for h in holders}))
            raise _refused(store, dest, f"the destination is open: {who} holds SQLite locks on it", "BACKUP_DEST_OPEN")


def _remove_temporary(tmp: str) -> None:
    for path in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("%s: could not remove a failed backup's temporary file", path, exc_info=True)


def _fsync_path(path: str, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)  # no SQLite connection has this file open now (safety rule 2)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(driver: str, path: str) -> Any:
    if driver == "apsw":
        import apsw

        return apsw.Connection(path)
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _copy(store: Any, conn: Any, tmp: str, step_pages: int,
          progress: Callable[[int, int], None] | None) -> int:
    """Copy the database into ``tmp``; returns the page count."""
    target = _connect(store.profile.driver, tmp)
    pages = 0
    try:
        if store.profile.driver == "apsw":
            with target.backup("main", conn, "main") as b:
                while not b.done:
                    b.step(step_pages)
                    pages = b.page_count
                    if progress is not None:
                        progress(b.page_count - b.remaining, b.page_count)
        else:
            def report(_status: int, remaining: int, total: int) -> None:
                nonlocal pages
                pages = total
                if progress is not None:
                    progress(total - remaining, total)

            conn.backup(target, pages=step_pages, progress=report)
            if pages == 0:
                pages = int(target.execute("PRAGMA page_count").fetchone()[0])
    finally:
        target.close()
    return pages


def _verify(store: Any, tmp: str, check: str) -> list[str]:
    """Run ``check`` on the copy through a fresh connection; returns its rows (``["ok"]`` when good)."""
    conn = _connect(store.profile.driver, tmp)
    try:
        return [str(row[0]) for row in conn.execute(f"PRAGMA {check}").fetchall()]
    finally:
        conn.close()


def _is_source_fault(c: Classification) -> bool:
    ext = c.extended_code if c.extended_code is not None else c.code
    primary = c.code if c.code is not None else (ext & 0xFF if ext is not None else None)
    return (ext in _SOURCE_EXTENDED) or (primary in _SOURCE_PRIMARY)


def run_backup(store: Any, dest: str | os.PathLike[str], *, verify: str = "quick_check",
               progress: Callable[[int, int], None] | None = None, step_pages: int = 256) -> dict[str, Any]:
    """Copy ``store``'s database to ``dest`` (see the module docs); returns ``{"path", "pages",
    "bytes", "verified"}``. Raises :class:`BackupRefused`, a classified
    :class:`~corestore.StoreError` for a fault, or :class:`~corestore.CorruptionError` when the
    copy fails verification."""
    if verify not in VERIFY_CHECKS:
        raise _refused(store, os.fspath(dest), f"verify = {verify!r} is not allowed; allowed: "
                                               f"{', '.join(VERIFY_CHECKS)}", "BACKUP_BAD_VERIFY")
    if int(step_pages) < 1:
        raise _refused(store, os.fspath(dest), f"step_pages = {step_pages!r} must be >= 1", "BACKUP_BAD_STEP")
    dest = os.path.abspath(os.fspath(dest))
    _preflight(store, dest)
    try:
        fd, tmp = create_temporary(dest, store.path)
    except OSError as err:
        raise _destination_error(store, dest, err, "create the temporary file") from err
    os.close(fd)  # SQLite opens it by name; nothing of ours is open on it
    try:
        pages = _copy_as_operation(store, tmp, step_pages, progress)
        try:
            _fsync_path(tmp)
            rows = _verify(store, tmp, verify)
        except Exception as err:
            if isinstance(err, StoreError):
                raise
            raise _destination_error(store, dest, err, f"sync or verify the copy ({verify})") from err
        if rows != ["ok"]:
            shown = "; ".join(rows[:5])
            raise CorruptionError(
                f"{store.path}: the backup copy failed {verify} ({shown}); nothing was written to {dest}. "
                "The source may be damaged: run `corestore doctor` on it.",
                classification=Classification(kind=ErrorKind.CORRUPT, name="BACKUP_VERIFY_FAILED",
                                              message=shown[:200], source="backup"),
                committed=False, path=store.path,
            )
        try:
            for side in (tmp + "-wal", tmp + "-journal"):
                if os.path.exists(side):  # the verification's connection closed cleanly: none expected
                    raise OSError(f"{side} left behind by the verification")
            _fsync_path(tmp)
            os.replace(tmp, dest)
            _fsync_path(os.path.dirname(dest) or ".", directory=True)
        except OSError as err:
            raise _destination_error(store, dest, err, "rename the verified copy into place") from err
    except BaseException:
        _remove_temporary(tmp)
        raise
    _remove_temporary(tmp)  # only the -shm a verification may leave (tmp itself was renamed)
    size = os.stat(dest).st_size
    logger.info("%s: backup of %d pages verified (%s) and written to %s", store.path, pages, verify, dest)
    return {"path": dest, "pages": pages, "bytes": size, "verified": verify}


def _copy_as_operation(store: Any, tmp: str, step_pages: int,
                       progress: Callable[[int, int], None] | None) -> int:
    """Run the copy as one operation of kind ``"backup"`` (policies before, connection of this
    thread); source faults are reported as the store's, destination faults only raised."""
    if store.database.in_transaction():
        raise _refused(store, tmp, "backup() cannot run inside a transaction", "IN_TRANSACTION")
    op = Operation(kind="backup", name="backup")
    try:
        store.hooks.before_operation(store, op)
        record = acquire_for(store, op, True)
        try:
            return _copy(store, record.conn, tmp, step_pages, progress)
        except Exception as err:
            c = classify(store, err, op)
            if _is_source_fault(c):
                raise failed(store, err, op, committed=False, report=True, classification=c) from err
            c = attrs.evolve(c, source="backup")
            raise exception_for(store, err, c, committed=False) from err
        finally:
            store.database.release(record)
    finally:
        store.hooks.after_operation(store, op)


def _destination_error(store: Any, dest: str, err: BaseException, what: str) -> StoreError:
    from .errors import FatalError

    if isinstance(err, StoreError):
        return err
    code = getattr(err, "errno", None)
    kind = ErrorKind.FULL if code == 28 else ErrorKind.FATAL_IO
    return FatalError(
        f"{store.path}: backup to {dest}: could not {what}: {type(err).__name__}: {err}; nothing was written to "
        f"{dest}",
        classification=Classification(kind=kind, name="BACKUP_DESTINATION", message=str(err)[:200], source="backup"),
        committed=False, path=store.path,
    )
