"""wal_invariants: post-commit checks that cannot false-fire (site/plugins/wal_invariants.md).

Why: hermes-agent's kanban store checked, after every COMMIT, that the main file was at least
``page_count × page_size`` long, and raised "torn-extend" corruption when it was not. In WAL mode
that check is wrong: committed frames live in ``-wal`` and the main file only grows at checkpoint,
and a running checkpoint writes page 1 (with the new page count) before the pages that extend the
file. Under worker bursts it false-fired constantly; a one-page tolerance still false-fired 79
times in 20 s. The earlier version also read the header with its own ``open()``/``close()``, which
drops every POSIX lock the process holds on the file (SQLite's included), and it *raised* after a
durable commit, so callers that retried wrote twice.

What this plugin checks, right after each COMMIT of a write (``on_commit_invariant``):

* **Rollback-journal modes** (delete, truncate, persist, memory, off): the main file is
  authoritative once COMMIT returns, so it must not be shorter than ``page_count × page_size``.
  Both numbers and the file size (``os.stat``) are taken inside one short read transaction on the
  committing connection: while it holds its SHARED lock no other connection can commit (a
  concurrent VACUUM cannot shrink the file between the two readings). If SQLite itself refuses to
  read the file at that point (``SQLITE_CORRUPT``: its header counts more pages than the file
  holds), that is the same violation, with the evidence read from the header.
* **WAL mode**: the length check is skipped. Instead, the file header must still say WAL (bytes
  18-19 == 2) and ``-wal`` must exist: a connection in WAL mode holds a lock that keeps every
  well-behaved process from switching the file out of WAL or deleting ``-wal``, so either
  failing means something broke the locking protocol (a dropped POSIX lock, a second SQLite
  library in the process, a network file system, a "cleanup" that deleted ``-wal``).
* **Journal-mode downgrade**: once a store has committed in WAL mode, a commit in a
  rollback-journal mode means the file was switched out of WAL behind it (another process
  downgraded it while this one had no connection open). Reported once per downgrade.

Cost. Rollback-mode commits are checked every time (one read transaction, ~10 µs, next to a
commit that costs at least ~20 µs and usually an fsync). In WAL mode, nothing the checks look at
can change while the connection holds its lock unless the locking protocol itself broke, and
what they detect then is lasting (a missing ``-wal`` stays missing), so a store checks at most
once per ``wal_check_interval_s`` (default 0.1 s; ~2 µs per check), and always on the first
commit of every new connection: the only moment at which another process can have downgraded
the file (it cannot while this process holds a WAL connection open).

Every check reads sizes with ``os.stat`` and the header through the process-lifetime descriptor
of :mod:`corestore.sqlitefile` (:func:`~corestore.sqlitefile.header_descriptor`,
:func:`~corestore.sqlitefile.read_header`; looked up again for every new connection, so a
replaced file is followed): this plugin never opens and closes the database file (site/operations.md,
rule 2). Anything that cannot be concluded (the connection is busy, closed, inside a
transaction, the read got BUSY) is counted as *inconclusive*, never reported: a check that cannot
be sure stays silent. Before a WAL-mode failure is reported it is re-verified inside a read
transaction.

A violation is *reported* by default: the core logs a WARNING with the evidence, counts it and
calls ``on_fatal`` with kind ``INVARIANT`` (so a policy such as ``quarantine`` can act), and this
plugin's health component turns DOWN. It is not raised: the data is durable, and an exception
invites a retry that writes twice. ``on_violation = "raise"`` asks the core to raise
:class:`corestore.InvariantViolation` (``committed=True``, carrying the unit's result) instead.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from corestore import (
    ErrorKind,
    HealthComponent,
    HealthStatus,
    InvariantViolation,
    Violation,
    hookimpl,
)
from corestore.classify import classify_exception
from corestore.settings import integer_at_least, non_negative_seconds, one_of
from corestore.sqlitefile import header_descriptor, read_header
from corestore.timefmt import now_iso

from ._wal_snapshot import _end_read, _in_transaction, _Inconclusive, _size, _Snapshot

__all__ = ["WalInvariants", "ROLLBACK_MODES", "CHECKS"]

logger = logging.getLogger(__name__)

#: Journal modes in which the main file is authoritative after COMMIT.
ROLLBACK_MODES = frozenset({"delete", "truncate", "persist", "memory", "off"})

#: The ``check`` names this plugin reports (``Violation.check``).
CHECKS = (
    "wal_invariants.file_length",  # rollback modes: file shorter than page_count x page_size
    "wal_invariants.readable",  # SQLite refused to read the file right after COMMIT
    "wal_invariants.wal_header",  # WAL connection, header no longer says WAL
    "wal_invariants.wal_file",  # WAL connection, -wal missing
    "wal_invariants.journal_mode",  # the store ran in WAL, now commits in a rollback mode
)

# One statement, inside the read transaction: page count, page size and the connection's mode.
_SNAPSHOT_SQL = (
    "SELECT page_count, page_size, journal_mode "
    "FROM pragma_page_count(), pragma_page_size(), pragma_journal_mode()"
)
_WAL_BYTES = b"\x02\x02"
_MODE_CACHE_LIMIT = 256  # connections remembered; a miss only costs one PRAGMA


class WalInvariants:
    """Post-commit invariants that are WAL-aware and never false-fire.

    Settings (``[profiles.NAME.settings.wal_invariants]``):

    ======================== ===== ========== ======================================================
    name                     type  default    meaning
    ======================== ===== ========== ======================================================
    ``on_violation``         str   "report"   ``"report"``: WARNING, health DOWN, ``on_fatal`` (kind
                                              INVARIANT), the caller's unit returns normally.
                                              ``"raise"``: the same, then the core raises
                                              ``InvariantViolation(committed=True)`` carrying the
                                              unit's result. Never retry it: the data is durable.
    ``recover_after_checks`` int   0          After a violation the health component stays DOWN
                                              until :meth:`reset` (0), or until this many
                                              consecutive checks ran clean.
    ``wal_check_interval_s`` float 0.1        WAL mode: check at most this often per store (0:
                                              every commit). Rollback modes and the first commit
                                              of each connection are always checked.
    ======================== ===== ========== ======================================================

    Health component ``wal_invariants``: UP with the check counters; DOWN after a violation,
    with the last violation's check, message, evidence and time.
    """

    name: ClassVar[str] = "wal_invariants"
    #: SQLite only: a PostgreSQL profile that lists it is refused at open (corestore.registry.check_engine)
    engines: ClassVar[tuple[str, ...]] = ("sqlite",)

    @attrs.frozen(kw_only=True)
    class Settings:
        """Settings of :class:`WalInvariants`."""

        on_violation: str = attrs.field(
            default="report", validator=one_of("report", "raise"),
            metadata={"help": "report (WARNING, health DOWN, on_fatal) or raise InvariantViolation(committed=True)"},
        )
        recover_after_checks: int = attrs.field(
            default=0, validator=integer_at_least(0),
            metadata={"help": "consecutive clean checks that clear DOWN after a violation (0: only reset() does)"},
        )
        wal_check_interval_s: float = attrs.field(
            default=0.1, validator=non_negative_seconds,
            metadata={"help": "WAL mode: check at most this often per store (0: every commit); "
                              "rollback modes and a connection's first commit are always checked"},
        )

    def __init__(self, settings: WalInvariants.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`) is what the
        plugin's time-based rules read: the same keyword, and the same ``clock`` attribute, on
        every shipped plugin that reads the time."""
        self.settings = settings if settings is not None else self.Settings()
        self.clock: Callable[[], float] = clock
        self._lock = threading.Lock()
        # id(connection) -> journal mode last seen on it. A hint only: a "wal" hint is re-verified
        # whenever a WAL check fails, a rollback hint is re-read inside every rollback check, so a
        # stale entry (an id reused by a new connection) can never produce a violation.
        self._modes: dict[int, str] = {}
        self._seen_wal = False
        self._fd: int | None = None  # the process-lifetime header descriptor (never closed here)
        self._next_wal_check = 0.0  # monotonic time of the next WAL check
        self._down = False
        self._clean = 0
        self._last_violation: dict[str, Any] | None = None
        self._last_inconclusive: str | None = None
        self._counts = {"checks": 0, "wal_checks": 0, "rollback_checks": 0, "inconclusive": 0, "violations": 0}

    # -- public ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Clear the DOWN state after a violation was dealt with (one WARNING if it was DOWN)."""
        with self._lock:
            was_down, self._down, self._clean = self._down, False, 0
        if was_down:
            logger.warning("wal_invariants: reset(); health back UP (last violation: %s)",
                           (self._last_violation or {}).get("check"))

    @property
    def down(self) -> bool:
        """True while the health component is DOWN after a violation."""
        return self._down

    @property
    def last_violation(self) -> dict[str, Any] | None:
        """The last violation seen: ``check``, ``message``, ``evidence``, ``at`` (ISO time)."""
        return dict(self._last_violation) if self._last_violation else None

    def stats(self) -> dict[str, Any]:
        """Counters: ``checks``, ``wal_checks``, ``rollback_checks``, ``inconclusive``,
        ``violations``; plus ``down`` and ``last_inconclusive`` (the reason)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
        out["down"] = self._down
        out["last_inconclusive"] = self._last_inconclusive
        return out

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any) -> list[Violation] | None:
        """Check the file after a COMMIT (see the module docs); report or raise violations. (It
        does not name ``operation``: alone in a profile it costs the core no Operation object.)"""
        mode = self._modes.get(id(connection))
        if mode == "wal":
            now = self.clock()
            if now < self._next_wal_check:
                return None  # checked less than wal_check_interval_s ago on a connection known to be WAL
            self._next_wal_check = now + self.settings.wal_check_interval_s
        if store.memory:
            return None
        path: str = store.path
        try:
            if mode is None:  # first commit on this connection: always checked
                mode = self._learn_mode(connection)
                self._fd = header_descriptor(path)  # the file may have been replaced since
                self._next_wal_check = self.clock() + self.settings.wal_check_interval_s
            if mode == "wal":
                violations = self._check_wal(path, connection)
            else:
                violations = self._check_rollback(path, connection)
        except _Inconclusive as why:
            self._inconclusive(path, str(why))
            return None
        if violations or self._down:
            return self._conclude(path, violations)
        return None

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """UP with counters, or DOWN with the last violation."""
        stats = self.stats()
        details: dict[str, Any] = dict(stats)
        details["on_violation"] = self.settings.on_violation
        last = self.last_violation
        if last is not None:
            details["last_violation"] = last
        if self._down and last is not None:
            until = ("reset()" if not self.settings.recover_after_checks
                     else f"{self.settings.recover_after_checks} clean checks or reset()")
            summary = f"{last['check']}: {last['message']} (DOWN until {until})"
            return HealthComponent(name=self.name, status=HealthStatus.DOWN, summary=summary, details=details)
        if stats["violations"]:
            summary = f"{stats['checks']} post-commit checks, {stats['violations']} violation(s), recovered"
        else:
            summary = f"{stats['checks']} post-commit checks, no violation"
        return HealthComponent(name=self.name, status=HealthStatus.UP, summary=summary, details=details)

    @hookimpl
    def on_open(self, store: Any, connection: Any) -> None:
        """A new connection: forget whatever an earlier connection with the same id left, so its
        first commit is always checked (that is where a downgrade by another process shows)."""
        self._modes.pop(id(connection), None)

    @hookimpl
    def on_close(self, store: Any) -> None:
        """Forget per-connection state."""
        with self._lock:
            self._modes.clear()

    # -- the checks ------------------------------------------------------------------------------
    def _learn_mode(self, conn: Any) -> str:
        """The connection's journal mode (first commit on a connection: one PRAGMA)."""
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        except Exception as err:  # closed from another thread, I/O error: the next commit tells
            raise _Inconclusive(f"PRAGMA journal_mode failed: {type(err).__name__}: {err}") from err
        self._remember(conn, mode)
        return mode

    def _remember(self, conn: Any, mode: str) -> None:
        with self._lock:
            if len(self._modes) >= _MODE_CACHE_LIMIT:
                self._modes.clear()
            self._modes[id(conn)] = mode
            if mode == "wal":
                self._seen_wal = True

    def _check_wal(self, path: str, conn: Any) -> list[Violation]:
        """WAL fast path: header bytes 18-19 through the process-lifetime descriptor, and an
        ``os.stat`` of ``-wal``; anything amiss is re-verified inside a read transaction."""
        with self._lock:
            self._counts["checks"] += 1
            self._counts["wal_checks"] += 1
        fd = self._fd
        if fd is not None:
            try:
                wal_header = os.pread(fd, 2, 18) == _WAL_BYTES
            except OSError:
                wal_header = False
            if wal_header:
                try:
                    os.stat(path + "-wal")
                    return []
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise _Inconclusive(f"stat of -wal failed: {err}") from err
        # Something looks wrong: look again, authoritatively, inside a read transaction.
        self._fd = header_descriptor(path)
        return self._judge(path, conn, self._snapshot(path, conn), fast_path="wal")

    def _check_rollback(self, path: str, conn: Any) -> list[Violation]:
        with self._lock:
            self._counts["checks"] += 1
            self._counts["rollback_checks"] += 1
        return self._judge(path, conn, self._snapshot(path, conn), fast_path="rollback")

    def _snapshot(self, path: str, conn: Any) -> _Snapshot:
        """Page count, page size and mode from SQLite, the sizes from ``os.stat`` and the header,
        all inside one short read transaction on ``conn``.

        Raises :class:`_Inconclusive` when the read cannot be made (busy, closed, already in a
        transaction), and returns a snapshot with ``mode == "corrupt"`` when SQLite refused to
        read the file (``SQLITE_CORRUPT``/``SQLITE_NOTADB``).
        """
        try:
            busy = _in_transaction(conn)
        except Exception as err:  # closed from another thread
            raise _Inconclusive(f"connection unusable: {type(err).__name__}: {err}") from err
        if busy:
            raise _Inconclusive("the connection is inside a transaction (a BEGIN through autocommit?)")
        try:
            conn.execute("BEGIN")
        except Exception as err:
            raise _Inconclusive(f"BEGIN failed: {type(err).__name__}: {err}") from err
        try:
            try:
                page_count, page_size, mode = conn.execute(_SNAPSHOT_SQL).fetchone()
            except Exception as err:
                kind = classify_exception(err)
                if kind.kind is ErrorKind.CORRUPT:
                    return _Snapshot(-1, -1, "corrupt:" + (kind.name or "SQLITE_CORRUPT"),
                                     _size(path), _size(path + "-wal"), read_header(path))
                raise _Inconclusive(f"read failed: {kind.name or type(err).__name__}: {kind.message}") from err
            # Still inside the read transaction: no other connection can commit in a rollback
            # mode, so the size belongs to the same state as page_count. The header and -wal are
            # only needed to judge WAL (or a downgrade from it).
            mode = str(mode).lower()
            wal_side = mode == "wal" or self._seen_wal
            return _Snapshot(int(page_count), int(page_size), mode, _size(path),
                             _size(path + "-wal") if wal_side else None, read_header(path) if wal_side else None)
        finally:
            _end_read(conn)

    def _judge(self, path: str, conn: Any, snap: _Snapshot, *, fast_path: str) -> list[Violation]:
        """Turn a snapshot into violations (none when all holds)."""
        violations: list[Violation] = []
        header = snap.header
        if snap.mode.startswith("corrupt:"):
            # SQLite refused to read the file right after our COMMIT.
            code = snap.mode.split(":", 1)[1]
            evidence: dict[str, Any] = {"sqlite_error": code, "file_bytes": snap.file_bytes,
                                        "connection_mode": self._modes.get(id(conn), "unknown")}
            if header is not None:
                evidence.update(header_journal_mode=header.journal_mode, header_page_count=header.page_count,
                                page_size=header.page_size,
                                header_count_valid=header.version_valid_for == header.change_counter)
            rollback = fast_path == "rollback" and (header is None or not header.is_wal)
            if (rollback and header is not None and snap.file_bytes is not None
                    and header.version_valid_for == header.change_counter
                    and header.page_count * header.page_size > snap.file_bytes):
                need = header.page_count * header.page_size
                evidence.update(expected_min_bytes=need, shortfall_bytes=need - snap.file_bytes)
                violations.append(Violation(
                    check="wal_invariants.file_length",
                    message=(f"the file is {snap.file_bytes} bytes but its header counts {header.page_count} pages "
                             f"x {header.page_size} = {need} bytes (SQLite: {code}): torn extend after COMMIT"),
                    evidence=evidence,
                ))
            else:
                violations.append(Violation(
                    check="wal_invariants.readable",
                    message=(f"SQLite refused to read the file right after COMMIT ({code}); "
                             f"file {snap.file_bytes} bytes"),
                    evidence=evidence,
                ))
            return violations
        self._remember(conn, snap.mode)
        if snap.mode == "wal":
            if header is not None and not header.is_wal:
                violations.append(Violation(
                    check="wal_invariants.wal_header",
                    message=(f"this connection writes WAL frames but the file header says {header.journal_mode} "
                             f"(bytes 18-19 = {header.write_version},{header.read_version}): another process or "
                             "library switched the file behind a held lock"),
                    evidence={"connection_mode": "wal", "header_journal_mode": header.journal_mode,
                              "header_write_version": header.write_version, "header_read_version": header.read_version,
                              "file_bytes": snap.file_bytes, "wal_bytes": snap.wal_bytes},
                ))
            if snap.wal_bytes is None:
                violations.append(Violation(
                    check="wal_invariants.wal_file",
                    message=(f"this connection is in WAL mode but {os.path.basename(path)}-wal does not exist: "
                             "commits since it disappeared are invisible to other processes and lost at restart"),
                    evidence={"connection_mode": "wal", "wal_exists": False, "file_bytes": snap.file_bytes,
                              "header_journal_mode": header.journal_mode if header else None},
                ))
            return violations
        # A rollback-journal mode.
        with self._lock:
            downgraded, self._seen_wal = self._seen_wal, False
        if downgraded:
            violations.append(Violation(
                check="wal_invariants.journal_mode",
                message=(f"this store committed in WAL mode before, and now commits in journal_mode={snap.mode} "
                         f"(header: {header.journal_mode if header else 'unreadable'}): the file was switched out "
                         "of WAL behind it; processes on mixed journal modes corrupt files"),
                evidence={"connection_mode": snap.mode, "expected_mode": "wal",
                          "header_journal_mode": header.journal_mode if header else None,
                          "wal_bytes": snap.wal_bytes, "file_bytes": snap.file_bytes},
            ))
        if snap.mode in ROLLBACK_MODES and snap.file_bytes is not None:
            need = snap.page_count * snap.page_size
            if snap.file_bytes < need:
                violations.append(Violation(
                    check="wal_invariants.file_length",
                    message=(f"the file is {snap.file_bytes} bytes, shorter than page_count {snap.page_count} x "
                             f"page_size {snap.page_size} = {need} bytes after COMMIT (journal_mode={snap.mode})"),
                    evidence={"journal_mode": snap.mode, "page_count": snap.page_count, "page_size": snap.page_size,
                              "expected_min_bytes": need, "file_bytes": snap.file_bytes,
                              "shortfall_bytes": need - snap.file_bytes},
                ))
        return violations

    # -- outcome -------------------------------------------------------------------------------
    def _inconclusive(self, path: str, why: str) -> None:
        with self._lock:
            self._counts["inconclusive"] += 1
            self._last_inconclusive = why
        logger.debug("%s: wal_invariants check inconclusive: %s", path, why)

    def _conclude(self, path: str, violations: list[Violation]) -> list[Violation] | None:
        if not violations:
            if self._down and self.settings.recover_after_checks:
                with self._lock:
                    self._clean += 1
                    recovered = self._down and self._clean >= self.settings.recover_after_checks
                    if recovered:
                        self._down, self._clean = False, 0
                if recovered:
                    logger.warning("%s: wal_invariants: %d clean checks since the last violation; health back UP",
                                   path, self.settings.recover_after_checks)
            return None
        first = violations[0]
        with self._lock:
            self._counts["violations"] += len(violations)
            self._last_violation = {"check": first.check, "message": first.message,
                                    "evidence": dict(first.evidence), "at": now_iso(),
                                    "all_checks": [v.check for v in violations]}
            was_down, self._down, self._clean = self._down, True, 0
        if not was_down:
            logger.warning("%s: wal_invariants: health DOWN after %s (evidence %s); the data is committed",
                           path, first.check, dict(first.evidence))
        if self.settings.on_violation == "raise":
            raise InvariantViolation(
                f"{path}: post-commit invariant violated: " + "; ".join(f"{v.check}: {v.message}" for v in violations),
                violations=tuple(violations), path=path,
            )
        return violations
