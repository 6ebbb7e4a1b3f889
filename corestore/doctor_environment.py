"""The doctor's checks of where a database lives rather than what it holds: permissions and
ownership of the file and its side files, free space and inodes, and the file system (network
and FUSE file systems break WAL). Each adds one :class:`~corestore.findings.Finding`; used by
:func:`corestore.doctor.diagnose`."""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from .findings import Finding, Severity
from .osprobe import filesystem_type, is_network_filesystem

__all__ = ["permissions_finding", "space_finding", "filesystem_finding", "human_size", "owner"]

logger = logging.getLogger(__name__)


def human_size(n: int) -> str:
    """``n`` bytes for people: ``512 bytes``, ``1.5 MiB``."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def owner(st: os.stat_result) -> str:
    """``user:group (uid:gid)`` of a stat result (the numbers alone when the names are unknown)."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except (ImportError, KeyError):
        return f"{st.st_uid}:{st.st_gid}"
    return f"{user}:{group} ({st.st_uid}:{st.st_gid})"



def permissions_finding(real: str, st: os.stat_result, side_stats: Mapping[str, os.stat_result | None],
                         add: Callable[[Finding], None]) -> None:
    directory = os.path.dirname(real)
    details: dict[str, Any] = {
        "readable": os.access(real, os.R_OK), "writable": os.access(real, os.W_OK),
        "directory_writable": os.access(directory, os.W_OK | os.X_OK),
        "owner": owner(st), "mode": oct(stat.S_IMODE(st.st_mode)),
    }
    problems: list[str] = []
    advice = ""
    for name, side in side_stats.items():
        if side is not None and (side.st_uid, side.st_gid) != (st.st_uid, st.st_gid):
            details[f"{name}_owner"] = owner(side)
            problems.append(f"-{name} is owned by {owner(side)}, the database by {owner(st)}")
            advice = "a process of another user (often root) created it; give it back to the database's owner (chown)"
    if not stat.S_IMODE(st.st_mode) & 0o222:
        problems.append("no write permission bit is set on the database")
        advice = advice or "writers will fail with SQLITE_READONLY; chmod u+w if the application must write"
    from .readonly import readonly_wal_problem  # lazily, as the doctor always did

    readonly_wal = readonly_wal_problem(real)
    if readonly_wal is not None:
        details["read_only_open"] = "fails"
        problems.append("a read-only open (corestore health, a read-only profile) fails from this process: "
                        + readonly_wal.split(": ", 1)[1].split(". Change one of", 1)[0])
        advice = advice or ("Change one of" + readonly_wal.split(". Change one of", 1)[1])
    text = (f"owner {owner(st)}, mode {stat.filemode(st.st_mode)}; you can "
            f"{'read' if details['readable'] else 'not read'}/{'write' if details['writable'] else 'not write'} it; "
            f"directory {'writable' if details['directory_writable'] else 'NOT writable'} by you")
    if problems:
        add(Finding(check="permissions", severity=Severity.WARNING, message="; ".join(problems), advice=advice, details=details))
    else:
        add(Finding(check="permissions", severity=Severity.OK, message=text,
                    advice="" if details["directory_writable"] else
                    "writers need to create -wal/-journal in the directory (SQLITE_READONLY_DIRECTORY otherwise)",
                    details=details))


def space_finding(real: str, data_size: int, add: Callable[[Finding], None]) -> None:
    directory = os.path.dirname(real)
    try:
        vfs = os.statvfs(directory)
    except (OSError, AttributeError):
        return
    free = vfs.f_bavail * vfs.f_frsize
    total = vfs.f_blocks * vfs.f_frsize
    details = {"free_bytes": free, "total_bytes": total, "free_inodes": vfs.f_favail if vfs.f_files else None,
               "database_and_wal_bytes": data_size}
    text = f"{human_size(free)} free of {human_size(total)} in {directory}"
    if free < 1024 * 1024 or (vfs.f_files and vfs.f_favail == 0):
        add(Finding(check="space", severity=Severity.ERROR,
                    message=f"{text}{'; no free inode' if vfs.f_files and vfs.f_favail == 0 else ''}",
                    advice="writes fail with SQLITE_FULL; free space first (never by deleting -wal or -journal)",
                    details=details))
    elif free < max(64 * 1024 * 1024, data_size):
        add(Finding(check="space", severity=Severity.WARNING, message=f"{text}; less than the database needs to grow or vacuum",
                    advice="free space before the next checkpoint or VACUUM", details=details))
    else:
        add(Finding(check="space", severity=Severity.OK, message=text, details=details))


def filesystem_finding(real: str, header: Any, mountinfo: str | None, add: Callable[[Finding], None]) -> None:
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
