"""The offline doctor, and the ``doctor`` and ``health`` commands of the CLI.

``corestore doctor PATH`` diagnoses a SQLite file from its own process, without any profile, and
changes nothing: it reads the header and the side files with plain reads, asks the kernel which
SQLite locks other processes hold (``F_OFD_GETLK``, else ``F_GETLK``, on SQLite's lock bytes: it
takes no lock itself), and only then opens SQLite read-only (``mode=ro``) for ``quick_check``
(``integrity_check`` with ``--integrity``). No byte of the database or of ``-wal`` changes
(SQLite may rebuild ``-shm``, the shared-memory index, which holds no data); a missing file is
never created. Incident 002 is why: its "doctor" and its automatic "cleanup" deleted ``-wal`` and
``-shm`` files that can hold committed transactions. This doctor reports a leftover ``-wal``
(how many committed transactions it holds, verified with the WAL checksums) and says what to do;
it never "fixes" one.

Two cases where opening SQLite, even read-only, would change files are handled without it:

* a database file of 0 bytes next to a non-empty ``-wal``: SQLite *deletes* such a ``-wal`` on
  open; the doctor reports it and does not open SQLite;
* a WAL-mode file with no ``-wal`` and no other process: a read-only connection would leave an
  empty ``-wal`` and a ``-shm`` behind; the doctor reads it with ``immutable=1`` instead (nobody
  holds it), then checks that the file did not change meanwhile (else it checks again ``mode=ro``).

``corestore health NAME|PATH`` prints a store's :class:`~corestore.HealthReport`: from the
snapshot its profile's ``health`` plugin writes (when it does, and the writing process is still
alive and has not closed the store), else by opening the database read-only through its profile
(``mode=ro``: the journal mode is never switched, no snapshot is written).

Exit codes (both commands): 0 UP, 1 DEGRADED, 2 DOWN, 64 usage or configuration error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import enum
import errno
import json
import os
import socket
import sqlite3
import stat
import struct
import sys
import time
import urllib.parse
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import attrs

from .cli import EXIT_USAGE, command, config_path
from .errors import ConfigError, StoreError
from .health import HealthStatus, to_jsonable, worst_status
from .sidecar import read_sidecar, sidecar_path, unlink_sidecar
from .sqlitefile import parse_header

__all__ = [
    "Severity",
    "Finding",
    "Diagnosis",
    "LockHolder",
    "diagnose",
    "probe_locks",
    "read_wal_summary",
    "filesystem_type",
    "is_network_filesystem",
    "open_by_processes",
    "read_quarantine_marker",
    "clear_quarantine_marker",
    "format_diagnosis",
    "format_health",
    "NETWORK_FILESYSTEMS",
    "QUARANTINE_SUFFIX",
    "DOCTOR_SCHEMA",
    "run_doctor",
    "run_health",
]

DOCTOR_SCHEMA = 1
QUARANTINE_SUFFIX = ".corestore-quarantine"

PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
WAL_MAGICS = (0x377F0682, 0x377F0683)
JOURNAL_MAGIC = b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7"
WAL_VERIFY_LIMIT = 64 * 1024 * 1024  # checksum-verify at most this much -wal (pure Python)

#: File-system types on which WAL's shared memory (mmap of ``-shm`` across processes) and POSIX
#: locks are not reliable. Also any ``fuse.*`` type.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "davfs", "fuse", "fuseblk", "virtiofs", "vboxsf", "vmhgfs", "prl_fs",
    "afpfs", "webdav", "macfuse", "osxfuse", "fusefs", "nfs3",
})


class Severity(str, enum.Enum):
    """How bad a finding is: ``error`` makes the diagnosis DOWN, ``warning`` DEGRADED."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def status(self) -> HealthStatus:
        return {Severity.ERROR: HealthStatus.DOWN, Severity.WARNING: HealthStatus.DEGRADED}.get(self, HealthStatus.UP)

    def __str__(self) -> str:
        return self.value


def _freeze(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen(kw_only=True)
class Finding:
    """One check's result: a severity, what was found, one line of advice (empty when all is well)."""

    check: str
    severity: Severity = attrs.field(converter=Severity)
    message: str
    advice: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze, eq=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity.value, "message": self.message,
                "advice": self.advice, "details": to_jsonable(self.details)}


