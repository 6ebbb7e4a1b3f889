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
* **On PostgreSQL** ``XX001`` (data corrupted) and ``XX002`` (index corrupted) are ``CORRUPT``.
  The marker is a row in the table ``_corestore_quarantine`` of the database itself, written and
  read on a connection of the plugin's own (:mod:`corestore.quarantine_table` argues why: every
  client of a shared database must see it, so a local file would not do). No ``quick_check``
  confirmation: the server reports corruption only after its own page or index checks failed.
* **Not a quarantine.** ``NOTADB`` on a store that never completed an operation is a file that
  was never a SQLite database (a wrong path): the caller gets the core's "not a SQLite database"
  error and nothing is written next to the file. The plugin never touches the database, ``-wal``
  or ``-shm`` (site/operations.md, rule 1) and reads the header only through
  :func:`corestore.sqlitefile.read_header` (rule 2).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

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
from corestore.quarantine_table import QUARANTINE_TABLE
from corestore.settings import boolean, non_negative_seconds

# the marker format is the core's (the doctor reads it too); re-exported here for plugin users
from corestore.sidecar_formats import (
    MARKER_FORMAT,
    MARKER_SUFFIX,
    clear_marker,
    format_marker,
    marker_path,
    read_marker,
    write_marker,
)
from corestore.timefmt import iso as _iso

from ._quarantine_evidence import _kinds_converter, gather_evidence
from ._quarantine_pg import ServerMarker, pg_evidence
from ._server import is_postgres

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

_NOTADB = 26




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

    def __init__(self, settings: Quarantine.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`) is what the
        plugin's time-based rules read: the same keyword, and the same ``clock`` attribute, on
        every shipped plugin that reads the time."""
        self.settings = settings if settings is not None else self.Settings()
        self.clock: Callable[[], float] = clock
        self._lock = threading.Lock()
        self._record: dict[str, Any] | None = None  # the quarantine, when in one
        self._marker_on_disk = False  # the current quarantine's marker was written or read
        self._loaded = False
        self._next_check = 0.0
        self._episodes = 0
        self._refused = 0
        self._spared = 0  # CORRUPT reports a clean quick_check refuted
        self._server: ServerMarker | None = None  # PostgreSQL: the marker table, on its own connection

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
        if is_postgres(store):
            self._server = ServerMarker(store)
        self._refresh(store, at_open=True)

    @hookimpl
    def before_operation(self, store: Any, operation: Any) -> None:
        """Refuse writes (and reads, unless allowed) while quarantined."""
        if operation.kind == "open":  # opening reads the header only; the store's use is gated
            return
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
        if self._server is not None:
            advice = (f"damaged database is not made worse. Inspect the server (amcheck, its log), restore or repair, "
                      f"then remove the marker: `corestore doctor --clear-quarantine {store.path}` or "
                      f"DELETE FROM {QUARANTINE_TABLE} in that database.")
        else:
            advice = (f"damaged file is not made worse. Keep the -wal and -shm files; inspect with `corestore doctor "
                      f"{store.path}`, restore or repair, then `corestore doctor --clear-quarantine {store.path}`.")
        raise CorruptionError(
            f"{store.path}: quarantined since {record.get('since')} ({record.get('reason')}); {what} refused so the "
            + advice,
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
        if classification.kind is ErrorKind.CORRUPT and self.settings.confirm_s > 0 and self._server is None:
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

    @hookimpl
    def on_close(self, store: Any) -> None:
        """PostgreSQL: close the marker's own connection."""
        if self._server is not None:
            self._server.close()

    # -- internals -----------------------------------------------------------------------------
    def _confirm(self, store: Any) -> str:
        """``PRAGMA quick_check(1)`` on this thread's connection (outside any transaction: the
        failed one has ended), aborted after ``confirm_s``: ``"ok"``, what SQLite found, or why
        the check could not conclude. Uses the store's own driver and connection, never a second
        library or descriptor on the file (site/operations.md, rule 2)."""
        clock = self.clock
        deadline = clock() + self.settings.confirm_s
        try:
            conn = store.database.cursor().connection
            if store.profile.driver == "apsw":
                conn.setprogresshandler(lambda: clock() > deadline, 1000)
                try:
                    row = conn.execute("PRAGMA quick_check(1)").fetchone()
                finally:
                    conn.setprogresshandler(None)
            else:
                conn.set_progress_handler(lambda: clock() > deadline, 1000)
                try:
                    row = conn.execute("PRAGMA quick_check(1)").fetchone()
                finally:
                    conn.set_progress_handler(None, 0)
        except Exception as err:  # an I/O error, interrupted (timeout), corruption: inconclusive
            return f"inconclusive: {type(err).__name__}: {err}"
        return str(row[0]) if row else "inconclusive: no result"

    def _due(self) -> bool:
        now = self.clock()
        if now < self._next_check:
            return False
        self._next_check = now + self.settings.recheck_s
        return True

    def _refresh(self, store: Any, *, at_open: bool) -> None:
        """Bring the in-memory state in line with the marker on disk (or in the database)."""
        if store.memory:
            return
        if self._server is not None:
            known, record = self._server.read()
            if not known:  # the server did not answer: keep what this process knows
                return
        else:
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
        if self._server is not None:
            try:
                self._server.write(record)
                return True
            except Exception as err:  # noqa: BLE001 - the server is down or the damage reaches the catalog
                record["marker"] = None
                logger.warning("%s: could not write the quarantine marker (%s: %s); the quarantine holds in this "
                               "process only", store.path, type(err).__name__, str(err)[:200])
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
        server = self._server
        evidence = pg_evidence(error, server.key) if server is not None else gather_evidence(store, error)
        evidence.setdefault("error_type", type(error).__name__)
        evidence.setdefault("error", str(error)[:1000])
        reason = f"{c.kind.name}: {c.name or c.kind.name}"
        if c.message:
            reason += f": {c.message}"
        return {
            "format": MARKER_FORMAT,
            "database": store.path,
            "marker": server.where if server is not None else (None if store.memory else marker_path(store.path)),
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
