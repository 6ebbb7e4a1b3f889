"""accounting: asynchronous writes off the caller's path, batched, escalating, exactly once,
never silently lossy (site/plugins/accounting.md).

When: rows the request path produces but must not wait for (usage records, audit events,
metrics), where losing one silently is a bug and blocking the request on SQLite is another.

Why: tokencost (site/plugins/accounting.md) wrote usage rows on the request path and blocked requests; its
fix queued them to one writer thread, but dropped rows when the queue was full, wrote one
transaction per row, and lost the backlog when the shutdown join timed out. Incident 000
(screenpipe) had a persistent disk fault fail every batch for minutes while the app looked
healthy; its later fixes escalated on wall-clock time as well as counts, needed several healthy
batches to clear, and re-fired the restart signal.

``acc = store.plugin("accounting")``; ``acc.submit(table_or_model, row)`` returns at once (no
I/O, no lock held across I/O: safe on an asyncio event loop) and says whether the row was
accepted. One daemon writer thread per store writes batches; see
:mod:`corestore_plugins.accounting.writer` for what happens to a batch,
:mod:`corestore_plugins.accounting.escalation` for the fault episode and
:mod:`corestore_plugins.accounting.ledger` for the counters and ``flush()``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from corestore import ConfigError, HealthComponent, PluginError, UnsavedDataError, hookimpl

from .atexit_drain import _INSTANCES
from .batches import BATCHES_TABLE
from .clock import Clock, ManualClock, SystemClock
from .deadletter import DeadLetter, DeadLetterSink, sink_location
from .escalation import Escalation
from .ledger import Ledger, percentiles
from .rows import table_label
from .settings import ON_FULL, ON_UNKNOWN_TABLE
from .settings import Settings as _Settings
from .status import component, log_close
from .submitting import Submitting
from .writer import Writer

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Store

__all__ = ["Accounting", "DeadLetter", "Clock", "SystemClock", "ManualClock", "BATCHES_TABLE", "ON_FULL",
           "ON_UNKNOWN_TABLE"]

logger = logging.getLogger(__name__)

_GRACE_S = 2.0  # after drain_timeout_s, how long close() lets a writer stuck inside SQLite finish


class Accounting(Submitting):
    """Asynchronous, batched, exactly-once writes with a bounded queue and fault escalation.

    Public: :meth:`submit`, :meth:`flush`, :meth:`close`, :meth:`stats`, :meth:`dead_letters`,
    :meth:`add_dead_letter_sink`, :meth:`use_clock`; ``settings``.

    Settings (``[profiles.NAME.settings.accounting]``):

    ====================  =======  ===========  ==========================================================
    name                  type     default      meaning
    ====================  =======  ===========  ==========================================================
    queue_size            int      10000        rows the queue holds (rows in flight come on top, at most max_batch_size)
    on_full               str      "reject"     full queue: "reject" (submit returns False), "drop_oldest", "block"
    block_timeout_s       float    1.0          on_full = "block": longest wait for room, then reject
    batch_size            int      500          rows per batch transaction while the queue is under half full
    max_batch_size        int      5000         rows per batch once the queue is half full or more (never below batch_size)
    yield_ms              float    5.0          longest submit() waits for the writer to get the GIL (0: never)
    max_latency_ms        float    50           longest a row waits for its batch to fill
    drain_timeout_s       float    5.0          close(): time to write the backlog before dead-lettering it
    ts_column             str      (none)       column filled with the submit time (unix seconds) when a row lacks it
    dead_letter           bool     true         append dead letters to a JSON-lines file beside the database
    dead_letter_path      str      (none)       that file (default ``<db>.corestore-deadletter.jsonl``)
    backoff_initial_s     float    0.05         first wait after a faulted batch (doubles per retry)
    backoff_max_s         float    5.0          longest wait between retries of a faulted batch
    reopen_after          int      3            reopen the writer connection every N faulted batches ...
    reopen_after_s        float    10.0         ... or every N seconds of failing, whichever first
    degraded_after        int      5            health DEGRADED after N faulted batches ...
    degraded_after_s      float    30.0         ... or N seconds, whichever first
    persistent_after      int      40           on_persistent_failure after N faulted batches ...
    persistent_after_s    float    120.0        ... or N seconds, whichever first
    refire_s              float    600.0        on_persistent_failure again every N seconds while the episode lasts
    healthy_to_clear      int      3            consecutive committed batches that end a fault episode
    probe_interval_s      float    1.0          idle during an episode: write an empty probe batch this often
    batch_retention_s     float    3600.0       how long batch ids stay in ``_corestore_batches``
    log_interval_s        float    60.0         rejections and drops are logged at most once per interval
    on_unknown_table      str      "reject"     a row for a table the database lacks: "reject" (False) or "raise" (ConfigError)
    ====================  =======  ===========  ==========================================================
    """

    name: ClassVar[str] = "accounting"

    Settings = _Settings

    def __init__(self, settings: _Settings | None = None, *, clock: Clock | None = None) -> None:
        """``clock`` drives the writer's waits and time-based rules (default the real clock; a
        :class:`ManualClock` in tests); like every shipped plugin's ``clock`` keyword, but with
        ``sleep(seconds, wake)`` too, since the writer waits on it. :meth:`use_clock` sets it later."""
        self.settings = settings if settings is not None else Accounting.Settings()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._store: Store | None = None
        self._sink = DeadLetterSink(None)
        self._start_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._report: dict[str, Any] | None = None
        self._reset()
        _INSTANCES.add(self)

    def _reset(self) -> None:
        s = self.settings
        self._ledger = Ledger(s.queue_size, backlog_limit=max(s.batch_size, s.max_batch_size))
        self._episode = Escalation(
            reopen_after=s.reopen_after, reopen_after_s=s.reopen_after_s,
            degraded_after=s.degraded_after, degraded_after_s=s.degraded_after_s,
            persistent_after=s.persistent_after, persistent_after_s=s.persistent_after_s,
            refire_s=s.refire_s, healthy_to_clear=s.healthy_to_clear,
        )
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._tables_ok: set[Any] = set()
        # the tables the writer last saw in sqlite_master (lowercase; None: not read yet), names
        # submitted that it has not seen yet (accepted until its next look), names it confirmed missing
        self._known_tables: frozenset[str] | None = None
        self._tables_unseen: set[str] = set()
        self._tables_missing: set[str] = set()
        self._tables_stale = False
        self._acknowledged_dead = 0
        self._on_full = s.on_full
        self._on_unknown_table = s.on_unknown_table
        self._yield_s = s.yield_ms / 1000.0
        self._high_water = max(self._ledger.high_water, s.batch_size)  # below batch_size the writer is not taking
        #: the queue length behind which a row makes a batch ready: that submit() wakes the
        #: writer. The queue grows by one row per accepted submit(), under the lock, so every
        #: rise to batch_size passes here exactly once; the writer clears its event before it
        #: looks at the queue, so no wake-up is lost (and none is sent for every row above it)
        self._wake_at = s.batch_size - 1
        setattr(self, "submit", self._fast_submit())  # noqa: B010 - shadows the method (see _fast_submit)

    def acknowledge_dead_letters(self) -> int:
        """Acknowledge the dead letters so far: the ``accounting`` health component, DEGRADED
        while any row was dead-lettered since the last acknowledgement, turns UP again (the rows
        stay in :meth:`dead_letters` and the dead-letter file). Returns how many were acknowledged."""
        total = self._ledger.dead_lettered
        count = total - self._acknowledged_dead
        self._acknowledged_dead = total
        return count

    def acknowledge_unknown_tables(self) -> dict[str, int]:
        """Acknowledge the rows refused for unknown tables (``stats()["rejected_tables"]``): the
        health component stops reporting them. Returns what was acknowledged."""
        led = self._ledger
        with led.lock:
            seen = dict(led.rejected_tables)
            led.rejected_tables.clear()
        return seen

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row accepted before the call is settled; return True when all of
        them are durable — committed to the database, or appended to the dead-letter file —
        and False on timeout or when one was lost (dropped by ``drop_oldest``, or dead-lettered
        with no file). ``timeout`` in seconds; None waits as long as it takes. Never call it
        from the writer thread (e.g. inside a hook the writer fires)."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise PluginError("accounting.flush() was called from the accounting writer thread (it would wait for itself)")
        return self._ledger.wait_settled(timeout)

    async def aflush(self, timeout: float) -> bool:
        """:meth:`flush` in a thread, so the event loop never blocks; ``timeout`` is required."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self) -> dict[str, Any]:
        """Stop accepting rows, write the backlog within ``drain_timeout_s``, dead-letter (and
        report) whatever is left. Idempotent; the store's ``close()`` calls it. Returns
        :meth:`stats` plus ``drained`` (nothing was left), ``left`` (rows dead-lettered here),
        ``unsaved`` (rows only in memory) and ``dead_letter_path``.

        Raises :class:`corestore.UnsavedDataError` (on every call, and out of the store's
        ``close()``) when rows reached neither the database nor the dead-letter file (a full
        disk, or ``dead_letter = false``): every one of them is in the error's ``rows`` and in
        :meth:`unsaved`, and health is DOWN."""
        with self._close_lock:
            if self._closed and self._report is not None:
                self._raise_if_unsaved()
                return self._report
            led = self._ledger
            with led.lock:
                led.closed = True
                if led.blocked:
                    led.space.notify_all()
            self._closing = True
            led.wake.set()
            thread = self._thread
            if thread is not None and thread is threading.current_thread():
                # closed from a hook the writer fired (on_persistent_failure): it stops at its
                # next wait and never retries the batch dead-lettered below
                self._abandon.set()
            elif thread is not None and thread.is_alive():
                thread.join(self.settings.drain_timeout_s)
                if thread.is_alive():
                    self._abandon.set()
                    thread.join(_GRACE_S)
            stuck = thread is not None and thread.is_alive() and thread is not threading.current_thread()
            in_flight, queued, batch_id, uncertain = led.take_all()
            letters = [
                DeadLetter(table=table_label(t), row=r, submitted_at=ts, reason="shutdown", kind="SHUTDOWN",
                           error=f"not written within drain_timeout_s={self.settings.drain_timeout_s}",
                           batch_id=batch_id, uncertain=uncertain or stuck)
                for t, r, ts, _ in in_flight
            ] + [
                DeadLetter(table=table_label(t), row=r, submitted_at=ts, reason="shutdown", kind="SHUTDOWN",
                           error=f"not written within drain_timeout_s={self.settings.drain_timeout_s}")
                for t, r, ts, _ in queued
            ]
            durable = self._sink.write(letters, keep_unsaved=True)
            led.settle_leftovers(len(letters), durable=durable, seqs=[item[3] for item in in_flight + queued])
            log_close(self._store.path if self._store is not None else "?", letters, durable=durable, sink=self._sink,
                      drain_timeout_s=self.settings.drain_timeout_s, in_flight=len(in_flight), batch_id=batch_id,
                      uncertain=bool(uncertain or stuck), had_writer=thread is not None)
            self._closed = True
            report = self.stats()
            report.update(drained=not letters, left=len(letters), unsaved=len(self._sink.unsaved),
                          dead_letter_path=self._sink.path)
            self._report = report
            self._raise_if_unsaved()
            return report

    def _raise_if_unsaved(self) -> None:
        unsaved = list(self._sink.unsaved)
        if not unsaved:
            return
        path = self._store.path if self._store is not None else "?"
        where = self._sink.path or "no dead-letter file (dead_letter = false)"
        raise UnsavedDataError(
            f"{path}: accounting closed with {len(unsaved)} accepted row(s) that reached neither the database nor "
            f"{where}; they exist only in this process's memory: save them from this error's .rows (or "
            "Accounting.unsaved()) before the process exits, e.g. once the disk has room",
            rows=unsaved, path=path, committed=False,
        )

    def unsaved(self) -> list[DeadLetter]:
        """Every accepted row that reached neither the database nor the dead-letter file, oldest
        first (all of them: never trimmed, unlike :meth:`dead_letters`). Empty when nothing is
        at risk; non-empty means health DOWN."""
        return list(self._sink.unsaved)

    # -- inspection ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """One consistent snapshot (taken under one lock): ``submitted``, ``accepted``,
        ``rejected``, ``dropped``, ``written``, ``dead_lettered``, ``pending`` (= ``queued`` +
        ``in_flight``), ``batches``, ``faulted_batches``, ``reopens``, ``persistent_signals``,
        ``uncertain_commits``, ``isolated_batches``, ``probes``, ``episode`` (the fault episode),
        ``rejected_tables`` (rows refused for a table the database does not have, by table name;
        they are counted in ``rejected`` too), ``unacknowledged_dead_letters``, ``blocked``
        (submitters waiting for room with ``on_full = "block"``), ``waiters`` (``flush()`` calls waiting),
        and latency percentiles ``enqueue_us`` (submit), ``batch_ms`` (batch transaction),
        ``delay_ms`` (submit to commit of a batch's oldest row).

        Always: accepted = written + dead_lettered + dropped + pending, and
        submitted = accepted + rejected.
        """
        now = self.clock.monotonic()
        snap = self._ledger.snapshot(extra=lambda: {"episode": self._episode.state(now)})
        snap["enqueue_us"] = percentiles(snap.pop("_enqueue_ns"), 1e-3)
        snap["batch_ms"] = percentiles(snap.pop("_batch_s"), 1e3)
        snap["delay_ms"] = percentiles(snap.pop("_delay_s"), 1e3)
        thread = self._thread
        snap["writer_alive"] = bool(thread is not None and thread.is_alive())
        snap["closed"] = self._closed
        snap["unacknowledged_dead_letters"] = max(0, snap["dead_lettered"] - self._acknowledged_dead)
        return snap

    def dead_letters(self) -> list[DeadLetter]:
        """The most recent dead letters (at most 100), oldest first."""
        return list(self._sink.recent)

    def add_dead_letter_sink(self, sink: Callable[[DeadLetter], None]) -> None:
        """Also hand every dead letter to ``sink`` (called on the writer thread, or in close());
        an exception it raises is logged and ignored."""
        self._sink.extra.append(sink)

    def use_clock(self, clock: Clock) -> None:
        """Drive the writer's waits and time-based rules with ``clock`` (e.g. a
        :class:`ManualClock` in tests). Only before the writer starts (the first submit)."""
        if not isinstance(clock, Clock):
            raise TypeError(f"use_clock(): {clock!r} has no monotonic()/sleep(seconds, wake)")
        with self._start_lock:
            if self._thread is not None:
                raise PluginError("accounting.use_clock(): the writer has already started")
            self.clock = clock

    @property
    def dead_letter_path(self) -> str | None:
        """The dead-letter file (None: dead letters stay in memory and the log)."""
        return self._sink.path

    # -- the writer -------------------------------------------------------------------------------
    def _start_writer(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closing:
                return
            store = self._store
            if store is None:
                raise PluginError("accounting is not bound to a store (it binds when the store opens its first connection)")
            writer = Writer(
                store, settings=self.settings, ledger=self._ledger, episode=self._episode, clock=self.clock,
                sink=self._sink, abandon=self._abandon, closing=lambda: self._closing,
                tables_stale=lambda: self._tables_stale, tables_seen=self._tables_seen,
            )
            name = "corestore-accounting[" + (os.path.basename(store.path) or store.path) + "]"
            thread = threading.Thread(target=writer.run, name=name, daemon=True)
            self._thread = thread
            thread.start()

    def _after_fork_in_child(self) -> None:
        """The rows and the writer belong to the parent: start empty (site/operations.md, rule 6)."""
        self._start_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._sink._lock = threading.Lock()
        self._reset()
        if self._closed:
            self._ledger.closed = True
            self._closing = True

    # -- hooks --------------------------------------------------------------------------------------
    #: the plugin writes to the database: offline, read-only reports (``corestore health``)
    #: leave it out and say so
    writes: ClassVar[bool] = True

    def check_profile(self, profile: Any) -> None:
        """Refuse a read-only profile (``corestore.open()`` and ``corestore profiles --check``)."""
        if profile.read_only:
            raise ConfigError(
                f"profile {profile.name!r} is read-only; the accounting plugin writes "
                "(disable it for read-only profiles)"
            )

    @hookimpl
    def on_store_open(self, store: Store) -> None:
        """Bind to the store, once, when it opens."""
        path, database = sink_location(store, self.settings)
        self._sink.path = path
        self._sink.database = database
        self._store = store

    @hookimpl
    def on_health(self, store: Store) -> HealthComponent:
        """The ``accounting`` component: DEGRADED while a fault episode is past ``degraded_after``
        or the queue is full, DOWN if the writer thread died; details are the counters."""
        thread = self._thread
        return component(self.name, self.stats(), self._sink, settings=self.settings,
                         writer_stopped=thread is not None and not thread.is_alive() and not self._closing)

    @hookimpl
    def on_fork_child(self, store: Store) -> None:
        """In a forked child: start empty (the core calls it; see :meth:`_after_fork_in_child`)."""
        self._after_fork_in_child()

    @hookimpl
    def on_close(self, store: Store) -> None:
        """Drain (see :meth:`close`) before the store closes its connections."""
        self.close()

