"""The in-process failpoint: an apsw VFS that inherits the default VFS and fails chosen I/O.

Every file SQLite opens through this VFS is the default VFS's own file object (real ``open``,
``pread``, ``pwrite``, ``fsync``, POSIX locks and WAL shared memory), wrapped so that an armed
:class:`Fault` can refuse one of its operations with a SQLite result code before the real call
happens. SQLite then runs its real error path: statement rollback, WAL recovery, what the caller
sees. Nothing about the connection is mocked.

What it cannot do, by apsw's design:

* **No shared-memory methods.** apsw passes ``xShmMap``/``xShmLock``/``xShmBarrier``/
  ``xShmUnmap`` straight to the inherited VFS and gives Python no way to override them, so faults
  in the WAL index (``SQLITE_IOERR_SHMMAP`` and friends) cannot be injected here. WAL itself works
  over this VFS because those methods are inherited.
* **The caller sees the injected exception.** apsw keeps the exception raised inside a VFS method
  and raises it when control returns to Python, even in the rare places where SQLite itself
  tolerates the error code (a failed ``-wal`` truncate under ``journal_size_limit`` is logged and
  ignored by SQLite, yet the statement raises). Assert on the database state, not only on the
  exception, or use the preload failpoint, which goes through SQLite's own errno handling.
* **Short reads are real short reads.** ``SQLITE_IOERR_SHORT_READ`` on ``read`` does not raise: it
  returns the first ``short_fraction`` of the bytes asked for (half by default; 0 is end-of-file),
  and apsw zero-fills the rest and reports ``SQLITE_IOERR_SHORT_READ`` to SQLite, exactly as the
  unix VFS does when ``pread`` hits the end of the file early. (Raising it instead would hand
  SQLite an unfilled buffer, which it then trusts as a zero-filled one.)
"""
from __future__ import annotations

import collections
import contextlib
import fnmatch
import glob
import logging
import os
import threading
import time
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apsw
import attrs

__all__ = [
    "FailpointVFS",
    "Fault",
    "FailpointCounters",
    "VFS_OPS",
    "FILE_ROLES",
    "resolve_code",
    "code_name",
]

logger = logging.getLogger(__name__)

#: The operations a fault can target: ``open`` (xOpen), ``read`` (xRead), ``write`` (xWrite),
#: ``sync`` (xSync), ``truncate`` (xTruncate), ``size`` (xFileSize).
VFS_OPS: tuple[str, ...] = ("open", "read", "write", "sync", "truncate", "size")
_OP_ALIASES = {
    "pread": "read", "pwrite": "write", "fsync": "sync", "fdatasync": "sync",
    "ftruncate": "truncate", "file_size": "size", "filesize": "size", "fstat": "size",
}

#: File roles, from the flags SQLite opens the file with: the main database, its rollback
#: journal, its write-ahead log, a super-journal (multi-database commit) and every temporary file
#: (temp database, statement sub-journal, transient index).
FILE_ROLES: tuple[str, ...] = ("main", "journal", "wal", "super_journal", "temp")
_ANY = ("any", "*")

_ROLE_BY_FLAG = (
    (apsw.SQLITE_OPEN_MAIN_DB, "main"),
    (apsw.SQLITE_OPEN_MAIN_JOURNAL, "journal"),
    (apsw.SQLITE_OPEN_WAL, "wal"),
    (apsw.SQLITE_OPEN_SUPER_JOURNAL, "super_journal"),
)

# The text sqlite3_errstr() gives for each primary code a fault is likely to use.
_MESSAGES = {
    apsw.SQLITE_IOERR: "disk I/O error",
    apsw.SQLITE_FULL: "database or disk is full",
    apsw.SQLITE_CANTOPEN: "unable to open database file",
    apsw.SQLITE_CORRUPT: "database disk image is malformed",
    apsw.SQLITE_NOTADB: "file is not a database",
    apsw.SQLITE_READONLY: "attempt to write a readonly database",
    apsw.SQLITE_PERM: "access permission denied",
    apsw.SQLITE_BUSY: "database is locked",
    apsw.SQLITE_PROTOCOL: "locking protocol",
    apsw.SQLITE_AUTH: "authorization denied",
}


