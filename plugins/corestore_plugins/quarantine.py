"""quarantine: stop writing to a database at the first sign of real corruption (site/plugins/quarantine.md).

Why: screenpipe's write queue (site/plugins/quarantine.md) retried and reopened its way through a persistent
disk fault for 10-15 minutes while every batch failed; after several rounds of escalation tiers
upstream concluded that re-opening and retrying on a *damaged* file is unsafe and quarantined the
database on the first sign of corruption instead. This plugin is that policy, written as an
ordinary corestore plugin on top of the hooks (an example of composing policies): it needs no
help from the core.

Behaviour:

* **Entering.** ``on_fatal`` with a classification whose kind is in ``kinds`` (default
  ``CORRUPT`` and ``INVARIANT``, the latter from ``wal_invariants``) puts the store in quarantine:
  one WARNING with the evidence, a sidecar marker ``<db>.corestore-quarantine`` (JSON: reason,
  time, classification, the operation, the evidence: violations, header fields, file sizes),
  health DOWN, and ``on_persistent_failure`` fired once (the application's "restart me" or
  "page someone" seam).
* **While quarantined.** ``before_operation`` refuses writes (and checkpoints) with
  :class:`corestore.CorruptionError` naming the reason and the time; reads (and ``backup()``, a
  read that preserves the evidence) are allowed unless ``allow_reads = false``.
* **Across restarts and processes.** The marker is read when the store opens its first
  connection, so a restarted service stays quarantined (without firing
  ``on_persistent_failure`` again: that would be a restart loop). Writes also look for a marker
  written by another process at most every ``recheck_s`` seconds.
* **Leaving.** Only ``corestore doctor --clear-quarantine PATH`` removes the marker, after showing
  the evidence (:func:`clear_marker` is what it calls). A running store whose marker disappears
  lifts its quarantine at its next refused operation (one WARNING).
* **Not a quarantine.** ``NOTADB`` on a store that never completed an operation is a file that
  was never a SQLite database (a wrong path): the caller gets the core's "not a SQLite database"
  error and nothing is written next to the file. The plugin never touches the database, ``-wal``
  or ``-shm`` (site/operations.md, rule 1) and reads the header only through
  :func:`corestore.sqlitefile.read_header` (rule 2).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
from typing import Any, ClassVar, Iterable, Mapping

import attrs

from corestore import (
    Classification,
    CorruptionError,
    ErrorKind,
    HealthComponent,
    HealthReport,
    HealthStatus,
    hookimpl,
)
from corestore.errors import ConfigError
from corestore.sidecar import create_temporary, open_sidecar, read_sidecar, sidecar_path, unlink_sidecar
from corestore.sqlitefile import read_header
from corestore.settings import boolean, non_negative_seconds

__all__ = [
    "Quarantine",
    "MARKER_SUFFIX",
    "MARKER_FORMAT",
    "marker_path",
    "read_marker",
    "write_marker",
    "clear_marker",
    "format_marker",
]

logger = logging.getLogger(__name__)

#: The sidecar marker next to the database: ``<db>.corestore-quarantine``.
MARKER_SUFFIX = ".corestore-quarantine"
#: The ``format`` field of a marker written by this version.
MARKER_FORMAT = "corestore-quarantine/1"

_NOTADB = 26
_FAULT_KINDS = tuple(k.name for k in ErrorKind if k not in (ErrorKind.BUSY, ErrorKind.CONSTRAINT,
                                                             ErrorKind.PROGRAMMING, ErrorKind.UNKNOWN))


# -- the marker (also used by `corestore doctor --clear-quarantine`) ----------------------------
def _database_path(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def marker_path(path: str | os.PathLike[str]) -> str:
    """The marker file of the database at ``path``: always ``<resolved db path>.corestore-quarantine``
    (hashed when that name is too long, see :func:`corestore.sidecar.sidecar_path`).

    The database path is resolved like ``corestore.open`` resolves it (absolute, symlinks
    followed), so the doctor and the store agree on the sidecar. A path is always taken as the
    database, even one that ends in the marker suffix: the result is never ``path`` itself.
    """
    return sidecar_path(_database_path(path), MARKER_SUFFIX)


def _unreadable(target: str, error: str, raw: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"marker": target, "reason": "unreadable quarantine marker", "unreadable": True,
                              "error": error}
    if raw is not None:
        record["raw"] = raw
    return record


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The quarantine record of the database at ``path``, or None when it is not quarantined.

    A marker that exists but cannot be used (not UTF-8, not JSON, a symlink, another user's
    file) still means "quarantined": the record then says
    ``{"reason": "unreadable quarantine marker", "unreadable": True, "error": ...}``.
    """
    db = _database_path(path)
    target = marker_path(path)
    try:
        data = read_sidecar(target, db, limit=1 << 20)
    except OSError as err:
        return _unreadable(target, f"{type(err).__name__}: {err}")
    if data is None:
        return None
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return _unreadable(target, f"not UTF-8: {err}", data[:2000].decode("utf-8", "replace"))
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        return _unreadable(target, f"{type(err).__name__}: {err}", raw[:2000])
    record.setdefault("marker", target)
    return record