@attrs.frozen(kw_only=True)
class Diagnosis:
    """Every finding for one path. ``status`` is the worst severity's status; ``usage_error``
    marks a PATH that is not something a database can be (a directory): exit 64."""

    path: str
    findings: tuple[Finding, ...]
    checked_at: _dt.datetime
    usage_error: bool = False

    @property
    def status(self) -> HealthStatus:
        return worst_status([f.severity.status for f in self.findings]) if self.findings else HealthStatus.UNKNOWN

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.usage_error else self.status.exit_code

    def finding(self, check: str) -> Finding | None:
        """The first finding of ``check`` (None when that check did not run)."""
        return next((f for f in self.findings if f.check == check), None)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document; the schema is documented on the CLI page and stable."""
        return {
            "schema": DOCTOR_SCHEMA,
            "command": "doctor",
            "path": self.path,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "checked_at": self.checked_at.isoformat(),
            "findings": [f.to_dict() for f in self.findings],
        }


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


# -- WAL ------------------------------------------------------------------------------------------
def _wal_checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
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
        if _wal_checksum(header[:24], 0, 0, order) != (c1, c2):
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
                s0, s1 = _wal_checksum(fh_bytes[:8], s0, s1, order)
                s0, s1 = _wal_checksum(page, s0, s1, order)
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


# -- quarantine marker --------------------------------------------------------------------------------
def _quarantine_module() -> Any:
    try:
        import corestore_plugins.quarantine as module  # lazily: a plugin, imported only when asked
    except ImportError:
        return None
    return module if hasattr(module, "read_marker") else None


def _marker_of(db_path: str) -> str:
    return sidecar_path(db_path, QUARANTINE_SUFFIX)


def read_quarantine_marker(db_path: str) -> dict[str, Any] | None:
    """The quarantine marker of ``db_path`` (``<db>.corestore-quarantine``), or None. A marker
    that cannot be used (not UTF-8, not JSON, a symlink, another user's file) is reported as
    ``{"unreadable": True, "error": ...}``, never raised."""
    module = _quarantine_module()
    if module is not None:
        return module.read_marker(db_path)
    marker = _marker_of(db_path)
    try:
        raw = read_sidecar(marker, db_path)
    except OSError as err:
        return {"unreadable": True, "error": f"{type(err).__name__}: {err}"}
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is a ValueError
        return {"unreadable": True, "error": f"{type(err).__name__}: {err}", "raw": raw[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"value": data}


def clear_quarantine_marker(db_path: str) -> dict[str, Any] | None:
    """Remove the marker (through the quarantine plugin when installed); returns what it said.
    Never the database: a path that is the database or starts with the SQLite header is refused
    with :class:`~corestore.sidecar.SidecarError`."""
    module = _quarantine_module()
    if module is not None and hasattr(module, "clear_marker"):
        return module.clear_marker(db_path)
    marker = read_quarantine_marker(db_path)
    if marker is not None and not unlink_sidecar(_marker_of(db_path), db_path):
        return None
    return marker


# -- the diagnosis ------------------------------------------------------------------------------------
def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def _owner(st: os.stat_result) -> str:
    try:
        import grp
        import pwd

        user = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except (ImportError, KeyError):
        return f"{st.st_uid}:{st.st_gid}"
    return f"{user}:{group} ({st.st_uid}:{st.st_gid})"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _describe_bytes(data: bytes) -> str:
    if not data:
        return "it is empty"
    if not data.strip(b"\x00"):
        return "its first bytes are all zero (a file zeroed or cut short by a crash or a failed copy)"
    known = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip file", b"\x7fELF": "an executable",
             b"%PDF": "a PDF", b"{": "JSON text", b"[": "JSON text", b"SQLite format 3": "a truncated SQLite header"}
    for prefix, what in known.items():
        if data.startswith(prefix):
            return f"it looks like {what}"
    shown = data[:16]
    return "it starts with " + (repr(shown.decode("ascii")) if shown.isascii() and shown.decode("ascii").isprintable()
                                else shown.hex(" "))


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    st = _stat(path)
    return None if st is None else (st.st_size, st.st_mtime_ns, st.st_ino)


def diagnose(
    path: str | os.PathLike[str],
    *,
    integrity: bool = False,
    progress: Callable[[float], None] | None = None,
    busy_timeout_s: float = 2.0,
    use_ofd: bool | None = None,
    mountinfo: str | None = None,
) -> Diagnosis:
    """Diagnose the SQLite file at ``path`` read-only. Never creates a missing file, never
    writes the database or its ``-wal``; see the module docstring for what is checked.

    ``integrity`` runs ``integrity_check`` instead of ``quick_check``; ``progress(seconds)`` is
    called periodically while it runs; ``use_ofd=False`` forces ``F_GETLK``; ``mountinfo`` replaces
    ``/proc/self/mountinfo`` (tests).
    """
    given = os.fspath(path)
    full = os.path.abspath(os.path.expanduser(given))
    real = os.path.realpath(full)
    findings: list[Finding] = []
    add = findings.append

    def done(usage_error: bool = False) -> Diagnosis:
        return Diagnosis(path=real, findings=tuple(findings), checked_at=_dt.datetime.now(_dt.timezone.utc),
                         usage_error=usage_error)

    sides = {name: real + suffix for name, suffix in (("wal", "-wal"), ("shm", "-shm"), ("journal", "-journal"))}
    side_stats = {name: _stat(p) for name, p in sides.items()}

    # -- the file itself --------------------------------------------------------------------------
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None
    except PermissionError as err:
        add(Finding(check="file", severity=Severity.ERROR, message=f"cannot stat the file: {err.strerror}",
                    advice="run the doctor as the database's owner or as root"))
        return done()
    if st is None:
        add(Finding(check="file", severity=Severity.ERROR, message="no such file (the doctor never creates one)",
                    advice="check the path; if the database was moved or deleted, restore it from a copy"))
        wal = side_stats["wal"]
        if wal is not None and wal.st_size > 0:
            add(Finding(check="wal", severity=Severity.ERROR,
                        message=f"a -wal of {wal.st_size} bytes exists without its database: it may hold committed transactions",
                        advice="do not delete it; copy the -wal (and -shm) aside and restore the database file next to it"))
        elif any(side_stats.values()):
            names = ", ".join(f"-{n}" for n, s in side_stats.items() if s is not None)
            add(Finding(check="side-files", severity=Severity.WARNING, message=f"{names} present without the database",
                        advice="leave them in place until the database file is restored"))
        _quarantine_finding(real, add)
        return done()
    if stat.S_ISDIR(st.st_mode):
        add(Finding(check="file", severity=Severity.ERROR, message="is a directory, not a database file",
                    advice="give the path of the database file inside it"))
        return done(usage_error=True)
    if not stat.S_ISREG(st.st_mode):
        add(Finding(check="file", severity=Severity.ERROR,
                    message=f"not a regular file ({stat.filemode(st.st_mode)[0]!r} type); not opened",
                    advice="give the path of a database file"))
        return done()
    link_note = f" (via symlink {full})" if full != real else ""
    add(Finding(check="file", severity=Severity.OK,
                message=f"regular file, {_human_size(st.st_size)}, owner {_owner(st)}, mode {stat.filemode(st.st_mode)}{link_note}",
                details={"size": st.st_size, "uid": st.st_uid, "gid": st.st_gid, "mode": oct(stat.S_IMODE(st.st_mode)),
                         "symlink": full if full != real else None}))

    # -- header --------------------------------------------------------------------------------------
    try:
        with open(real, "rb") as fh:
            head = fh.read(100)
    except PermissionError as err:
        add(Finding(check="header", severity=Severity.ERROR, message=f"cannot read the file: {err.strerror}",
                    advice="run the doctor as the database's owner or as root"))
        _permissions_finding(real, st, side_stats, add)
        _quarantine_finding(real, add)
        return done()
    header = parse_header(head)
    is_database = header is not None or st.st_size == 0
    wal_stat = side_stats["wal"]
    if st.st_size == 0:
        add(Finding(check="header", severity=Severity.INFO, message="empty file: SQLite treats it as a new, empty database",
                    details={"size": 0}))
    elif header is None:
        add(Finding(check="header", severity=Severity.ERROR,
                    message=f"not a SQLite database: {_describe_bytes(head)}",
                    advice="check the path; a damaged header is not repairable in place: restore from a copy",
                    details={"first_bytes": head[:16].hex()}))
    else:
        _header_findings(header, st.st_size, wal_stat, add)

    # -- locks and processes ----------------------------------------------------------------------------
    holders: list[LockHolder] = []
    openers: dict[int, dict[str, Any]] = {}
    if is_database:
        try:
            method, holders = probe_locks(real, use_ofd=use_ofd)
        except OSError as err:
            method = f"failed: {err.strerror}"
        openers = open_by_processes([real] + [p for n, p in sides.items() if side_stats[n] is not None])
        _locks_finding(method, holders, openers, header, add)
    in_use = bool(holders or openers)

    # -- side files ----------------------------------------------------------------------------------------
    if is_database:
        _wal_findings(real, st, header, wal_stat, side_stats["shm"], in_use, add)
        _journal_findings(real, side_stats["journal"], holders, header, add)

    # -- SQLite: journal mode and quick_check --------------------------------------------------------------
    if is_database:
        if st.st_size == 0 and wal_stat is not None and wal_stat.st_size > 0:
            add(Finding(check="quick_check", severity=Severity.INFO,
                        message="not run: SQLite deletes the -wal of an empty database file when it opens it",
                        advice="copy the database file and its -wal aside before any program opens them"))
        elif _hot_journal(side_stats["journal"], real, holders):
            add(Finding(check="quick_check", severity=Severity.INFO,
                        message="not run: a read-only connection cannot roll back the hot journal",
                        advice="let the application (read-write) open it once, then run the doctor again"))
        else:
            _sqlite_findings(real, header, wal_stat, in_use, integrity, progress, busy_timeout_s, add)

    # -- environment ----------------------------------------------------------------------------------------
    _permissions_finding(real, st, side_stats, add)
    _space_finding(real, st.st_size + (wal_stat.st_size if wal_stat else 0), add)
    _filesystem_finding(real, header, mountinfo, add)
    _quarantine_finding(real, add)
    _version_gate_finding(add)
    return done()


def _version_gate_finding(add: Callable[[Finding], None]) -> None:
    """The known SQLite corruption bugs of each driver this Python can use (the version gate,
    :mod:`corestore.sqlitebugs`): INFO, since the doctor cannot know which driver the
    application uses; the application's own health carries it as a finding of its store."""
    from .sqlitebugs import affecting, linked_version

    drivers = ["sqlite3"]
    try:
        import apsw  # noqa: F401

        drivers.append("apsw")
    except ImportError:
        pass
    versions = {d: linked_version(d) for d in drivers}
    bugs = {d: affecting(versions[d]) for d in drivers}
    details = {d: {"sqlite_version": versions[d], "bugs": [b.to_dict() for b in bugs[d]]} for d in drivers}
    hit = [d for d in drivers if bugs[d]]
    if not hit:
        add(Finding(check="sqlite_version", severity=Severity.OK,
                    message="; ".join(f"{d}: SQLite {versions[d]}, no known corruption bug" for d in drivers),
                    details=details))
        return
    text = "; ".join(f"{d}: SQLite {versions[d]} has {', '.join(b.id + ' (' + b.page + ', fixed in ' + b.fixed_in + ')' for b in bugs[d])}"
                     for d in hit)
    fixed = [d for d in drivers if not bugs[d]]
    advice = bugs[hit[0]][0].advice
    if fixed:
        advice = f"driver {fixed[0]!r} links a fixed SQLite ({versions[fixed[0]]}): use it; " + advice
    add(Finding(check="sqlite_version", severity=Severity.INFO, message=text, advice=advice, details=details))


def _header_findings(header: Any, size: int, wal_stat: os.stat_result | None, add: Callable[[Finding], None]) -> None:
    mode = {(1, 1): "rollback", (2, 2): "WAL"}.get((header.write_version, header.read_version))
    details = {"page_size": header.page_size, "page_count": header.page_count, "write_version": header.write_version,
               "read_version": header.read_version, "change_counter": header.change_counter,
               "journal_mode": "wal" if header.is_wal else ("rollback" if mode else "unknown")}
    ps = header.page_size
    if ps < 512 or ps > 65536 or ps & (ps - 1):
        add(Finding(check="header", severity=Severity.ERROR, message=f"invalid page size {ps} in the header",
                    advice="the header is damaged: restore from a copy", details=details))
        return
    if mode is None:
        add(Finding(check="header", severity=Severity.WARNING,
                    message=f"unusual file-format bytes 18-19 = {header.write_version}/{header.read_version}",
                    advice="written by a newer SQLite or damaged; open it with a current sqlite3 to check", details=details))
        return
    counted = header.version_valid_for == header.change_counter and header.page_count > 0
    expected = header.page_count * ps if counted else None
    pages = f"{header.page_count} page{'s' if header.page_count != 1 else ''}" if counted else "? pages"
    text = (f"SQLite 3, page size {ps}, {pages}, journal mode {mode} "
            f"(bytes 18-19 = {header.write_version}/{header.read_version})")
    if expected is not None and size < expected:
        wal_note = wal_stat is not None and wal_stat.st_size > 0 and header.is_wal
        add(Finding(check="header",
                    severity=Severity.WARNING if wal_note else Severity.ERROR,
                    message=f"{text}; the file is {size} bytes but the header counts {expected}",
                    advice=("the missing pages may still be in -wal; do not delete it" if wal_note else
                            "the file was truncated: stop writers, copy it with its -journal, restore from a copy or run .recover"),
                    details=details))
        return
    if size % ps:
        add(Finding(check="header", severity=Severity.WARNING,
                    message=f"{text}; the size {size} is not a multiple of the page size",
                    advice="a partial page at the end: an interrupted copy or write; run with --integrity", details=details))
        return
    add(Finding(check="header", severity=Severity.OK, message=text, details=details))


def _locks_finding(method: str, holders: list[LockHolder], openers: dict[int, dict[str, Any]], header: Any,
                   add: Callable[[Finding], None]) -> None:
    details = {"method": method, "locks": [attrs.asdict(h) for h in holders],
               "processes": {str(pid): info for pid, info in sorted(openers.items())}}
    if not holders and not openers:
        quiet = ("no other process holds a SQLite lock or has the file open"
                 if os.path.isdir("/proc/self/fd") else "no other process holds a SQLite lock")
        note = " (an idle rollback-journal connection holds no lock)" if header is not None and not header.is_wal else ""
        add(Finding(check="locks", severity=Severity.OK, message=f"{quiet}{note}; probed with {method}", details=details))
        return
    parts = []
    writer = [h for h in holders if h.lock in ("reserved", "pending", "exclusive", "wal-write")]
    if writer:
        parts.append("a write transaction is open (" + "; ".join(h.describe() for h in writer) + ")")
    readers = [h for h in holders if h.lock in ("shared", "read-mark", "connections")]
    if readers:
        pids = sorted({h.pid for h in readers if h.pid})
        parts.append("connections are open" + (f" (pid {', '.join(map(str, pids))})" if pids else ""))
    others = [h for h in holders if h not in writer and h not in readers]
    parts.extend(h.describe() for h in others)
    if openers:
        parts.append("open by " + ", ".join(f"pid {pid} ({info['name']})" for pid, info in sorted(openers.items())))
    add(Finding(check="locks", severity=Severity.INFO, message="in use by another process: " + "; ".join(parts),
                advice="a live database: its -wal and -shm belong to the running processes; never delete them",
                details=details))


def _wal_findings(real: str, st: os.stat_result, header: Any, wal_stat: os.stat_result | None,
                  shm_stat: os.stat_result | None, in_use: bool, add: Callable[[Finding], None]) -> dict[str, Any] | None:
    shm_text = f"; -shm {_human_size(shm_stat.st_size)}" if shm_stat is not None else "; no -shm"
    if wal_stat is None:
        sev = Severity.OK
        add(Finding(check="wal", severity=sev, message=f"no -wal file{shm_text}",
                    details={"wal_size": None, "shm_size": shm_stat.st_size if shm_stat else None}))
        return None
    try:
        summary = read_wal_summary(real + "-wal")
    except OSError as err:
        add(Finding(check="wal", severity=Severity.WARNING, message=f"-wal exists but cannot be read: {err.strerror}",
                    advice="run the doctor as the database's owner or as root"))
        return None
    details = {"wal_size": wal_stat.st_size, "shm_size": shm_stat.st_size if shm_stat else None, **summary}
    if st.st_size == 0 and wal_stat.st_size > 0:
        add(Finding(check="wal", severity=Severity.ERROR,
                    message=f"the database file is empty but its -wal holds {wal_stat.st_size} bytes"
                            + (f" ({summary.get('transactions', 0)} committed transaction(s))" if summary["valid"] else ""),
                    advice="do not open it with any program: SQLite deletes that -wal; copy both files aside first",
                    details=details))
        return summary
    if wal_stat.st_size == 0:
        add(Finding(check="wal", severity=Severity.OK, message=f"-wal is empty{shm_text}", details=details))
        return summary
    if not summary["valid"]:
        add(Finding(check="wal", severity=Severity.WARNING,
                    message=f"-wal of {wal_stat.st_size} bytes is not a valid write-ahead log ({summary.get('reason')}); SQLite ignores it",
                    advice="keep it until you know where it came from; never delete a -wal while a process uses the database",
                    details=details))
        return summary
    if header is not None and summary["page_size"] != header.page_size:
        add(Finding(check="wal", severity=Severity.WARNING,
                    message=f"-wal page size {summary['page_size']} differs from the database's {header.page_size}: it is not this database's log",
                    advice="keep it aside; it may belong to another copy of this database", details=details))
        return summary
    tx = summary["transactions"]
    counts = (f"{summary['valid_frames']} valid frame(s), {tx} committed transaction(s)"
              + (f", {summary['uncommitted_frames']} frame(s) of an unfinished one" if summary["uncommitted_frames"] else "")
              + ("" if summary["verified"] else " (checksums not verified beyond 64 MiB)"))
    mode_note = ""
    if header is not None and not header.is_wal:
        mode_note = "; the header says rollback journal, yet SQLite will read this -wal"
    if in_use:
        add(Finding(check="wal", severity=Severity.WARNING if mode_note else Severity.OK,
                    message=f"live -wal {_human_size(wal_stat.st_size)}: {counts}{shm_text}{mode_note}",
                    advice="a journal-mode change while processes use the file; check every process's profile" if mode_note else "",
                    details=details))
    elif tx:
        add(Finding(check="wal", severity=Severity.WARNING,
                    message=f"leftover -wal {_human_size(wal_stat.st_size)} with no process using the database: {counts} not yet "
                            f"in the database file (an unclean stop){mode_note}",
                    advice="do not delete -wal (it holds committed data); the next read-write open replays it",
                    details=details))
    else:
        add(Finding(check="wal", severity=Severity.INFO,
                    message=f"leftover -wal {_human_size(wal_stat.st_size)} with no committed transaction to replay ({counts}){mode_note}",
                    advice="harmless; SQLite resets it at the next write", details=details))
    return summary


def _hot_journal(journal: os.stat_result | None, real: str, holders: list[LockHolder]) -> bool:
    if journal is None or journal.st_size == 0:
        return False
    if any(h.file == "db" and h.lock in ("reserved", "pending", "exclusive") for h in holders):
        return False  # a live writer's journal
    try:
        with open(real + "-journal", "rb") as fh:
            return fh.read(8) == JOURNAL_MAGIC
    except OSError:
        return False


def _journal_findings(real: str, journal: os.stat_result | None, holders: list[LockHolder], header: Any,
                      add: Callable[[Finding], None]) -> None:
    if journal is None:
        return
    details = {"journal_size": journal.st_size}
    if _hot_journal(journal, real, holders):
        add(Finding(check="journal", severity=Severity.WARNING,
                    message=f"hot -journal ({journal.st_size} bytes): a writer stopped in the middle of a transaction",
                    advice="do not delete -journal (the database would stay half-written); the next read-write open rolls it back",
                    details=details))
    elif journal.st_size and any(h.lock in ("reserved", "pending", "exclusive") for h in holders):
        add(Finding(check="journal", severity=Severity.OK, message=f"-journal of a running write transaction ({journal.st_size} bytes)",
                    details=details))
    else:
        add(Finding(check="journal", severity=Severity.OK,
                    message=f"-journal present but not hot ({journal.st_size} bytes; nothing to roll back)", details=details))


def _sqlite_findings(real: str, header: Any, wal_stat: os.stat_result | None, in_use: bool, integrity: bool,
                     progress: Callable[[float], None] | None, busy_timeout_s: float,
                     add: Callable[[Finding], None]) -> None:
    from .classify import classify_exception

    # A WAL file with no -wal and nobody using it: mode=ro would leave an empty -wal and -shm
    # behind; immutable=1 reads the main file only (safe: no process writes it right now; a
    # change during the check is detected below and the check repeated with mode=ro).
    immutable = header is not None and header.is_wal and wal_stat is None and not in_use
    check = "integrity_check" if integrity else "quick_check"
    for attempt in (1, 2):
        before = _fingerprint(real)
        opened = "immutable=1" if immutable else "mode=ro"
        uri = f"file:{urllib.parse.quote(real)}?{'immutable=1' if immutable else 'mode=ro'}"
        started = time.monotonic()
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            _sqlite_error(check, err, classify_exception(err), opened, add)
            return
        try:
            if progress is not None:
                conn.set_progress_handler(lambda: progress(time.monotonic() - started) or 0, 1000)
            conn.execute("PRAGMA query_only = 1")
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            rows = [r[0] for r in conn.execute(f"PRAGMA {check}(20)").fetchall()]
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
        except sqlite3.Error as err:
            _sqlite_error(check, err, classify_exception(err), opened, add)
            return
        finally:
            conn.set_progress_handler(None, 0)
            conn.close()
        elapsed = time.monotonic() - started
        if immutable and (_fingerprint(real) != before or os.path.exists(real + "-wal")):
            immutable = False  # someone opened it meanwhile: check again through the locks
            continue
        break
    if immutable and header is not None and header.is_wal:
        mode = "wal"  # an immutable connection reports "delete": it ignores the (absent) -wal
    details = {"opened": opened, "journal_mode": mode, "page_count": page_count, "freelist_count": freelist,
               "seconds": round(elapsed, 3)}
    if rows == ["ok"]:
        add(Finding(check=check, severity=Severity.OK,
                    message=f"ok ({page_count} pages, {freelist} free, {elapsed:.2f} s; opened read-only, {opened})",
                    details=details))
    else:
        details["problems"] = rows
        add(Finding(check=check, severity=Severity.ERROR,
                    message=f"{len(rows)}{'+' if len(rows) >= 20 else ''} problem(s): {rows[0]}",
                    advice="stop writers; copy the database with its -wal and -shm together, then `sqlite3 COPY .recover`; never delete -wal",
                    details=details))


def _sqlite_error(check: str, err: BaseException, c: Any, opened: str, add: Callable[[Finding], None]) -> None:
    from .errors import ErrorKind

    name = c.name or c.kind.name
    details = {"opened": opened, "code": c.extended_code or c.code, "name": name, "kind": c.kind.value}
    if c.kind is ErrorKind.BUSY:
        add(Finding(check=check, severity=Severity.WARNING, message=f"not run: the database stayed locked ({name})",
                    advice="a writer holds an exclusive lock; run the doctor again, or when the application is idle",
                    details=details))
    elif c.code == 26 or c.kind is ErrorKind.CORRUPT:
        add(Finding(check=check, severity=Severity.ERROR, message=f"SQLite refuses the file: {name}: {c.message or err}",
                    advice="stop writers; copy the database with its -wal and -shm together, then `sqlite3 COPY .recover`",
                    details=details))
    else:
        add(Finding(check=check, severity=Severity.ERROR, message=f"SQLite could not read it: {name}: {c.message or err}",
                    advice="see the permissions and file-system findings; check the kernel log for I/O errors",
                    details=details))


def _permissions_finding(real: str, st: os.stat_result, side_stats: Mapping[str, os.stat_result | None],
                         add: Callable[[Finding], None]) -> None:
    directory = os.path.dirname(real)
    details: dict[str, Any] = {
        "readable": os.access(real, os.R_OK), "writable": os.access(real, os.W_OK),
        "directory_writable": os.access(directory, os.W_OK | os.X_OK),
        "owner": _owner(st), "mode": oct(stat.S_IMODE(st.st_mode)),
    }
    problems: list[str] = []
    advice = ""
    for name, side in side_stats.items():
        if side is not None and (side.st_uid, side.st_gid) != (st.st_uid, st.st_gid):
            details[f"{name}_owner"] = _owner(side)
            problems.append(f"-{name} is owned by {_owner(side)}, the database by {_owner(st)}")
            advice = "a process of another user (often root) created it; give it back to the database's owner (chown)"
    if not stat.S_IMODE(st.st_mode) & 0o222:
        problems.append("no write permission bit is set on the database")
        advice = advice or "writers will fail with SQLITE_READONLY; chmod u+w if the application must write"
    from .readonly import readonly_wal_problem

    readonly_wal = readonly_wal_problem(real)
    if readonly_wal is not None:
        details["read_only_open"] = "fails"
        problems.append("a read-only open (corestore health, a read-only profile) fails from this process: "
                        + readonly_wal.split(": ", 1)[1].split(". Change one of", 1)[0])
        advice = advice or ("Change one of" + readonly_wal.split(". Change one of", 1)[1])
    text = (f"owner {_owner(st)}, mode {stat.filemode(st.st_mode)}; you can "
            f"{'read' if details['readable'] else 'not read'}/{'write' if details['writable'] else 'not write'} it; "
            f"directory {'writable' if details['directory_writable'] else 'NOT writable'} by you")
    if problems:
        add(Finding(check="permissions", severity=Severity.WARNING, message="; ".join(problems), advice=advice, details=details))
    else:
        add(Finding(check="permissions", severity=Severity.OK, message=text,
                    advice="" if details["directory_writable"] else
                    "writers need to create -wal/-journal in the directory (SQLITE_READONLY_DIRECTORY otherwise)",
                    details=details))


def _space_finding(real: str, data_size: int, add: Callable[[Finding], None]) -> None:
    directory = os.path.dirname(real)
    try:
        vfs = os.statvfs(directory)
    except (OSError, AttributeError):
        return
    free = vfs.f_bavail * vfs.f_frsize
    total = vfs.f_blocks * vfs.f_frsize
    details = {"free_bytes": free, "total_bytes": total, "free_inodes": vfs.f_favail if vfs.f_files else None,
               "database_and_wal_bytes": data_size}
    text = f"{_human_size(free)} free of {_human_size(total)} in {directory}"
    if free < 1024 * 1024 or (vfs.f_files and vfs.f_favail == 0):
        add(Finding(check="space", severity=Severity.ERROR, message=f"{text}{'; no free inode' if vfs.f_files and vfs.f_favail == 0 else ''}",
                    advice="writes fail with SQLITE_FULL; free space first (never by deleting -wal or -journal)", details=details))
    elif free < max(64 * 1024 * 1024, data_size):
        add(Finding(check="space", severity=Severity.WARNING, message=f"{text}; less than the database needs to grow or vacuum",
                    advice="free space before the next checkpoint or VACUUM", details=details))
    else:
        add(Finding(check="space", severity=Severity.OK, message=text, details=details))


def _filesystem_finding(real: str, header: Any, mountinfo: str | None, add: Callable[[Finding], None]) -> None:
    fs = filesystem_type(real, mountinfo=mountinfo)
    if fs is None:
        add(Finding(check="filesystem", severity=Severity.INFO, message="file-system type not determined on this platform"))
        return
    text = f"{fs['type']} mounted on {fs['mount_point']} ({fs['source']})"
    if is_network_filesystem(fs["type"]):
        wal = header is not None and header.is_wal
        add(Finding(check="filesystem", severity=Severity.WARNING,
                    message=f"{text}: a network or FUSE file system{'; this database is in WAL mode' if wal else ''}",
                    advice="WAL needs shared memory and reliable locks: move the database to a local disk, "
                           "or use journal_mode=DELETE from one machine only",
                    details=fs))
    else:
        add(Finding(check="filesystem", severity=Severity.OK, message=text, details=fs))


def _quarantine_finding(real: str, add: Callable[[Finding], None]) -> None:
    try:
        marker = read_quarantine_marker(real)
    except Exception as err:  # a damaged marker must not hide the rest of the diagnosis
        add(Finding(check="quarantine", severity=Severity.ERROR, message=f"quarantine marker unreadable: {err}",
                    advice=f"inspect {real}{QUARANTINE_SUFFIX} by hand"))
        return
    if marker is None:
        add(Finding(check="quarantine", severity=Severity.OK, message="no quarantine marker"))
        return
    reason = marker.get("reason") or "no reason recorded"
    since = marker.get("since")
    add(Finding(check="quarantine", severity=Severity.ERROR,
                message=f"quarantined{f' since {since}' if since else ''}: {reason}",
                advice=f"writes are refused until the marker is removed: read the evidence (--json), "
                       f"then `corestore doctor --clear-quarantine {real}`",
                details={"marker": _marker_of(real), "evidence": marker}))


# -- text output ------------------------------------------------------------------------------------------
def format_diagnosis(diag: Diagnosis) -> str:
    """The human table: one aligned line per finding, its advice under it."""
    width = max([len(f.check) for f in diag.findings] + [5])
    lines = [f"corestore doctor: {diag.path}", f"  {'SEVERITY':<8}  {'CHECK':<{width}}  FINDING"]
    for f in diag.findings:
        lines.append(f"  {f.severity.value:<8}  {f.check:<{width}}  {f.message}")
        if f.advice and f.severity in (Severity.WARNING, Severity.ERROR):
            lines.append(f"  {'':<8}  {'':<{width}}  -> {f.advice}")
    label = "USAGE ERROR" if diag.usage_error else diag.status.name
    lines.append(f"status: {label} (exit {diag.exit_code})")
    return "\n".join(lines)


def _tty_progress(check: str) -> Callable[[float], None] | None:
    if not sys.stderr.isatty():
        return None
    last = [-1.0]

    def show(seconds: float) -> None:
        if last[0] < 0 or seconds - last[0] >= 0.2:
            last[0] = seconds
            sys.stderr.write(f"\r{check}: {seconds:6.1f} s ...")
            sys.stderr.flush()

    return show


# -- the doctor command ------------------------------------------------------------------------------------
def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="NAME|PATH",
                   help="a database bound in [databases] of the config, or the database file (never created, never written)")
    p.add_argument("--integrity", action="store_true", help="run integrity_check (slow, thorough) instead of quick_check")
    p.add_argument("--clear-quarantine", action="store_true",
                   help="show the quarantine evidence, then remove the marker (refused when the check finds damage)")
    p.add_argument("--force", action="store_true", help="with --clear-quarantine: remove the marker even if the check fails")