def resolve_code(code: int | str) -> int:
    """A SQLite result code from a number or a name.

    Names may be given with or without the ``SQLITE_`` prefix and in any case:
    ``"SQLITE_IOERR_SHORT_READ"``, ``"IOERR_SHORT_READ"``, ``"full"``. Raises ``ValueError`` for
    anything SQLite does not define.
    """
    if isinstance(code, bool):
        raise ValueError(f"not a SQLite result code: {code!r}")
    if isinstance(code, int):
        if code in apsw.mapping_result_codes or code in apsw.mapping_extended_result_codes:
            return code
        raise ValueError(f"{code} is not a SQLite result code (see https://sqlite.org/rescode.html)")
    name = str(code).strip().upper()
    if not name.startswith("SQLITE_"):
        name = "SQLITE_" + name
    for table in (apsw.mapping_result_codes, apsw.mapping_extended_result_codes):
        value = table.get(name)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{code!r} is not a SQLite result code name; examples: SQLITE_IOERR, IOERR_WRITE, "
        "IOERR_SHORT_READ, IOERR_FSYNC, FULL, CANTOPEN"
    )


def code_name(code: int) -> str:
    """The SQLite name of a result code (``778`` -> ``"SQLITE_IOERR_WRITE"``)."""
    name = apsw.mapping_extended_result_codes.get(code) or apsw.mapping_result_codes.get(code)
    return name if isinstance(name, str) else f"SQLITE_{code}"


def _role_for(flags: int) -> str:
    for flag, role in _ROLE_BY_FLAG:
        if flags & flag:
            return role
    return "temp"


def _normalise_ops(op: str | Iterable[str]) -> frozenset[str]:
    names = (op,) if isinstance(op, str) else tuple(op)
    if not names:
        raise ValueError("op: name at least one operation")
    out: set[str] = set()
    for name in names:
        key = str(name).lower()
        if key in _ANY:
            out.update(VFS_OPS)
            continue
        key = _OP_ALIASES.get(key, key)
        if key not in VFS_OPS:
            raise ValueError(f"op {name!r} is not one of {', '.join(VFS_OPS)} (or 'any')")
        out.add(key)
    return frozenset(out)


