"""What the operating system knows about a database file, asked without touching it: which
SQLite locks other processes hold (``F_OFD_GETLK``, else ``F_GETLK``, on SQLite's lock bytes:
no lock is taken), which processes have it open (``/proc/*/fd``), and which file system holds
it (NFS, SMB and FUSE break WAL's shared memory and POSIX locks).

Used by :mod:`corestore.doctor`; every function opens files read-only, so call them from a
process that has no SQLite connection to the file (closing a descriptor drops the process's
POSIX locks on it: see :mod:`corestore.sqlitefile`).
"""
from __future__ import annotations

import errno
import logging
import os
import struct
import sys
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "LockHolder",
    "probe_locks",
    "open_by_processes",
    "filesystem_type",
    "is_network_filesystem",
    "NETWORK_FILESYSTEMS",
    "PENDING_BYTE",
    "RESERVED_BYTE",
    "SHARED_FIRST",
    "SHARED_SIZE",
]

logger = logging.getLogger(__name__)

PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510

#: File-system types on which WAL's shared memory (mmap of ``-shm`` across processes) and POSIX
#: locks are not reliable. Also any ``fuse.*`` type.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "davfs", "fuse", "fuseblk", "virtiofs", "vboxsf", "vmhgfs", "prl_fs",
    "afpfs", "webdav", "macfuse", "osxfuse", "fusefs", "nfs3",
})


@attrs.frozen(kw_only=True)
class LockHolder:
    """A SQLite lock another process holds: which ``lock``, on which ``file`` (``db`` or
    ``shm``), ``mode`` ``read``/``write``, and the holder's ``pid`` when the kernel says."""

    file: str
    lock: str
    mode: str
    pid: int | None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        return f"{who}: {self.lock} ({self.mode} lock on {'-shm' if self.file == 'shm' else 'the database'})"


# -- lock probe -----------------------------------------------------------------------------------
_F_OFD_GETLK = 36  # Linux; fcntl.F_OFD_GETLK where Python exposes it


def _flock_format() -> str:
    if sys.platform.startswith("linux"):
        return "hhqqi4x"  # short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (+pad)
    return "qqihh"  # BSD/macOS: off_t l_start, off_t l_len, pid_t l_pid, short l_type, short l_whence


def _getlk(fd: int, start: int, length: int, cmd: int) -> tuple[int, int]:
    """Ask the kernel whether a write lock on ``[start, start+length)`` would conflict; returns
    ``(l_type, l_pid)`` of the conflicting lock (``F_UNLCK`` when none). Takes no lock."""
    import fcntl

    fmt = _flock_format()
    if fmt.startswith("hh"):
        buf = struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        l_type, _whence, _start, _len, pid = struct.unpack(fmt, fcntl.fcntl(fd, cmd, buf))
    else:
        buf = struct.pack(fmt, start, length, 0, fcntl.F_WRLCK, os.SEEK_SET)
        _start, _len, pid, l_type, _whence = struct.unpack(fmt, fcntl.fcntl(fd, cmd, buf))
    return l_type, pid


_DB_LOCKS = (("pending", PENDING_BYTE, 1), ("reserved", RESERVED_BYTE, 1), ("shared", SHARED_FIRST, SHARED_SIZE))
_SHM_LOCKS = (("wal-write", 120, 1), ("checkpoint", 121, 1), ("recovery", 122, 1), ("read-mark", 123, 5),
              ("connections", 128, 1))