def _doctor_path(args: argparse.Namespace) -> str:
    """The file for ``NAME|PATH``: a name bound in ``[databases]`` (like ``corestore health``),
    else the path as given."""
    from .profiles import load_config
    from .store import _looks_like_bare_name

    target = args.path
    cfg = load_config(config_path(args))
    binding = cfg.databases.get(target) if cfg else None
    if binding is not None:
        return binding.path
    if _looks_like_bare_name(target) and not os.path.exists(target):
        known = ", ".join(sorted(cfg.databases)) if cfg and cfg.databases else "(none)"
        raise ConfigError(f"{cfg.source if cfg else 'no config file (pass --config or set CORESTORE_CONFIG)'}: "
                          f"{target!r} is not bound in [databases] (bound: {known}); give a file path "
                          f"(e.g. './{target}.db')")
    return target


def run_doctor(args: argparse.Namespace) -> int:
    check = "integrity_check" if args.integrity else "quick_check"
    progress = _tty_progress(check)
    diag = diagnose(_doctor_path(args), integrity=args.integrity, progress=progress)
    if progress is not None:
        sys.stderr.write("\r" + " " * 40 + "\r")
        sys.stderr.flush()
    if getattr(args, "clear_quarantine", False) and not diag.usage_error:
        diag = _clear_quarantine(diag, force=args.force, as_json=getattr(args, "json", False))
    if getattr(args, "json", False):
        print(json.dumps(diag.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_diagnosis(diag))
    return diag.exit_code


def _clear_quarantine(diag: Diagnosis, *, force: bool, as_json: bool) -> Diagnosis:
    found = diag.finding("quarantine")
    if found is None or found.severity is Severity.OK:
        note = Finding(check="clear-quarantine", severity=Severity.INFO, message="no quarantine marker to clear")
        return attrs.evolve(diag, findings=diag.findings + (note,))
    evidence = found.details.get("evidence")
    if not as_json:
        module = _quarantine_module()
        print(f"quarantine evidence ({_marker_of(diag.path)}):")
        if module is not None and hasattr(module, "format_marker") and isinstance(evidence, Mapping):
            print(module.format_marker(evidence))
        else:
            print(json.dumps(evidence, indent=2, sort_keys=True, default=str))
    damage = [f for f in diag.findings if f.check in ("quick_check", "integrity_check", "header") and f.severity is Severity.ERROR]
    if damage and not force:
        note = Finding(check="clear-quarantine", severity=Severity.ERROR,
                       message=f"refused: the {damage[0].check} check found damage; the marker stays",
                       advice="recover the data first; --force removes the marker anyway", details={"evidence": evidence})
        return attrs.evolve(diag, findings=diag.findings + (note,))
    try:
        cleared = clear_quarantine_marker(diag.path)
    except OSError as err:  # SidecarError: the "marker" is a database, or not ours to remove
        note = Finding(check="clear-quarantine", severity=Severity.ERROR, message=f"refused: {err}",
                       advice="inspect the file by hand; corestore never removes a database", details={"evidence": evidence})
        return attrs.evolve(diag, findings=diag.findings + (note,))
    findings = tuple(f for f in diag.findings if f.check != "quarantine")
    note = Finding(check="clear-quarantine", severity=Severity.OK,
                   message="quarantine marker removed" + (" (forced despite damage)" if damage else ""),
                   details={"evidence": cleared if cleared is not None else evidence})
    return attrs.evolve(diag, findings=findings + (note,))


command("doctor", "diagnose a SQLite file read-only: header, -wal/-shm, locks, quick_check, permissions, space")(
    _doctor_args).run(run_doctor)


# -- the health command ----------------------------------------------------------------------------------------
def _health_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="NAME|PATH", help="a database bound in [databases], or a file path")
    p.add_argument("--profile", help="profile for a PATH (default: 'default'; for a NAME: its binding's)")


