"""Sidecar files: the files corestore keeps beside a database (the init lock, the quarantine
marker, the dead-letter file, anything new), opened so that a hostile neighbour cannot steer them.

Every sidecar goes through this module, which enforces the rules on the operations page
("Hostile environments"):

* **Never the database.** :func:`sidecar_path` cannot return the database's own path, and
  :func:`unlink_sidecar` refuses to remove a file that starts with the SQLite header.
* **No symlinks, no surprises.** Opened with ``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a planted FIFO
  cannot hang the open); the opened file must be a regular file owned by this process's user or
  by the database file's owner. Temporaries are created with ``O_EXCL``.
* **Never more permissive than the database.** A new sidecar gets the database file's permission
  bits (without execute bits; 0600 when the database does not exist yet), the init lock only the
  bits of the database's writers (:func:`writers_mode`); an existing one that is more permissive
  is tightened when this process owns it and refused otherwise. The health
  snapshot is the one documented exception (``snapshot_world_readable``), and it does not use
  :func:`open_sidecar` for that reason.
* **Names that fit.** When ``<db><suffix>`` is longer than the directory allows (``NAME_MAX``),
  the sidecar gets a shortened, hashed name instead, so a long database name never silently
  loses its sidecar (see :func:`sidecar_path`).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat

__all__ = [
    "SQLITE_HEADER",
    "SidecarError",
    "sidecar_path",
    "sidecar_mode",
    "writers_mode",
    "open_sidecar",
    "create_temporary",
    "read_sidecar",
    "unlink_sidecar",
    "starts_with_sqlite_header",
]

logger = logging.getLogger(__name__)

#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class SidecarError(OSError):
    """A sidecar file is not what corestore would have created: a symlink, not a regular file,
    owned by another user, more permissive than the database, or the database itself.

    It is an ``OSError`` (``errno`` is ``ELOOP``, ``EPERM`` or ``EEXIST``), so code that already
    handles a failing sidecar handles this too; the message names the file and what to do."""


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory or ".", "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def sidecar_path(db_path: str, suffix: str) -> str:
    """The sidecar ``<db_path><suffix>``, or, when that name is too long for the directory, a
    shortened name ``<start of the db name>.<16 hex digits of SHA-256 of db_path><suffix>``.

    ``db_path`` should be the resolved path the store uses, so every process derives the same
    name. Raises :class:`SidecarError` if the result would be the database's own path.
    """
    if not suffix:
        raise ValueError("a sidecar needs a non-empty suffix")
    directory, base = os.path.split(db_path)
    name = base + suffix
    limit = _name_max(directory)
    if len(os.fsencode(name)) > limit:
        digest = hashlib.sha256(os.fsencode(db_path)).hexdigest()[:16]
        room = max(0, limit - len(os.fsencode(suffix)) - len(digest) - 1)
        head = os.fsencode(base)[:room].decode("utf-8", "ignore")
        name = f"{head}.{digest}{suffix}"
    result = os.path.join(directory, name)
    if os.path.abspath(result) == os.path.abspath(db_path):  # pragma: no cover - suffix is never empty
        raise SidecarError(errno.EEXIST, f"{db_path}: the sidecar path {suffix!r} would be the database itself")
    return result


def sidecar_mode(db_path: str) -> int:
    """Permission bits for a new sidecar of ``db_path``: the database file's read/write bits
    (never execute, never set-id), or 0600 when the database does not exist yet."""
    try:
        return stat.S_IMODE(os.stat(db_path).st_mode) & 0o666
    except OSError:
        return 0o600


def writers_mode(db_path: str) -> int:
    """Permission bits for a sidecar only the database's *writers* may open at all (the init
    lock: a reader of the lock file could hold a read lock on it and stall every writer): read
    and write for each class (owner, group, others) that may write the database. 0644 gives
    0600, 0664 gives 0660; 0600 when the database does not exist yet."""
    try:
        mode = stat.S_IMODE(os.stat(db_path).st_mode)
    except OSError:
        return 0o600
    out = 0
    for write_bit, rw in ((0o200, 0o600), (0o020, 0o060), (0o002, 0o006)):
        if mode & write_bit:
            out |= rw
    return out


def _db_owner(db_path: str) -> int | None:
    try:
        return os.stat(db_path).st_uid
    except OSError:
        return None


def _check_open(fd: int, path: str, db_path: str, *, tighten: bool = True, mode_mask: int = 0o666) -> None:
    """Type, owner and mode checks on an opened sidecar; raises :class:`SidecarError`."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SidecarError(errno.EPERM, f"{path}: is not a regular file; corestore refuses to use it as a sidecar "
                                        f"of {db_path} (remove it)")
    allowed = {os.geteuid()}
    owner = _db_owner(db_path)
    if owner is not None:
        allowed.add(owner)
    if st.st_uid not in allowed:
        raise SidecarError(errno.EPERM, f"{path}: owned by uid {st.st_uid}, neither this process's user "
                                        f"({os.geteuid()}) nor the owner of {db_path}; corestore refuses to use it (remove it)")
    try:
        head = os.pread(fd, len(SQLITE_HEADER), 0)
    except OSError:  # a write-only descriptor
        head = b""
    if head == SQLITE_HEADER:
        raise SidecarError(errno.EEXIST, f"{path}: is a SQLite database, not a sidecar of {db_path}; corestore never "
                                         "writes to or removes it")
    if tighten:
        mode = stat.S_IMODE(st.st_mode)
        wanted = sidecar_mode(db_path) & mode_mask
        if mode & ~wanted:
            if st.st_uid != os.geteuid():
                raise SidecarError(errno.EPERM, f"{path}: mode {mode:04o} is more permissive than the database "
                                                f"({wanted:04o}) and not ours to change; fix its mode or remove it")
            os.fchmod(fd, mode & wanted)
            logger.warning("%s: mode %04o was more permissive than the database (%04o); tightened to %04o",
                           path, mode, wanted, mode & wanted)