def write_marker(path: str | os.PathLike[str], record: Mapping[str, Any]) -> str:
    """Write ``record`` as the marker of the database at ``path`` atomically (an ``O_EXCL``
    temporary with the database's mode, fsync, rename, directory fsync); returns the marker path.
    Raises ``OSError`` on failure (:class:`corestore.sidecar.SidecarError` when the existing marker
    is not ours to replace)."""
    db = _database_path(path)
    target = marker_path(path)
    directory = os.path.dirname(target) or "."
    if os.path.lexists(target):  # never replace a planted symlink, another user's file or a database
        os.close(open_sidecar(target, db, os.O_RDONLY, create=False))
    data = json.dumps(dict(record), indent=2, sort_keys=True, default=str) + "\n"
    fd, tmp = create_temporary(target, db)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return target
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some file systems refuse a directory fsync
        pass
    finally:
        os.close(dfd)
    return target


def clear_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Remove the marker of the database at ``path``; returns the record it held (the evidence
    removed), or None when there was none. For ``corestore doctor --clear-quarantine``.

    Never removes the database: :func:`corestore.sidecar.unlink_sidecar` refuses the database's
    own path and any file that starts with the SQLite header (``SidecarError``)."""
    record = read_marker(path)
    if record is None:
        return None
    if not unlink_sidecar(marker_path(path), _database_path(path)):
        return None
    return record


def format_marker(record: Mapping[str, Any]) -> str:
    """A human-readable summary of a marker record (what the doctor shows before clearing)."""
    lines = [f"quarantined since {record.get('since', '?')}: {record.get('reason', '?')}"]
    for key in ("database", "marker", "pid", "host"):
        if record.get(key) is not None:
            lines.append(f"  {key}: {record[key]}")
    c = record.get("classification")
    if isinstance(c, Mapping):
        fields = ("kind", "name", "code", "extended_code", "source")
        lines.append("  classification: " + ", ".join(f"{k}={c[k]}" for k in fields if c.get(k) is not None))
        if c.get("message"):
            lines.append(f"  message: {c['message']}")
    op = record.get("operation")
    if isinstance(op, Mapping):
        keys = ("kind", "name", "attempt")
        lines.append("  operation: " + ", ".join(f"{k}={op[k]}" for k in keys if op.get(k) is not None))
    evidence = record.get("evidence")
    if isinstance(evidence, Mapping):
        for v in evidence.get("violations") or ():
            if isinstance(v, Mapping):
                lines.append(f"  violation {v.get('check')}: {v.get('message')}")
                if v.get("evidence"):
                    lines.append(f"    evidence: {json.dumps(v['evidence'], sort_keys=True, default=str)}")
        for key in ("files", "header"):
            if evidence.get(key):
                lines.append(f"  {key}: {json.dumps(evidence[key], sort_keys=True, default=str)}")
    if record.get("unreadable"):
        lines.append(f"  marker unreadable: {record.get('error')}")
    return "\n".join(lines)


# -- settings ----------------------------------------------------------------------------------
def _kinds_converter(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, ErrorKind)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise ConfigError(f"kinds = {value!r} must be a list of error kinds; allowed: {', '.join(_FAULT_KINDS)}")
    out = []
    for item in value:
        name = item.name if isinstance(item, ErrorKind) else str(item).strip().upper()
        if name not in _FAULT_KINDS:
            raise ConfigError(f"kinds: {item!r} is not a fault kind on_fatal reports; "
                              f"allowed: {', '.join(_FAULT_KINDS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"kinds must name at least one kind; allowed: {', '.join(_FAULT_KINDS)}")
    return tuple(out)






def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


class Quarantine:
    """A fault policy: refuse writes to a database that showed real corruption, until a person
    has looked (``corestore doctor --clear-quarantine PATH``).

    Settings (``[profiles.NAME.settings.quarantine]``):

    ================ =========== ======================== =========================================
    name             type        default                  meaning
    ================ =========== ======================== =========================================
    ``kinds``        list[str]   ["CORRUPT", "INVARIANT"] error kinds (``on_fatal`` classifications)
                                                          that quarantine the store; any fault kind
                                                          (e.g. add "FATAL_IO" to quarantine on a
                                                          hard disk I/O error, as screenpipe did)
    ``allow_reads``  bool        true                     reads (and ``backup()``) still run while
                                                          quarantined; false refuses them too
    ``recheck_s``    float       1.0                      how often (seconds) writes look for a
                                                          marker written by another process, or
                                                          removed by the doctor (0: every write)
    ``confirm_s``    float       10.0                     on CORRUPT, run ``PRAGMA quick_check`` for
                                                          at most this many seconds first; a clean
                                                          result means no quarantine (0: never
                                                          confirm, quarantine at once)
    ================ =========== ======================== =========================================

    Why confirm: SQLite reports an EIO from ``pread`` in the middle of a statement as plain
    ``SQLITE_CORRUPT`` (11), not as an I/O error (measured on this platform; see the failpoint
    tests), so one transient read error would otherwise quarantine an intact file. Only a clean
    ``quick_check`` spares the store: corruption found, an error, or a check that does not finish
    within ``confirm_s`` all quarantine (a safety policy errs towards not writing).

    Health component ``quarantine``: UP, or DOWN with the reason, time and marker path.
    """

    name: ClassVar[str] = "quarantine"

    @attrs.frozen(kw_only=True)
    class Settings:
        """Settings of :class:`Quarantine`."""

        kinds: tuple[str, ...] = attrs.field(
            default=("CORRUPT", "INVARIANT"), converter=_kinds_converter,
            metadata={"help": "error kinds that quarantine the store (any fault kind: CORRUPT, INVARIANT, FATAL_IO)"},
        )
        allow_reads: bool = attrs.field(
            default=True, validator=boolean,
            metadata={"help": "let reads (and backup) run while quarantined"},
        )
        recheck_s: float = attrs.field(
            default=1.0, validator=non_negative_seconds,
            metadata={"help": "seconds between looks for a marker written by another process or removed by the doctor"},
        )
        confirm_s: float = attrs.field(
            default=10.0, validator=non_negative_seconds,
            metadata={"help": "on CORRUPT, seconds of PRAGMA quick_check that must find damage first (0: no check)"},
        )

    def __init__(self, settings: "Quarantine.Settings | None" = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._lock = threading.Lock()
        self._record: dict[str, Any] | None = None  # the quarantine, when in one
        self._marker_on_disk = False  # the current quarantine's marker was written or read
        self._loaded = False
        self._next_check = 0.0
        self._episodes = 0
        self._refused = 0
        self._spared = 0  # CORRUPT reports a clean quick_check refuted

    # -- public ------------------------------------------------------------------------------
    @property
    def quarantined(self) -> bool:
        """True while the store is quarantined."""
        return self._record is not None

    @property
    def record(self) -> dict[str, Any] | None:
        """The quarantine record (what the marker holds), or None."""
        record = self._record
        return dict(record) if record is not None else None

    def stats(self) -> dict[str, Any]:
        """``quarantined``, ``episodes`` (entered in this process), ``refused`` (operations),
        ``spared`` (CORRUPT reports a clean ``quick_check`` refuted)."""
        return {"quarantined": self.quarantined, "episodes": self._episodes, "refused": self._refused,
                "spared": self._spared}

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def on_store_open(self, store: Any) -> None:
        """Once per store: pick up a marker left by an earlier run."""
        self._loaded = True
        self._refresh(store, at_open=True)

    @hookimpl
    def before_operation(self, store: Any, operation: Any) -> None:
        """Refuse writes (and reads, unless allowed) while quarantined."""
        if self._record is None:
            if not self._due():
                return
            self._refresh(store, at_open=False)
            if self._record is None:
                return
        elif self._marker_on_disk and self._due():
            self._refresh(store, at_open=False)  # the doctor may have cleared it
            if self._record is None:
                return
        record = self._record
        if record is None:
            return
        if self.settings.allow_reads and operation.kind in ("read", "backup"):
            return
        self._refused += 1
        what = "reads and writes are" if not self.settings.allow_reads else "writes are"
        raise CorruptionError(
            f"{store.path}: quarantined since {record.get('since')} ({record.get('reason')}); {what} refused so the "
            f"damaged file is not made worse. Keep the -wal and -shm files; inspect with `corestore doctor "
            f"{store.path}`, restore or repair, then `corestore doctor --clear-quarantine {store.path}`.",
            classification=Classification(kind=ErrorKind.CORRUPT, name="QUARANTINED",
                                          message=str(record.get("reason", ""))[:200], source=self.name),
            committed=False, path=store.path,
        )

    @hookimpl
    def on_fatal(self, store: Any, error: BaseException, classification: Classification, operation: Any) -> None:
        """Enter quarantine on a fault of a configured kind (once; later faults add nothing)."""
        if classification.source == self.name or classification.kind.name not in self.settings.kinds:
            return
        if self._record is not None:
            return
        if classification.code == _NOTADB or classification.extended_code == _NOTADB:
            if not self._ever_succeeded(store):
                logger.info("%s: not a SQLite database (NOTADB before any successful operation); not a quarantine",
                            store.path)
                return
        if classification.kind is ErrorKind.CORRUPT and self.settings.confirm_s > 0:
            verdict = self._confirm(store)
            if verdict == "ok":
                self._spared += 1
                logger.warning(
                    "%s: SQLite reported %s, but PRAGMA quick_check finds the file intact: not quarantined "
                    "(a read error reported as corruption; the circuit breaker and health see the fault)",
                    store.path, classification.name or classification.kind.name)
                return
        else:
            verdict = None
        record = self._build_record(store, error, classification, operation)
        if verdict is not None:
            record["quick_check"] = verdict
        with self._lock:
            if self._record is not None:
                return
            self._record = record
            self._episodes += 1
        self._marker_on_disk = self._persist(store, record)
        logger.warning("%s: QUARANTINED: %s; writes are refused until `corestore doctor --clear-quarantine %s` "
                       "(evidence in %s)", store.path, record["reason"], store.path,
                       record.get("marker") or "memory only")
        self._fire_persistent(store)

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """DOWN while quarantined (reason, time, marker), else UP."""
        record = self._record
        if record is None:
            return HealthComponent(name=self.name, status=HealthStatus.UP, summary="not quarantined",
                                   details={"kinds": list(self.settings.kinds), **self.stats()})
        details = {"reason": record.get("reason"), "since": record.get("since"), "marker": record.get("marker"),
                   "allow_reads": self.settings.allow_reads, "classification": record.get("classification"),
                   **self.stats()}
        return HealthComponent(name=self.name, status=HealthStatus.DOWN,
                               summary=f"quarantined since {record.get('since')}: {record.get('reason')}",
                               details=details)

    # -- internals -----------------------------------------------------------------------------
    def _confirm(self, store: Any) -> str:
        """``PRAGMA quick_check(1)`` on this thread's connection (outside any transaction: the
        failed one has ended), aborted after ``confirm_s``: ``"ok"``, what SQLite found, or why
        the check could not conclude. Uses the store's own driver and connection, never a second
        library or descriptor on the file (site/operations.md, rule 2)."""
        deadline = time.monotonic() + self.settings.confirm_s
        try:
            conn = store.database.cursor().connection
            if store.profile.driver == "apsw":
                conn.setprogresshandler(lambda: time.monotonic() > deadline, 1000)
                try:
                    row = conn.execute("PRAGMA quick_check(1)").fetchone()
                finally:
                    conn.setprogresshandler(None)
            else:
                conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
                try:
                    row = conn.execute("PRAGMA quick_check(1)").fetchone()
                finally:
                    conn.set_progress_handler(None, 0)
        except Exception as err:  # an I/O error, interrupted (timeout), corruption: inconclusive
            return f"inconclusive: {type(err).__name__}: {err}"
        return str(row[0]) if row else "inconclusive: no result"

    def _due(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.settings.recheck_s
        return True

    def _refresh(self, store: Any, *, at_open: bool) -> None:
        """Bring the in-memory state in line with the marker on disk."""
        if store.memory:
            return
        record = read_marker(store.path)
        if record is not None:
            with self._lock:
                entered = self._record is None
                self._record = record
                self._marker_on_disk = True
            if entered:
                if at_open:
                    logger.warning("%s: QUARANTINED since %s (%s), from the marker %s; writes are refused until "
                                   "`corestore doctor --clear-quarantine %s`", store.path, record.get("since"),
                                   record.get("reason"), record.get("marker"), store.path)
                else:  # another process quarantined it while this one was running
                    self._episodes += 1
                    logger.warning("%s: QUARANTINED by another process (pid %s on %s) since %s: %s", store.path,
                                   record.get("pid"), record.get("host"), record.get("since"), record.get("reason"))
                    self._fire_persistent(store)
            return
        previous: dict[str, Any] | None = None
        with self._lock:
            if self._record is not None and self._marker_on_disk:
                previous, self._record, self._marker_on_disk = self._record, None, False
        if previous is not None:
            logger.warning("%s: quarantine lifted: the marker was removed (corestore doctor --clear-quarantine); "
                           "it had been quarantined since %s (%s)", store.path, previous.get("since"),
                           previous.get("reason"))

    def _persist(self, store: Any, record: dict[str, Any]) -> bool:
        if store.memory:
            return False
        try:
            write_marker(store.path, record)
            return True
        except OSError as err:
            record["marker"] = None
            logger.warning("%s: could not write the quarantine marker (%s: %s); the quarantine holds in this process "
                           "only", store.path, type(err).__name__, err)
            return False

    def _fire_persistent(self, store: Any) -> None:
        # The report holds the plugins' components only: no database probe is run from a failing
        # caller's thread (site/plugins/health.md).
        components = store.hooks.on_health(store)
        report = HealthReport.from_components(components, database=store.path, profile=store.profile.name)
        store.hooks.on_persistent_failure(store, report)

    @staticmethod
    def _ever_succeeded(store: Any) -> bool:
        try:
            stats = store.stats()
        except Exception:  # pragma: no cover - a store without counters
            return True
        return bool(stats.get("transactions") or stats.get("reads") or stats.get("statements"))

    def _build_record(self, store: Any, error: BaseException, c: Classification, operation: Any) -> dict[str, Any]:
        now = time.time()
        evidence: dict[str, Any] = {"error_type": type(error).__name__, "error": str(error)[:1000]}
        violations = getattr(error, "violations", None)
        if violations:
            evidence["violations"] = [
                {"check": v.check, "message": v.message, "evidence": dict(v.evidence)} for v in violations
            ]
        if not store.memory:
            path = store.path
            evidence["files"] = {"database_bytes": _size(path), "wal_bytes": _size(path + "-wal"),
                                 "shm_bytes": _size(path + "-shm"), "journal_bytes": _size(path + "-journal")}
            try:
                header = read_header(path)
            except OSError:
                header = None
            if header is not None:
                evidence["header"] = {"journal_mode": header.journal_mode, "page_size": header.page_size,
                                      "page_count": header.page_count, "change_counter": header.change_counter,
                                      "page_count_valid": header.version_valid_for == header.change_counter}
        reason = f"{c.kind.name}: {c.name or c.kind.name}"
        if c.message:
            reason += f": {c.message}"
        return {
            "format": MARKER_FORMAT,
            "database": store.path,
            "marker": None if store.memory else marker_path(store.path),
            "reason": reason[:300],
            "since": _iso(now),
            "since_unix": now,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "profile": store.profile.name,
            "classification": {"kind": c.kind.name, "name": c.name, "code": c.code, "extended_code": c.extended_code,
                               "message": c.message, "source": c.source},
            "operation": None if operation is None else {"kind": operation.kind, "name": operation.name,
                                                         "attempt": operation.attempt},
            "evidence": evidence,
        }