def probe_locks(db_path: str, *, use_ofd: bool | None = None) -> tuple[str, list[LockHolder]]:
    """The SQLite locks other processes hold on ``db_path`` and its ``-shm``.

    Returns ``(method, holders)``; ``method`` is ``"F_OFD_GETLK"``, ``"F_GETLK"`` or
    ``"unsupported"``. Opens the files read-only and takes no lock. ``use_ofd=False`` forces
    the classic ``F_GETLK`` (which cannot see locks of the calling process; the doctor holds none).
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return "unsupported", []
    cmds: list[tuple[str, int]] = []
    if use_ofd is not False and sys.platform.startswith("linux"):
        cmds.append(("F_OFD_GETLK", getattr(fcntl, "F_OFD_GETLK", _F_OFD_GETLK)))
    cmds.append(("F_GETLK", fcntl.F_GETLK))
    holders: list[LockHolder] = []
    method = "unsupported"
    for label, target, locks in (("db", db_path, _DB_LOCKS), ("shm", db_path + "-shm", _SHM_LOCKS)):
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            for name, start, length in locks:
                for cmd_label, cmd in list(cmds):
                    try:
                        l_type, pid = _getlk(fd, start, length, cmd)
                    except OSError as err:
                        if err.errno in (errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", -1)) and len(cmds) > 1:
                            cmds.remove((cmd_label, cmd))  # an old kernel without OFD locks
                            continue
                        raise
                    method = cmd_label
                    if l_type != fcntl.F_UNLCK:
                        mode = "write" if l_type == fcntl.F_WRLCK else "read"
                        lock = "exclusive" if (label == "db" and name == "shared" and mode == "write") else name
                        holders.append(LockHolder(file=label, lock=lock, mode=mode, pid=pid if pid and pid > 0 else None))
                    break
        finally:
            os.close(fd)
    return method, holders


def open_by_processes(paths: Iterable[str]) -> dict[int, dict[str, Any]]:
    """Linux: the other processes with one of ``paths`` open (``/proc/*/fd``), as
    ``{pid: {"name": comm, "files": [...]}}``. Best effort: processes of other users are only
    visible to root. Empty elsewhere."""
    targets = {os.path.realpath(p): p for p in paths}
    found: dict[int, dict[str, Any]] = {}
    if not os.path.isdir("/proc/self/fd"):
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link in targets:
                info = found.setdefault(int(entry), {"name": _comm(entry), "files": []})
                if link not in info["files"]:
                    info["files"].append(link)
    return found


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


# -- file systems ------------------------------------------------------------------------------------
def _unescape_mount(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: str, *, mountinfo: str | None = None) -> dict[str, str] | None:
    """``{"type", "mount_point", "source"}`` of the file system holding ``path`` (Linux:
    ``/proc/self/mountinfo``, or the text given; macOS: ``statfs``); None when unknown."""
    real = os.path.realpath(path)
    if mountinfo is None:
        if sys.platform == "darwin":
            return _darwin_filesystem(real)
        try:
            with open("/proc/self/mountinfo") as fh:
                mountinfo = fh.read()
        except OSError:
            return None
    best: dict[str, str] | None = None
    best_len = -1
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        mount_point = _unescape_mount(fields[4])
        prefix = mount_point.rstrip("/") + "/"
        if real == mount_point or real.startswith(prefix) or mount_point == "/":
            if len(mount_point) >= best_len:  # the longest match; the last mounted wins a tie
                best_len = len(mount_point)
                best = {"type": rest[0], "mount_point": mount_point, "source": _unescape_mount(rest[1])}
    return best


def _darwin_filesystem(path: str) -> dict[str, str] | None:  # pragma: no cover - macOS only
    try:
        import ctypes

        class StatFs(ctypes.Structure):
            _fields_ = [
                ("f_bsize", ctypes.c_uint32), ("f_iosize", ctypes.c_int32), ("f_blocks", ctypes.c_uint64),
                ("f_bfree", ctypes.c_uint64), ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
                ("f_ffree", ctypes.c_uint64), ("f_fsid", ctypes.c_int32 * 2), ("f_owner", ctypes.c_uint32),
                ("f_type", ctypes.c_uint32), ("f_flags", ctypes.c_uint32), ("f_fssubtype", ctypes.c_uint32),
                ("f_fstypename", ctypes.c_char * 16), ("f_mntonname", ctypes.c_char * 1024),
                ("f_mntfromname", ctypes.c_char * 1024), ("f_flags_ext", ctypes.c_uint32),
                ("f_reserved", ctypes.c_uint32 * 7),
            ]

        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fn = libc["statfs$INODE64"]
        except AttributeError:
            fn = libc.statfs
        buf = StatFs()
        if fn(os.fsencode(path), ctypes.byref(buf)) != 0:
            return None
        return {"type": buf.f_fstypename.decode(), "mount_point": buf.f_mntonname.decode(),
                "source": buf.f_mntfromname.decode()}
    except Exception:
        return None


def is_network_filesystem(fstype: str) -> bool:
    """True for NFS, SMB/CIFS, FUSE and the other types in :data:`NETWORK_FILESYSTEMS`."""
    t = fstype.lower()
    return t in NETWORK_FILESYSTEMS or t.startswith("fuse.") or t.startswith("nfs")

