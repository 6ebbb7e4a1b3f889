"""checkpoint_governor: a WAL that stays near its target size, checkpoints that cannot corrupt
(site/plugins/checkpoint_governor.md).

**When.** Enable it when automatic checkpoints are off (corestore adds it to a profile that
enables ``wal_guard`` and sets ``wal_autocheckpoint <= 0``), when readers are long-lived, when a
replication tool owns checkpoints (``mode = "none"``), and on a SQLite with the WAL-reset bug
(:mod:`corestore.sqlitebugs`), where it is the mitigation.

**Why.** With readers always active a WAL grows without bound (sqlite.org/wal.html, "Avoiding
Excessively Large WAL Files"); measured here, a reader holding a snapshot while 300 x 100 KB rows
commit leaves a 32 MB ``-wal`` that is still 32 MB 20 s after the reader ends, because nothing
checkpoints once the writes stop. And on SQLite 3.7.0-3.51.2 a checkpoint that runs while another
connection commits and resets the WAL can corrupt the database.

What it does (``mode = "governed"``, the default):

* On every connection: ``wal_autocheckpoint = 0`` (SQLite's automatic checkpoints are PASSIVE:
  they run after a commit *without* the writer lock) and ``journal_size_limit`` = the target
  unless the profile sets one; ``mmap_size`` on an affected SQLite is refused.
* A counter on the commit path (``on_success``): every ``check_every`` operations one ``stat`` of
  ``-wal`` there, which wakes the governor's thread only when the WAL is over its target (issue
  19: a wake-up on the commit path is paid by every writer queued at the write gate); the thread
  also wakes every ``interval_s``. The thread starts lazily (issue 18: no thread start in a fresh
  open): at the first such check that finds the WAL over its target, or when the process-wide
  pacer (:mod:`corestore_plugins._governor_pacer`), which ``stat``s ``-wal`` every ``interval_s``
  until then, does. It ``stat``s ``-wal``;
  above ``target_wal_bytes`` it looks for readers pinning WAL frames in ``/proc/locks``
  (:mod:`corestore_plugins._wal_readers`, never by opening ``-shm``), inside the write gate when
  there is one (so this process's own read marks are readers', not its writers'). With such a reader the
  checkpoint could not complete and escalating would only stall the writers, so it runs none and
  reports the reader (pid, process, how long). Otherwise it runs ``TRUNCATE`` with a short busy
  timeout (``checkpoint_busy_ms``) inside the write gate (``write_gate`` plugin) when one is
  enabled; on an affected SQLite, the mitigation's checkpoint below.
* **WAL-reset mitigation** (on an affected SQLite, ``wal_reset_mitigation = true``): no commit
  may run while a checkpoint does. ``wal.c`` (``sqlite3WalCheckpoint``) takes ``WAL_WRITE_LOCK``
  for FULL, RESTART and TRUNCATE, but when it is busy it silently does PASSIVE work instead
  (``eMode2 = SQLITE_CHECKPOINT_PASSIVE``). So the governor takes SQLite's writer lock itself
  (``BEGIN IMMEDIATE`` on a connection of its own, :mod:`corestore_plugins._writer_lock`), runs a
  PASSIVE checkpoint on the store's connection, then rolls back: every writer of every process is
  held out by SQLite's own lock, and the writers pay nothing per transaction (issue 18; before, the
  checkpoint ran under ``write_gate.held()``, which every writer paid for). The write gate, when a
  profile enables it, is still taken first. A lock that cannot be had skips the round; a busy
  result is counted as a *breach* (health DEGRADED). When the writes stopped, the governor's own
  empty commit restarts the WAL so ``-wal`` returns to ``journal_size_limit``. It cannot cover
  checkpoints outside corestore (another program's automatic checkpoints).
* **Deferral under contention** (issue 19, with the ``write_gate`` plugin): a due checkpoint is
  put off while writers are queued at the gate, so that it lands in a pause of the writes, up to
  a ceiling (``defer_wal_factor``, ``defer_max_s``): :mod:`corestore_plugins._governor_deferral`.

``mode = "none"``: no checkpoint at all by corestore while the store is open (a replication tool
such as Litestream owns them). With apsw the connections also set
``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``; Python's stdlib ``sqlite3`` cannot, so the last close of the
file still checkpoints there.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from corestore import ConfigError, HealthComponent, HealthStatus, StoreError, hookimpl
from corestore.settings import boolean, integer_at_least, non_negative_seconds, number, one_of
from corestore.sqlitebugs import affecting, linked_version
from corestore.sqlitefile import file_size, read_header

from . import _governor_pacer
from ._governor_deferral import Deferral
from ._governor_thread import GovernorThread
from ._wal_readers import process_name, wal_readers
from ._writer_lock import WriterLock

__all__ = ["CheckpointGovernor", "MODES"]

logger = logging.getLogger(__name__)

#: Allowed values of ``mode``.
MODES = ("governed", "none")
_WAL_HEADER = 32
_FRAME_HEADER = 24


class CheckpointGovernor(GovernorThread):
    """Keeps the WAL near ``target_wal_bytes`` and runs checkpoints that hold the writers out.

    Settings (``[profiles.NAME.settings.checkpoint_governor]``):

    | name | type | default | meaning |
    |---|---|---|---|
    | ``mode`` | str | ``"governed"`` | ``"governed"``: the governor checkpoints; ``"none"``: corestore runs no checkpoint (a replication tool owns them) |
    | ``target_wal_bytes`` | int | 16 MiB | WAL size above which a checkpoint is due; also ``journal_size_limit`` unless the profile sets it |
    | ``check_every`` | int | 64 | operations between two size checks (one ``stat``) on the commit path |
    | ``interval_s`` | float | 1.0 | the governor thread also checks this often (0: only the commit-path counter) |
    | ``checkpoint_busy_ms`` | int | 200 | longest wait of one checkpoint for the writer lock or a reader |
    | ``gate_timeout_s`` | float | 5.0 | longest wait for the write gate, or for SQLite's writer lock under the mitigation, before a round is skipped |
    | ``wal_reset_mitigation`` | bool | true | on a SQLite with the WAL-reset bug, checkpoint only while holding SQLite's writer lock and count busy checkpoints as breaches |
    | ``defer_wal_factor`` | float | 1.25 | while writers queue at the write gate a due checkpoint waits for a pause, until the WAL reaches ``target_wal_bytes`` times this (1: never defer) |
    | ``defer_max_s`` | float | 10.0 | longest deferral of a due checkpoint while writers queue at the write gate (0: never defer) |
    """  # noqa: E501 - a markdown table row cannot be wrapped (the settings table above)

    name: ClassVar[str] = "checkpoint_governor"
    #: SQLite only: a PostgreSQL profile that lists it is refused at open (corestore.registry.check_engine)
    engines: ClassVar[tuple[str, ...]] = ("sqlite",)

    @attrs.frozen(kw_only=True)
    class Settings:
        """checkpoint_governor's settings (see the class docstring's table)."""

        mode: str = attrs.field(default="governed", validator=one_of(*MODES), metadata={
            "help": "'governed': the governor checkpoints; 'none': corestore runs no checkpoint (a replication tool owns them)"})
        target_wal_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=integer_at_least(4096), metadata={
            "help": "WAL size (bytes) above which a checkpoint is due; also journal_size_limit unless the profile sets it"})
        check_every: int = attrs.field(default=64, validator=integer_at_least(1), metadata={
            "help": "operations between two WAL size checks (one stat) on the commit path"})
        interval_s: float = attrs.field(default=1.0, validator=non_negative_seconds, metadata={
            "help": "the governor thread also checks this often (0: only the commit-path counter)"})
        checkpoint_busy_ms: int = attrs.field(default=200, validator=integer_at_least(0), metadata={
            "help": "longest wait of one checkpoint for SQLite's writer lock or a reader (milliseconds)"})
        gate_timeout_s: float = attrs.field(default=5.0, validator=non_negative_seconds, metadata={
            "help": "longest wait for the write gate (or SQLite's writer lock under the mitigation) before a round is skipped"})
        wal_reset_mitigation: bool = attrs.field(default=True, validator=boolean, metadata={
            "help": "on a SQLite with the WAL-reset bug: checkpoints only under SQLite's writer lock, busy = breach"})
        defer_wal_factor: float = attrs.field(default=1.25, validator=number(1.0, unit="times target_wal_bytes"),
                                              metadata={
            "help": "while writers queue at the write gate a due checkpoint waits for a pause, until the WAL "
                    "reaches target_wal_bytes times this (1: never defer)"})
        defer_max_s: float = attrs.field(default=10.0, validator=non_negative_seconds, metadata={
            "help": "longest deferral of a due checkpoint while writers queue at the write gate (0: never defer)"})

    def __init__(self, settings: CheckpointGovernor.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds, monotonic) dates the last checkpoint and how long readers have held
        a snapshot; the checkpoint history's ``start_ns``/``end_ns`` stay :func:`time.monotonic_ns`."""
        self.settings = settings if settings is not None else CheckpointGovernor.Settings()
        self.clock = clock
        self._store: Any = None
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart = False  # start the thread of its own at its first round's check (lazy; a forked child)
        self._governing = False  # governed mode on a writable file (set at on_store_open)
        self._ops = 0  # the commit-path counter (approximate across threads: it only paces checks)
        self._affected = False
        self._counts = {"checks": 0, "checkpoints": 0, "completed": 0, "busy": 0, "breaches": 0, "errors": 0,
                        "skipped_reader": 0, "skipped_gate": 0, "skipped_lock": 0, "wal_restarts": 0}
        self._deferral = Deferral(self.settings.defer_wal_factor, self.settings.defer_max_s, clock)
        self._last: dict[str, Any] | None = None
        self._readers: dict[tuple[Any, int], float] = {}  # (pid, slot) -> first seen (monotonic)
        self._starving: list[dict[str, Any]] = []
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self._writer_lock: WriterLock | None = None  # the mitigation's connection (opened on its first round)
        self._idle_wal: int | None = None  # -wal size after the last complete mitigated round

    # -- state --------------------------------------------------------------------------------
    @property
    def affected(self) -> bool:
        """True when the SQLite this store links has the WAL-reset bug."""
        return self._affected

    def mitigation_state(self, store: Any) -> tuple[bool, str]:
        """(holds, why) for the WAL-reset mitigation (asked by the ``sqlite_version`` component)."""
        if not self._affected:
            return True, "not needed: this SQLite has the fix"
        if store.profile.read_only:
            return True, "read-only store: it cannot run a checkpoint (SQLite refuses one on a read-only connection)"
        if self.settings.mode == "none":
            return True, ("mitigated for corestore: it runs no checkpoint (mode = 'none'); the tool that owns "
                          "checkpoints is outside the mitigation")
        if not self.settings.wal_reset_mitigation:
            return False, "mitigation disabled (checkpoint_governor.wal_reset_mitigation = false)"
        with self._lock:
            breaches = self._counts["breaches"]
        if breaches:
            return False, (f"{breaches} checkpoint(s) returned busy: another checkpoint was running, perhaps "
                           "outside the mitigation (a connection outside corestore)")
        return True, ("mitigated: every checkpoint runs while the governor holds SQLite's writer lock, "
                      "automatic checkpoints off")

    def stats(self) -> dict[str, Any]:
        """Counters (``checks``, ``checkpoints``, ``completed``, ``busy``, ``breaches``,
        ``errors``, ``skipped_reader``, ``skipped_gate``, ``deferred``: rounds that put a due
        checkpoint off while writers queued at the write gate, ``forced``: checkpoints run past
        the deferral's ceiling), ``wal_bytes``, ``wal_frames``, ``target_wal_bytes``,
        ``deferring_s`` (how long the due checkpoint has been deferred, or None),
        ``last_checkpoint`` (result and ``age_s``), ``starving_readers``."""
        store = self._store
        wal = self._wal_bytes(store) if store is not None else None
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            last = dict(self._last) if self._last is not None else None
            starving = [dict(r) for r in self._starving]
        out.update(self._deferral.snapshot())
        out.update(mode=self.settings.mode, target_wal_bytes=self.settings.target_wal_bytes, wal_bytes=wal,
                   wal_frames=self._frames(store, wal), starving_readers=starving)
        if last is not None:
            last["age_s"] = round(self.clock() - last.pop("at_monotonic"), 3)
        out["last_checkpoint"] = last
        return out

    def history(self) -> list[dict[str, Any]]:
        """The latest checkpoints: ``start_ns``/``end_ns`` (``time.monotonic_ns``, taken inside the
        write gate when one is held), ``mode``, ``result`` (busy, log, checkpointed), ``gate_held``,
        ``deferred_s`` (how long it was put off while writers queued, or None) and ``forced``
        (``"wal"`` or ``"time"``: it ran past that ceiling with writers queued; else None)."""
        with self._lock:
            return [dict(h) for h in self._history]

    # -- hooks --------------------------------------------------------------------------------
    @hookimpl
    def on_open(self, store: Any, connection: Any) -> None:
        """Turn SQLite's automatic checkpoints off and bound the WAL file; refuse ``mmap_size``
        on an affected SQLite; ``mode = "none"`` with apsw: no checkpoint on close either."""
        if self._store is None:
            self._store = store
            self._affected = bool(affecting(linked_version(store.profile.driver))) if not store.memory else False
            mmap = int(store.profile.pragmas.get("mmap_size", 0) or 0)
            if self._affected and mmap > 0:
                raise ConfigError(
                    f"{store.profile.origin}: pragmas.mmap_size = {mmap} on SQLite {linked_version(store.profile.driver)}, "
                    "which has the WAL-reset bug (sqlite.org/wal.html#walresetbug): memory-mapped I/O spreads a "
                    "damaged page further. Remove mmap_size, or use the apsw driver (a fixed SQLite).",
                    path=store.path)
        connection.execute("PRAGMA wal_autocheckpoint = 0").fetchall()
        if "journal_size_limit" not in store.profile.pragmas:
            connection.execute(f"PRAGMA journal_size_limit = {self.settings.target_wal_bytes}").fetchall()
        if self.settings.mode == "none" and store.profile.driver == "apsw":
            import apsw

            connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)

    @hookimpl
    def on_store_open(self, store: Any) -> None:
        """Arm the governor (governed mode, a writable file): its thread starts when the WAL is
        found over its target, by the commit path's check every ``check_every`` operations or by
        the process-wide pacer (:mod:`corestore_plugins._governor_pacer`), which ``stat``s
        ``-wal`` every ``interval_s`` meanwhile. No thread is started at open."""
        self._store = store
        self._governing = self._governs(store)
        if self._governing:
            self._restart = True
            if self.settings.interval_s:
                _governor_pacer.watch(self, self.settings.interval_s)

    def _governs(self, store: Any) -> bool:
        return self.settings.mode == "governed" and not store.memory and not store.profile.read_only

    @hookimpl
    def on_fork_child(self, store: Any) -> None:
        """In a forked child (the core calls it): the governor thread and its locks are the
        parent's. No thread is started here (a fork handler must not); a child that writes gets its
        own at its first commit-path check that finds the WAL over its target (the parent's keeps
        governing the file meanwhile)."""
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._restart = (self._thread is not None or self._restart) and not store.closed
        self._thread = None
        self._readers = {}
        self._starving = []
        self._deferral.reset()  # the parent's deferral is the parent's
        if self._writer_lock is not None:
            self._writer_lock.forget()

    @hookimpl
    def on_close(self, store: Any) -> None:
        """Stop the governor thread (bounded wait: one checkpoint's busy timeout plus the gate's)."""
        self._stop.set()
        self._wake.set()
        _governor_pacer.unwatch(self)
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.settings.gate_timeout_s + self.settings.checkpoint_busy_ms / 1000 + 5)
            if thread.is_alive():
                logger.warning("%s: the checkpoint governor did not stop in time", store.path)
                return  # its round may still use the writer lock's connection
        with self._round_lock:
            if self._writer_lock is not None:
                self._writer_lock.close()

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """WAL size and frames, last checkpoint, starving readers (no SQLite call; one ``stat``)."""
        stats = self.stats()
        wal, target = stats["wal_bytes"], stats["target_wal_bytes"]
        status, summary = HealthStatus.UP, f"WAL {wal} bytes (target {target})"
        if self.settings.mode == "none":
            summary = f"mode 'none': corestore runs no checkpoint; WAL {wal} bytes"
        elif stats["starving_readers"] and wal is not None and wal > target:
            readers = stats["starving_readers"]
            who = ", ".join(f"pid {r['pid']} ({r['process'] or '?'}) for {r['held_s']:.1f} s" for r in readers)
            status = HealthStatus.DEGRADED
            summary = f"WAL {wal} bytes over target {target}: starved by reader(s) holding a snapshot: {who}"
        elif stats["deferring_s"] is not None and wal is not None and wal > target:
            summary = self._deferral.summary(wal, target, stats["deferring_s"])
        elif stats["breaches"]:
            status = HealthStatus.DEGRADED
            summary = f"{stats['breaches']} checkpoint(s) returned busy while the WAL-reset mitigation is required"
        elif wal is not None and wal > 2 * target and stats["last_checkpoint"] is not None \
                and stats["last_checkpoint"].get("error"):
            status = HealthStatus.DEGRADED
            summary = f"WAL {wal} bytes over target {target}; last checkpoint failed: {stats['last_checkpoint']['error']}"
        return HealthComponent(name=self.name, status=status, summary=summary, details=stats)

    # -- the governor (its thread and checks: corestore_plugins._governor_thread) -----------------
    def tick(self) -> str:
        """One governor round (the thread calls it; tests may too). Returns what it did:
        ``"none-mode"``, ``"under-target"``, ``"deferred"`` (writers queue at the write gate),
        ``"reader"``, ``"gate"``, ``"lock"``, ``"checkpoint"``, ``"busy"``, ``"error"``."""
        store = self._store
        if store is None or self.settings.mode == "none" or store.closed:
            return "none-mode"
        with self._round_lock:
            with self._lock:
                self._counts["checks"] += 1
            wal = self._wal_bytes(store) or 0
            if wal <= self.settings.target_wal_bytes:
                self._note_readers([])
                self._deferral.reset()  # (another process checkpointed it)
                return "under-target"
            return self._checkpoint(store, wal)

    def _live_readers(self, store: Any, gate_held: bool) -> list[dict[str, Any]]:
        """Readers that would make a checkpoint wait. Inside the write gate every read mark is a
        reader's (corestore's writers, whose transactions hold one too, wait behind the gate); without
        it this process's own marks are left out (they may be its own writers')."""
        readers = wal_readers(store.path) or []
        if not gate_held:
            me = os.getpid()
            readers = [r for r in readers if r["pid"] != me]
        return readers

    def _checkpoint(self, store: Any, wal: int) -> str:
        gate = store.plugins.get("write_gate")
        target = self.settings.target_wal_bytes
        if self._deferral.defer(store.path, gate, wal, target):  # writers queue: do not even join the queue
            return "deferred"
        mitigate = self._affected and self.settings.wal_reset_mitigation
        held_cm = gate.held(self.settings.gate_timeout_s) if gate is not None else contextlib.nullcontext(None)
        with held_cm as held:
            if gate is not None and not held and mitigate and getattr(gate, "gate", None) is not None:
                with self._lock:
                    self._counts["skipped_gate"] += 1
                return "gate"
            if held and self._deferral.defer(store.path, gate, wal, target):  # queued behind us meanwhile: after them
                return "deferred"
            readers = self._live_readers(store, bool(held))
            self._note_readers(readers)
            if readers:  # the checkpoint could not complete: escalating would only stall the writers
                with self._lock:
                    self._counts["skipped_reader"] += 1
                # a reader, not the queue, holds it up now: back to rounds every interval_s (not
                # every RECHECK_S, each reading /proc/locks inside the gate)
                self._deferral.reset()
                return "reader"
            if mitigate:
                return self._locked_checkpoint(store, bool(held))
            start = time.monotonic_ns()
            result, error = self._run(store, "TRUNCATE", self.settings.checkpoint_busy_ms)
            end = time.monotonic_ns()
        return self._record(store, "TRUNCATE", result, error, start, end, bool(held), False, mitigate)

    def _locked_checkpoint(self, store: Any, gate_held: bool) -> str:
        """The WAL-reset mitigation: SQLite's writer lock held on the governor's own connection
        (:mod:`corestore_plugins._writer_lock`) while a PASSIVE checkpoint runs on another one.
        PASSIVE, because a FULL/RESTART/TRUNCATE checkpoint would wait for the writer lock this
        round holds and then fall back to PASSIVE anyway (``eMode2`` in ``wal.c``)."""
        record = store.database.acquire()  # this thread's connection opened before the lock is taken
        store.database.release(record)
        if self._writer_lock is None:
            limit = int(store.profile.pragmas.get("journal_size_limit", self.settings.target_wal_bytes))
            self._writer_lock = WriterLock(store.path, store.profile.driver, limit)
        with self._writer_lock.held(self.settings.gate_timeout_s) as locked:
            if not locked:
                with self._lock:
                    self._counts["skipped_lock"] += 1
                return "lock"
            start = time.monotonic_ns()
            result, error = self._run(store, "PASSIVE", None)
            end = time.monotonic_ns()
        outcome = self._record(store, "PASSIVE", result, error, start, end, gate_held, True, True)
        if outcome == "checkpoint" and result[1] == result[2]:  # every frame is in the database file
            wal = self._wal_bytes(store) or 0
            if wal > self.settings.target_wal_bytes and wal == self._idle_wal:
                # a second complete round and the file has not changed: the writes stopped, so no
                # writer will restart the WAL; the governor's own empty commit does (journal_size_limit)
                self._idle_wal = None
                if self._writer_lock.restart_wal(self.settings.gate_timeout_s):
                    with self._lock:
                        self._counts["wal_restarts"] += 1
            else:
                self._idle_wal = wal
        return outcome

    @staticmethod
    def _run(store: Any, mode: str, busy_ms: int | None) -> tuple[Any, str | None]:
        try:
            return store.checkpoint(mode, busy_timeout_ms=busy_ms, name="checkpoint_governor"), None
        except StoreError as err:
            return None, f"{type(err).__name__}: {err.classification.name if err.classification else err}"

    def _record(self, store: Any, mode: str, result: Any, error: str | None, start: int, end: int,
                gate_held: bool, lock_held: bool, mitigate: bool) -> str:
        deferred_s, forced = self._deferral.end()
        with self._lock:
            self._counts["checkpoints"] += 1
            entry = {"start_ns": start, "end_ns": end, "mode": mode, "result": result, "gate_held": gate_held,
                     "writer_lock_held": lock_held, "error": error, "forced": forced, "deferred_s": deferred_s}
            self._history.append(entry)
            self._last = {"at_monotonic": self.clock(), "result": result, "error": error, "gate_held": gate_held,
                          "writer_lock_held": lock_held}
            if error is not None:
                self._counts["errors"] += 1
                outcome = "error"
            elif result is not None and result[0]:
                self._counts["busy"] += 1
                if mitigate:
                    self._counts["breaches"] += 1
                outcome = "busy"
            else:
                self._counts["completed"] += 1
                outcome = "checkpoint"
        if outcome == "busy" and mitigate:
            logger.warning("%s: a governed checkpoint returned busy %r: on this SQLite (WAL-reset bug) another "
                           "checkpoint may have run without the writer lock", store.path, result)
        return outcome

    def _note_readers(self, readers: list[dict[str, Any]]) -> None:
        now = self.clock()
        with self._lock:
            seen = {(r["pid"], r["slot"]) for r in readers}
            self._readers = {k: v for k, v in self._readers.items() if k in seen}
            out = []
            for r in readers:
                first = self._readers.setdefault((r["pid"], r["slot"]), now)
                out.append({"pid": r["pid"], "slot": r["slot"], "process": process_name(r["pid"]),
                            "held_s": round(now - first, 3)})
            if out and not self._starving:
                logger.warning("%s: WAL over target and a reader holds a snapshot (%s); no blocking checkpoint "
                               "until it ends", getattr(self._store, "path", "?"), out)
            self._starving = out

    @staticmethod
    def _wal_bytes(store: Any) -> int | None:
        if store is None or store.memory:
            return None
        return file_size(store.path + "-wal") or 0

    @staticmethod
    def _frames(store: Any, wal: int | None) -> int | None:
        if store is None or not wal or wal <= _WAL_HEADER:
            return 0 if wal is not None else None
        try:
            header = read_header(store.path)
        except OSError:
            return None
        if header is None:
            return None
        return (wal - _WAL_HEADER) // (header.page_size + _FRAME_HEADER)