def open_sidecar(path: str, db_path: str, flags: int, *, create: bool = True, mode: int = 0o666) -> int:
    """Open the sidecar ``path`` of ``db_path`` with ``flags`` (``os.O_RDONLY``/``O_RDWR``/
    ``O_WRONLY`` plus e.g. ``O_APPEND``); ``create`` adds ``O_CREAT`` with :func:`sidecar_mode`
    narrowed by ``mode`` (e.g. 0o600 for a file that should stay private even beside a 0644
    database, or :func:`writers_mode` for the init lock). An existing sidecar opened for writing
    that is more permissive than that is tightened (ours) or refused (another user's).

    Returns a descriptor (close-on-exec, blocking) after the checks in the module docs. Raises
    ``FileNotFoundError`` (without ``create``), :class:`SidecarError`, or the ``OSError`` of the
    open (``ELOOP`` from a planted symlink becomes a :class:`SidecarError`).
    """
    if os.path.abspath(path) == os.path.abspath(db_path):
        raise SidecarError(errno.EEXIST, f"{path}: is the database itself, not a sidecar")
    base = flags | _CLOEXEC | _NOFOLLOW | _NONBLOCK
    wanted = sidecar_mode(db_path) & mode
    try:
        try:
            if not create:
                raise FileExistsError
            fd = os.open(path, base | os.O_CREAT | os.O_EXCL, wanted)
            os.fchmod(fd, wanted)  # exactly the database's bits, whatever the umask
        except FileExistsError:
            fd = os.open(path, base)
    except OSError as err:
        # ELOOP from O_NOFOLLOW; EACCES/EPERM where the kernel protects links in sticky directories
        if err.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(path):
            raise SidecarError(errno.ELOOP, f"{path}: is a symbolic link; corestore never follows a link for a "
                                            f"sidecar of {db_path} (remove it)") from None
        raise
    try:
        _check_open(fd, path, db_path, tighten=bool(flags & (os.O_WRONLY | os.O_RDWR)), mode_mask=mode)
        if _NONBLOCK:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_temporary(target: str, db_path: str) -> tuple[int, str]:
    """A new temporary file beside ``target`` (``O_EXCL | O_NOFOLLOW``, the sidecar mode), for
    an atomic replace of ``target``. Returns ``(fd, temporary path)``."""
    directory, base = os.path.split(target)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base[:200]}.{os.urandom(6).hex()}.tmp")
        mode = sidecar_mode(db_path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW, mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)  # exactly the database's bits, whatever the umask
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp
    raise SidecarError(errno.EEXIST, f"{target}: could not create a unique temporary file beside it")


def read_sidecar(path: str, db_path: str, *, limit: int = 1 << 20) -> bytes | None:
    """The bytes of the sidecar ``path`` (at most ``limit``), or None when it does not exist.
    Same checks as :func:`open_sidecar`, read-only (nothing is created or tightened)."""
    try:
        fd = open_sidecar(path, db_path, os.O_RDONLY, create=False)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def starts_with_sqlite_header(path: str) -> bool:
    """True when the file at ``path`` (not following a final symlink) starts with the SQLite header."""
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NOFOLLOW | _NONBLOCK)
    except OSError:
        return False
    try:
        return os.read(fd, len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False
    finally:
        os.close(fd)


def unlink_sidecar(path: str, db_path: str) -> bool:
    """Remove the sidecar ``path``; False when it did not exist. Refuses (:class:`SidecarError`)
    the database's own path and any file that starts with the SQLite header."""
    if os.path.abspath(path) == os.path.abspath(db_path) or (
        os.path.exists(db_path) and os.path.exists(path) and os.path.samefile(path, db_path)
    ):
        raise SidecarError(errno.EEXIST, f"{path}: is the database itself; corestore never removes it")
    if starts_with_sqlite_header(path):
        raise SidecarError(errno.EEXIST, f"{path}: starts with the SQLite header (it is a database, not a "
                                         "sidecar); corestore never removes it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