def _realpath(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


@attrs.define(eq=False)
class Fault:
    """One armed fault of a :class:`FailpointVFS`.

    What was armed: ``ops``, ``file``, ``code``, ``count``, ``after``, ``duration_s``,
    ``heal_on_last_close``, ``database``, ``short_fraction`` (treat them as read-only). Live state:
    ``seen`` (matching operations so far), ``failed`` (operations this fault failed), ``active``,
    ``healed_by`` (``"heal"``, ``"count"``, ``"duration"``, ``"last_close"``; None while active).
    """

    ops: frozenset[str]
    file: str
    code: int
    count: int | None
    after: int
    duration_s: float | None
    heal_on_last_close: bool
    database: str | None
    short_fraction: float = 0.5
    _deadline: float | None = attrs.field(default=None, repr=False)
    seen: int = 0
    failed: int = 0
    healed_by: str | None = None

    @property
    def active(self) -> bool:
        """True while the fault can still fail an operation."""
        return self.healed_by is None

    @property
    def code_name(self) -> str:
        return code_name(self.code)

    def _matches(self, op: str, role: str, path: str) -> bool:
        if op not in self.ops:
            return False
        if self.database is not None and not (path == self.database or path.startswith(self.database + "-")):
            return False
        if self.file in _ANY:
            return True
        if self.file in FILE_ROLES:
            return role == self.file
        if glob.has_magic(self.file):
            return fnmatch.fnmatchcase(path, self.file)
        return path == self.file


@attrs.frozen
class FailpointCounters:
    """A snapshot of what a :class:`FailpointVFS` saw.

    ``seen`` and ``failed`` map ``(op, role)`` to a count and answer 0 for pairs never seen:
    ``counters.failed["write", "wal"]``. :meth:`total` sums over either key.
    """

    seen: Mapping[tuple[str, str], int]
    failed: Mapping[tuple[str, str], int]

    def total(self, which: str = "failed", *, op: str | None = None, file: str | None = None) -> int:
        """Sum ``which`` (``"seen"`` or ``"failed"``) over every pair matching ``op`` and ``file``."""
        if which not in ("seen", "failed"):
            raise ValueError("which must be 'seen' or 'failed'")
        table: Mapping[tuple[str, str], int] = getattr(self, which)
        return sum(n for (o, r), n in table.items() if (op is None or o == op) and (file is None or r == file))


class _FailpointFile(apsw.VFSFile):
    """The default VFS's file, with every data operation asking the failpoint first."""

    def __init__(self, vfs: FailpointVFS, name: Any, flags: list[int]) -> None:
        self._fp = vfs
        self.role = _role_for(flags[0])
        raw = name.filename() if isinstance(name, apsw.URIFilename) else name
        self.path = _realpath(raw) if raw else ""
        self._closed = False
        super().__init__(vfs.base, name, flags)

    def xRead(self, amount: int, offset: int) -> bytes:
        fault = self._fp._check("read", self.role, self.path)
        if fault is not None and fault.code == apsw.SQLITE_IOERR_SHORT_READ:
            # A real short read: apsw zero-fills the rest and returns SQLITE_IOERR_SHORT_READ.
            return super().xRead(amount, offset)[: int(amount * fault.short_fraction)]
        if fault is not None:
            raise self._fp._exception(fault, "read", self.role, self.path)
        return super().xRead(amount, offset)

    def xWrite(self, data: Any, offset: int) -> None:
        self._fp._fail_if("write", self.role, self.path)
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        self._fp._fail_if("sync", self.role, self.path)
        super().xSync(flags)

    def xTruncate(self, newsize: int) -> None:
        self._fp._fail_if("truncate", self.role, self.path)
        super().xTruncate(newsize)

    def xFileSize(self) -> int:
        self._fp._fail_if("size", self.role, self.path)
        return super().xFileSize()

    def xClose(self) -> None:
        try:
            super().xClose()
        finally:
            if not self._closed:
                self._closed = True
                self._fp._closed(self.role, self.path)

    def excepthook(self, etype: Any, evalue: Any, etraceback: Any) -> bool:  # pragma: no cover - rare
        logger.warning("failpoint VFS: unreportable exception in a file method", exc_info=(etype, evalue, etraceback))
        return True


class FailpointVFS(apsw.VFS):
    """An apsw VFS, registered under ``name``, that fails chosen operations when armed.

    ``FailpointVFS("failpoint")`` registers at once; connections opened with
    ``apsw.Connection(path, vfs="failpoint")`` (or a corestore profile with ``driver = "apsw"``
    and ``vfs = "failpoint"``) go through it. It inherits ``base`` (``""``: the default VFS) for
    everything, WAL shared memory included. Until :meth:`arm` is called it only counts.

    Use it as a context manager (``with FailpointVFS("fp") as fp:``) to heal and unregister on
    exit. Thread-safe: SQLite may call it from any thread.
    """

    def __init__(self, name: str = "failpoint", *, base: str = "") -> None:
        if name in apsw.vfs_names():
            raise ValueError(
                f"a VFS named {name!r} is already registered; pick another name or unregister it first"
            )
        self.name = name
        self.base = base
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self._failed: collections.Counter[tuple[str, str]] = collections.Counter()
        self._open_main: collections.Counter[str] = collections.Counter()
        self._registered = True
        super().__init__(name, base)
        logger.debug("failpoint VFS %r registered over %r", name, base or "<default>")

    # -- the injector API ------------------------------------------------------------------

    def arm(
        self,
        *,
        op: str | Iterable[str],
        file: str | os.PathLike[str] = "any",
        code: int | str = apsw.SQLITE_IOERR,
        count: int | None = None,
        after: int = 0,
        duration_s: float | None = None,
        heal_on_last_close: bool = False,
        database: str | os.PathLike[str] | None = None,
        short_fraction: float = 0.5,
    ) -> Fault:
        """Arm a fault and return it.

        :param op: one of :data:`VFS_OPS`, a list of them, or ``"any"``.
        :param file: a role from :data:`FILE_ROLES` (``"main"``, ``"wal"``, ``"journal"`` ...),
            ``"any"``, a path (compared after ``realpath``) or a glob matched against the real path.
        :param code: the SQLite result code to fail with, a number or a name
            (default ``SQLITE_IOERR``, the hard "disk I/O error"). ``IOERR_SHORT_READ`` on ``read``
            produces a real short read (see the module notes).
        :param count: fail this many matching operations, then heal (None: no limit).
        :param after: let this many matching operations through first.
        :param duration_s: heal this many seconds after arming (None: no limit).
        :param heal_on_last_close: heal when the last main-database file of ``database`` (or, if
            unscoped, of this VFS) closes: "only a full restart cures it". ``store.close()``
            closes every connection, so it heals deterministically there.
        :param database: only fail files of this database (its path and ``-wal``/``-journal``).
        :param short_fraction: with ``IOERR_SHORT_READ`` on ``read``, the fraction of the bytes
            that arrive before the "end of file" (0 <= f < 1; 0: nothing arrives).
        """
        ops = _normalise_ops(op)
        value = resolve_code(code)
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 (or None for no limit)")
        if after < 0:
            raise ValueError("after must be >= 0")
        if not 0 <= short_fraction < 1:
            raise ValueError("short_fraction must be >= 0 and < 1")
        if duration_s is not None and duration_s <= 0:
            raise ValueError("duration_s must be > 0 (or None for no limit)")
        target = os.fspath(file)
        if target not in _ANY and target not in FILE_ROLES and not glob.has_magic(target):
            if not os.path.isabs(target):
                raise ValueError(
                    f"file {target!r} is neither a role ({', '.join(FILE_ROLES)}, any), "
                    "an absolute path nor a glob"
                )
            target = _realpath(target)
        fault = Fault(
            ops=ops,
            file=target,
            code=value,
            count=count,
            after=after,
            duration_s=duration_s,
            heal_on_last_close=heal_on_last_close,
            database=_realpath(database) if database is not None else None,
            short_fraction=short_fraction,
            deadline=time.monotonic() + duration_s if duration_s is not None else None,
        )
        with self._lock:
            self._faults.append(fault)
        logger.info(
            "failpoint VFS %r armed: %s on %s -> %s (count=%s after=%s duration_s=%s heal_on_last_close=%s)",
            self.name, ",".join(sorted(ops)), target, fault.code_name, count, after, duration_s, heal_on_last_close,
        )
        return fault

    @contextlib.contextmanager
    def armed(self, **kwargs: Any) -> Iterator[Fault]:
        """``with fp.armed(op="write", file="wal") as fault:`` arms for the block, heals after it."""
        fault = self.arm(**kwargs)
        try:
            yield fault
        finally:
            self.heal(fault)

    def heal(self, fault: Fault | None = None) -> None:
        """Heal one fault, or every armed fault when none is given."""
        with self._lock:
            targets = [fault] if fault is not None else list(self._faults)
            for f in targets:
                self._retire(f, "heal")
        if targets:
            logger.info("failpoint VFS %r healed %d fault(s)", self.name, len(targets))

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The faults still armed."""
        with self._lock:
            self._expire(time.monotonic())
            return tuple(self._faults)

    @property
    def counters(self) -> FailpointCounters:
        """Operations seen and failed so far, by ``(op, role)``."""
        with self._lock:
            return FailpointCounters(
                seen=types.MappingProxyType(collections.Counter(self._seen)),
                failed=types.MappingProxyType(collections.Counter(self._failed)),
            )

    def reset_counters(self) -> None:
        with self._lock:
            self._seen.clear()
            self._failed.clear()

    def open_count(self, database: str | os.PathLike[str] | None = None) -> int:
        """How many main-database files (one per connection) are open through this VFS, for
        ``database`` or in total."""
        with self._lock:
            if database is None:
                return sum(self._open_main.values())
            return self._open_main[_realpath(database)]

    def unregister(self) -> None:
        """Heal everything and unregister the VFS (safe to call twice)."""
        self.heal()
        if self._registered:
            self._registered = False
            super().unregister()
            logger.debug("failpoint VFS %r unregistered", self.name)

    def __enter__(self) -> FailpointVFS:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unregister()

    def __repr__(self) -> str:
        return f"<FailpointVFS {self.name!r} faults={len(self._faults)}>"

    # -- apsw VFS methods --------------------------------------------------------------------

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        role = _role_for(flags[0])
        raw = name.filename() if isinstance(name, apsw.URIFilename) else name
        path = _realpath(raw) if raw else ""
        self._fail_if("open", role, path)
        file = _FailpointFile(self, name, flags)
        if role == "main":
            with self._lock:
                self._open_main[path] += 1
        return file

    def excepthook(self, etype: Any, evalue: Any, etraceback: Any) -> bool:  # pragma: no cover - rare
        logger.warning("failpoint VFS %r: unreportable exception", self.name, exc_info=(etype, evalue, etraceback))
        return True

    # -- internals -------------------------------------------------------------------------

    def _retire(self, fault: Fault, reason: str) -> None:
        """Called with the lock held."""
        if fault.healed_by is None:
            fault.healed_by = reason
        if fault in self._faults:
            self._faults.remove(fault)

    def _expire(self, now: float) -> None:
        for fault in list(self._faults):
            if fault._deadline is not None and now >= fault._deadline:
                self._retire(fault, "duration")

    def _check(self, op: str, role: str, path: str) -> Fault | None:
        """Count the operation; return the fault that fails it, if any."""
        with self._lock:
            self._seen[op, role] += 1
            if not self._faults:
                return None
            self._expire(time.monotonic())
            hit: Fault | None = None
            for fault in list(self._faults):
                if not fault._matches(op, role, path):
                    continue
                n = fault.seen
                fault.seen += 1
                if hit is not None or n < fault.after:
                    continue
                fault.failed += 1
                hit = fault
                if fault.count is not None and fault.failed >= fault.count:
                    self._retire(fault, "count")
            if hit is not None:
                self._failed[op, role] += 1
        if hit is not None:
            logger.debug("failpoint VFS %r: failing %s on %s %s with %s", self.name, op, role, path, hit.code_name)
        return hit

    def _exception(self, fault: Fault, op: str, role: str, path: str) -> BaseException:
        exc = apsw.exception_for(fault.code)
        message = _MESSAGES.get(fault.code & 0xFF, "injected error")
        exc.args = (f"{message} (failpoint {self.name!r}: {fault.code_name} injected on {op} of {role} file {path or '<temp>'})",)
        return exc

    def _fail_if(self, op: str, role: str, path: str) -> None:
        fault = self._check(op, role, path)
        if fault is not None:
            raise self._exception(fault, op, role, path)

    def _closed(self, role: str, path: str) -> None:
        if role != "main":
            return
        healed = 0
        with self._lock:
            self._open_main[path] -= 1
            if self._open_main[path] <= 0:
                del self._open_main[path]
            total = sum(self._open_main.values())
            for fault in list(self._faults):
                if not fault.heal_on_last_close:
                    continue
                scope_closed = total == 0 if fault.database is None else fault.database not in self._open_main
                if scope_closed and (fault.database is None or fault.database == path):
                    self._retire(fault, "last_close")
                    healed += 1
        if healed:
            logger.info("failpoint VFS %r: last connection closed, %d fault(s) healed", self.name, healed)