def _pid_alive(pid: Any) -> bool | None:
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resolve_target(args: argparse.Namespace) -> Any:
    from .profiles import load_config, resolve_profile
    from .store import _looks_like_bare_name

    cfg = load_config(config_path(args))
    target = args.target
    binding = cfg.databases.get(target) if cfg else None
    if binding is not None:
        return resolve_profile(args.profile or binding.profile, config=cfg, path=binding.path, binding=binding)
    if _looks_like_bare_name(target) and target != ":memory:":
        known = ", ".join(sorted(cfg.databases)) if cfg and cfg.databases else "(none)"
        raise ConfigError(f"{cfg.source if cfg else 'no config file'}: {target!r} is not bound in [databases] "
                          f"(bound: {known}); give a file path (e.g. './{target}.db') or --config")
    if target == ":memory:":
        raise ConfigError("':memory:' lives only inside the process that opened it; nothing to check from outside")
    return resolve_profile(args.profile or "default", config=cfg, path=target)


def _synthetic(path: str, profile: str, status: HealthStatus, summary: str, **details: Any) -> dict[str, Any]:
    return {
        "status": status.value, "database": path, "profile": profile,
        "checked_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "components": {"database": {"status": status.value, "summary": summary, "details": to_jsonable(details)}},
    }


def run_health(args: argparse.Namespace) -> int:
    profile = _resolve_target(args)
    path = os.path.realpath(os.path.abspath(os.path.expanduser(profile.path)))
    profile = attrs.evolve(profile, path=path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory; give the path of a database file")
    source: dict[str, Any] = {"kind": "live"}
    data: dict[str, Any] | None = None
    snapshot = _snapshot_for(profile)
    if snapshot is not None:
        source["snapshot_path"] = snapshot
        data, why = _read_live_snapshot(snapshot)
        if data is not None:
            meta = data.pop("snapshot")
            source.update(kind="snapshot", pid=meta.get("pid"), host=meta.get("host"), written_at=meta.get("written_at"))
        else:
            source["snapshot_skipped"] = why
    if data is None:
        data = _live_report(profile)
    status = HealthStatus(data["status"])
    data["source"] = source
    data.setdefault("not_checked", [])  # what a read-only report could not know (plugins that write)
    data["exit_code"] = status.exit_code
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(format_health(data))
    return status.exit_code


def _snapshot_for(profile: Any) -> str | None:
    if "health" not in profile.plugins:
        return None
    from . import registry

    health_cls = registry.load_plugin_class("health", where=profile.origin)
    module = sys.modules[health_cls.__module__]
    return module.snapshot_path_for(profile)


def _read_live_snapshot(snapshot: str) -> tuple[dict[str, Any] | None, str]:
    """The snapshot when it speaks for a running store; else None and why it was skipped."""
    from . import registry

    module = sys.modules[registry.load_plugin_class("health").__module__]
    try:
        data = module.read_snapshot(snapshot)
    except FileNotFoundError:
        return None, "no snapshot written yet"
    except (OSError, ValueError) as err:
        return None, str(err)
    meta = data["snapshot"]
    if meta.get("closed"):
        return None, f"the writer (pid {meta.get('pid')}) closed the store at {meta.get('written_at')}"
    if meta.get("host") == socket.gethostname() and _pid_alive(meta.get("pid")) is False:
        return None, f"the writer (pid {meta.get('pid')}) is no longer running"
    return data, ""


def _live_report(profile: Any) -> dict[str, Any]:
    """Open the database read-only through its profile (no snapshot, no watcher) and report."""
    from .store import open as open_store

    path = profile.path
    if not os.path.exists(path):
        return _synthetic(path, profile.name, HealthStatus.DOWN, "the database file does not exist (not created)")
    from . import registry

    settings = {name: dict(values) for name, values in profile.settings.items()}
    if "health" in settings:
        for key in ("snapshot_path", "watch_interval_s"):
            settings["health"].pop(key, None)
    # a plugin that writes (accounting) cannot run on a read-only open: leave it out and say so
    writers = [name for name in profile.plugins
               if getattr(registry.load_plugin_class(name, where=profile.origin), "writes", False)]
    not_checked = {
        name: {"status": HealthStatus.UNKNOWN.value,
               "summary": f"not checked: the {name} plugin writes, and its state (queue, dead letters, episode) lives "
                          "in the process that runs it; this report opened the database read-only",
               "details": {"checked": False}}
        for name in writers
    }
    ro = attrs.evolve(profile, read_only=True, settings={k: v for k, v in settings.items() if k not in writers},
                      plugins=tuple(p for p in profile.plugins if p not in writers))
    try:
        store = open_store(ro)
    except (ConfigError,):
        raise
    except StoreError as err:
        c = err.classification
        data = _synthetic(path, profile.name, HealthStatus.DOWN,
                          f"cannot open read-only: {c.name if c and c.name else type(err).__name__}", error=str(err))
        data["components"].update(not_checked)
        data["not_checked"] = sorted(not_checked) + ["every plugin (the database could not be opened)"]
        return data
    try:
        data = store.health().to_dict()
    finally:
        store.close()
    data["components"].update(not_checked)
    data["not_checked"] = sorted(not_checked)
    return data


def format_health(data: Mapping[str, Any]) -> str:
    """The human table of a report (as ``to_dict()`` gives it, plus ``source``)."""
    source = data.get("source", {})
    if source.get("kind") == "snapshot":
        origin = f"snapshot {source.get('snapshot_path')} written by pid {source.get('pid')} at {source.get('written_at')}"
    else:
        origin = "checked now, read-only"
        if source.get("snapshot_skipped"):
            origin += f" (snapshot skipped: {source['snapshot_skipped']})"
    comps = data.get("components", {})
    width = max([len(n) for n in comps] + [9])
    lines = [f"corestore health: {data.get('database')} (profile {data.get('profile')})", f"  {origin}"]
    if data.get("not_checked"):
        lines.append(f"  not checked (a read-only report cannot know): {', '.join(data['not_checked'])}")
    lines.append(f"  {'COMPONENT':<{width}}  {'STATUS':<8}  SUMMARY")
    for name, comp in comps.items():
        lines.append(f"  {name:<{width}}  {str(comp.get('status', '')).upper():<8}  {comp.get('summary', '')}")
        error = (comp.get("details") or {}).get("error")
        if error:
            lines.append(f"  {'':<{width}}  {'':<8}  {error}")
    status = HealthStatus(data["status"])
    lines.append(f"status: {status.name} (exit {status.exit_code})")
    return "\n".join(lines)


command("health", "print a database's health report (from its snapshot, else opened read-only)")(_health_args).run(run_health)
