"""The offline doctor: :func:`diagnose` a SQLite file without changing it.

``corestore doctor PATH`` diagnoses a SQLite file from its own process, without any profile, and
changes nothing: it reads the header and the side files with plain reads, asks the kernel which
SQLite locks other processes hold (``F_OFD_GETLK``, else ``F_GETLK``, on SQLite's lock bytes: it
takes no lock itself), and only then opens SQLite read-only (``mode=ro``) for ``quick_check``
(``integrity_check`` with ``--integrity``). No byte of the database or of ``-wal`` changes
(SQLite may rebuild ``-shm``, the shared-memory index, which holds no data); a missing file is
never created: a "doctor" that "cleans up" ``-wal``/``-shm`` loses committed transactions. This doctor reports a leftover ``-wal``
(how many committed transactions it holds, verified with the WAL checksums) and says what to do;
it never "fixes" one.

Two cases where opening SQLite, even read-only, would change files are handled without it:

* a database file of 0 bytes next to a non-empty ``-wal``: SQLite *deletes* such a ``-wal`` on
  open; the doctor reports it and does not open SQLite;
* a WAL-mode file with no ``-wal`` and no other process: a read-only connection would leave an
  empty ``-wal`` and a ``-shm`` behind; the doctor reads it with ``immutable=1`` instead (nobody
  holds it), then checks that the file did not change meanwhile (else it checks again ``mode=ro``).

The command is in :mod:`corestore.cli.doctor`; findings in :mod:`corestore.findings`; checks of
permissions, space and file system in :mod:`corestore.doctor_environment`; lock and file-system
probes in :mod:`corestore.osprobe`; the ``-wal`` reader and the marker in :mod:`corestore.sqlitefile`
and :mod:`corestore.sidecar_formats`.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs

from .doctor_environment import filesystem_finding, human_size, owner, permissions_finding, space_finding
from .findings import DOCTOR_SCHEMA, Diagnosis, Finding, Severity, format_diagnosis
from .osprobe import LockHolder, open_by_processes, probe_locks
from .sidecar_formats import MARKER_SUFFIX, marker_path, read_marker
from .sqlitefile import parse_header, read_wal_summary

__all__ = ["diagnose", "format_diagnosis", "Severity", "Finding", "Diagnosis", "DOCTOR_SCHEMA"]

logger = logging.getLogger(__name__)

JOURNAL_MAGIC = b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7"


# -- the diagnosis ------------------------------------------------------------------------------------

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
        return Diagnosis(path=real, findings=tuple(findings), checked_at=_dt.datetime.now(_dt.UTC),
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
                message=f"regular file, {human_size(st.st_size)}, owner {owner(st)}, mode {stat.filemode(st.st_mode)}{link_note}",
                details={"size": st.st_size, "uid": st.st_uid, "gid": st.st_gid, "mode": oct(stat.S_IMODE(st.st_mode)),
                         "symlink": full if full != real else None}))

    # -- header --------------------------------------------------------------------------------------
    try:
        with open(real, "rb") as fh:
            head = fh.read(100)
    except PermissionError as err:
        add(Finding(check="header", severity=Severity.ERROR, message=f"cannot read the file: {err.strerror}",
                    advice="run the doctor as the database's owner or as root"))
        permissions_finding(real, st, side_stats, add)
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
    permissions_finding(real, st, side_stats, add)
    space_finding(real, st.st_size + (wal_stat.st_size if wal_stat else 0), add)
    filesystem_finding(real, header, mountinfo, add)
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
    text = "; ".join(f"{d}: SQLite {versions[d]} has "
                     f"{', '.join(b.id + ' (' + b.page + ', fixed in ' + b.fixed_in + ')' for b in bugs[d])}" for d in hit)
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
                            "the file was truncated: stop writers, copy it with its -journal, "
                            "restore from a copy or run .recover"), details=details))
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
    shm_text = f"; -shm {human_size(shm_stat.st_size)}" if shm_stat is not None else "; no -shm"
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
                    message=f"-wal of {wal_stat.st_size} bytes is not a valid write-ahead log ({summary.get('reason')}); "
                            "SQLite ignores it",
                    advice="keep it until you know where it came from; never delete a -wal while a process uses the database",
                    details=details))
        return summary
    if header is not None and summary["page_size"] != header.page_size:
        add(Finding(check="wal", severity=Severity.WARNING,
                    message=f"-wal page size {summary['page_size']} differs from the database's {header.page_size}: "
                            "it is not this database's log",
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
                    message=f"live -wal {human_size(wal_stat.st_size)}: {counts}{shm_text}{mode_note}",
                    advice=("a journal-mode change while processes use the file; check every process's profile"
                            if mode_note else ""),
                    details=details))
    elif tx:
        add(Finding(check="wal", severity=Severity.WARNING,
                    message=f"leftover -wal {human_size(wal_stat.st_size)} with no process using the database: {counts} not yet "
                            f"in the database file (an unclean stop){mode_note}",
                    advice="do not delete -wal (it holds committed data); the next read-write open replays it",
                    details=details))
    else:
        add(Finding(check="wal", severity=Severity.INFO,
                    message=f"leftover -wal {human_size(wal_stat.st_size)} with no committed transaction to replay "
                            f"({counts}){mode_note}", advice="harmless; SQLite resets it at the next write", details=details))
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
                    advice="do not delete -journal (the database would stay half-written); "
                           "the next read-write open rolls it back", details=details))
    elif journal.st_size and any(h.lock in ("reserved", "pending", "exclusive") for h in holders):
        add(Finding(check="journal", severity=Severity.OK,
                    message=f"-journal of a running write transaction ({journal.st_size} bytes)", details=details))
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
    for _attempt in (1, 2):
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
                def report(started: float = started, progress: Callable[[float], None] = progress) -> int:
                    progress(time.monotonic() - started)
                    return 0  # never interrupts
                conn.set_progress_handler(report, 1000)
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
                    advice="stop writers; copy the database with its -wal and -shm together, "
                           "then `sqlite3 COPY .recover`; never delete -wal", details=details))


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



def _quarantine_finding(real: str, add: Callable[[Finding], None]) -> None:
    try:
        marker = read_marker(real)
    except Exception as err:  # a damaged marker must not hide the rest of the diagnosis
        add(Finding(check="quarantine", severity=Severity.ERROR, message=f"quarantine marker unreadable: {err}",
                    advice=f"inspect {real}{MARKER_SUFFIX} by hand"))
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
                details={"marker": marker_path(real), "evidence": marker}))

