"""The accounting writer: one daemon thread per store that turns queued rows into batches.

Each batch is one store transaction (``store.transaction(name="accounting.batch")``, so the
circuit breaker, classification and ``on_fatal`` apply) on the writer's own connection. The
transaction first records the batch's id in ``_corestore_batches`` and then inserts the rows,
grouped per table. What happens next depends on how it ended:

* committed: the rows are written; a healthy batch for the fault episode.
* COMMIT outcome unknown (``committed=None``): before anything else the writer reads
  ``_corestore_batches``; if the id is there the batch is written, otherwise it is retried.
  A retry whose id insert hits the primary key proves an earlier attempt committed after all.
  Either way each row reaches the database exactly once.
* a caller error (CONSTRAINT, PROGRAMMING, a value the driver refuses): the batch is retried in
  one transaction with a savepoint per row; the rows the database refuses are dead-lettered, the
  others written. If even that fails outside the rows (a deferred constraint at COMMIT), each
  row gets its own transaction.
* a storage fault: the batch is kept and retried after an exponential backoff, never dropped;
  the fault episode escalates (see ``accounting.escalation``). An open circuit breaker is
  waited out (``retry_after``) without touching the file. BUSY is waited out too, without
  counting as a fault.

``close()`` sets the writer draining (no latency waits) and, at its deadline, abandons it: the
writer stops at its next wait and leaves the batch in flight to ``close()``.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corestore import CircuitOpenError, ErrorKind, StoreClosedError, StoreError

from .batches import (
    _PRUNE_EVERY_S,
    BATCHES_TABLE,
    CALLER_KINDS,
    Abandoned,
    AlreadyCommitted,
    Outcome,
    batch_id_floor,
    describe,
)
from .deadletter import DeadLetterSink
from .dialect import dialect_for
from .escalation import DEGRADED, PERSISTENT, REOPEN, Escalation
from .ledger import Ledger
from .segments import EMPTY, Batch, Item
from .settling import Settling

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Store

    from .clock import Clock
    from .settings import Settings

__all__ = ["Writer", "BATCHES_TABLE", "CALLER_KINDS", "batch_id_floor"]

logger = logging.getLogger(__name__)

#: Rows a submitter queues before it gives the writer its turn after a short database call
#: (BEGIN, the batch id, COMMIT): about 10 µs of submit() calls.
_SHORT_CALL = 16
_PARAMS_SHIFT = 4

class Writer(Settling):
    """The writer loop of one :class:`~corestore_plugins.accounting.Accounting` (one thread)."""

    def __init__(self, store: Store, *, settings: Settings, ledger: Ledger, episode: Escalation, clock: Clock,
                 sink: DeadLetterSink, abandon: threading.Event, closing: Callable[[], bool],
                 tables_stale: Callable[[], bool], tables_seen: Callable[[frozenset[str]], None]) -> None:
        """Handed its collaborators: ``abandon`` is set by ``close()`` at its deadline, ``closing()``
        is True once ``close()`` began (drain without waits), ``tables_stale()`` asks for a schema
        re-read and ``tables_seen(names)`` reports the tables the schema holds."""
        self.store = store
        self.settings = settings
        self.ledger = ledger
        self.episode = episode
        self.clock = clock
        self.sink = sink
        self.abandon = abandon
        self.closing = closing
        self.tables_stale = tables_stale
        self.tables_seen = tables_seen
        self.dialect = dialect_for(store)  # the SQL of the store's engine (SQLite or PostgreSQL)
        self.planner = self.dialect.planner(settings.ts_column, preferred=settings.batch_size)
        self._sized_for: Any = None  # the connection the planner's statements were sized to
        self.no_copy: set[str] = set()  # PostgreSQL: tables (views) COPY refused
        self.table_ready = False
        self.next_prune = -math.inf
        self.next_loss_log = -math.inf
        self.last_attempt = -math.inf
        # batch ids: time, a random tag per writer and a counter (one urandom call, not one per batch)
        self._id_tag = uuid.uuid4().hex[:12]
        self._id_count = 0
        self._attempt_bad: list[tuple[Item, BaseException, str]] = []
        self._marked: threading.Lock | None = None  # the ledger's turn lock this thread holds (a marked call)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._refresh_tables()
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                backoff = self.settings.backoff_initial_s
                batch_id = self._new_id("b" if batch else "p")  # kept across a retry after a bug: a second commit hits its key
                while True:
                    try:
                        if batch:
                            self._process(batch, batch_id)
                        else:
                            self._probe(batch_id)
                        break
                    except (Abandoned, StoreClosedError):
                        return
                    except Exception:  # noqa: BLE001 - a bug must not kill the writer and strand the queue
                        logger.exception("accounting: %s: the writer failed unexpectedly; the batch is kept and retried",
                                         self.store.path)
                        self._pause(backoff)
                        backoff = min(backoff * 2, self.settings.backoff_max_s)
        except (Abandoned, StoreClosedError):
            return
        finally:
            self._log_losses(force=True)
            self._close_connection()

    def _next_batch(self) -> Batch | None:
        """Wait for work: a full batch, the latency deadline, a flush, a due probe; None: stop."""
        led, s, clock = self.ledger, self.settings, self.clock
        latency = s.max_latency_ms / 1000.0
        first_seen: float | None = None
        while True:
            led.wake.clear()
            if self.abandon.is_set():
                return None
            if self.tables_stale():
                self._refresh_tables()
            with led.lock:
                n = led.queued
                urgent = bool(led.waiters) or self.closing()
            if n and (n >= s.batch_size or urgent):
                return led.take(s.batch_size)
            now = clock.monotonic()
            self._tick(now)
            self._log_losses(now=now)
            if n:
                if first_seen is None:
                    first_seen = now
                left = first_seen + latency - now
                if left <= 0:
                    return led.take(s.batch_size)
                clock.sleep(min(left, self._due(now) - now), led.wake)
                continue
            first_seen = None
            if self.closing():
                return None
            wake_at = self._due(now)
            if self.episode.active:  # an idle queue still needs healthy batches to end the episode
                probe_at = self.last_attempt + s.probe_interval_s
                if now >= probe_at:
                    return EMPTY
                wake_at = min(wake_at, probe_at)
            clock.sleep(wake_at - now, led.wake)

    def _refresh_tables(self) -> None:
        """Read the table names (a read transaction) for ``submit()``'s check; on failure keep
        the last ones (``submit()`` accepts what it cannot judge, and this runs again)."""
        store = self.store
        try:
            with store.read(name="accounting.tables"):
                rows = store.database.connection().execute(self.dialect.tables).fetchall()
        except Exception as err:  # noqa: BLE001 - a fault here is the batches' business
            logger.debug("accounting: %s: reading the table names failed: %s", store.path, err)
            return
        self.tables_seen(frozenset(str(r[0]).lower() for r in rows))

    def _due(self, now: float) -> float:
        """When the writer must wake up even without work: escalation or a loss report."""
        due = self.episode.next_due()
        led = self.ledger
        if led.rejected != led.logged_rejected or led.dropped != led.logged_dropped:
            due = min(due, max(now, self.next_loss_log))
        return due

    # -- one batch ---------------------------------------------------------------------------
    def _new_id(self, kind: str = "b") -> str:
        self._id_count += 1
        return f"{time.time_ns():016x}-{kind}-{self._id_tag}-{self._id_count}"

    def _process(self, batch: Batch, batch_id: str) -> None:
        with self.ledger.lock:
            self.ledger.in_flight_id = batch_id
        outcome = self._attempts(batch, batch_id, isolate=False)
        if outcome.ok:
            self._settle(batch, outcome.bad)
            return
        # A caller error: find the bad rows with a savepoint each, in one transaction.
        self.planner.forget()
        self.ledger.bump("isolated_batches")
        logger.info("accounting: %s: batch of %d row(s) refused (%s); retrying it row by row",
                    self.store.path, len(batch), describe(outcome.error))
        outcome = self._attempts(batch, batch_id, isolate=True)
        if outcome.ok:
            self._settle(batch, outcome.bad)
            return
        # It failed outside the rows (e.g. a deferred constraint at COMMIT): a transaction per row.
        for item in list(batch):
            single = self._attempts(Batch.of([item]), f"{batch_id}.{item[3]}", isolate=False)
            if single.ok:
                bad = single.bad
            else:
                bad = [(item, single.error or RuntimeError("refused"), "refused")]
            self._settle_head(batch, item, bad)
        self._settle(batch, [])

    def _probe(self, probe_id: str) -> None:
        """An empty batch (just its id) to learn whether the database writes again."""
        outcome = self._attempts(EMPTY, probe_id, isolate=False, probe=True)
        if not outcome.ok:  # pragma: no cover - an empty batch has no caller error to make
            logger.warning("accounting: %s: probe refused: %s", self.store.path, describe(outcome.error))

    def _attempts(self, items: Batch, unit_id: str, *, isolate: bool, probe: bool = False) -> Outcome:
        """Try ``items`` as one transaction until it commits or fails as a caller error."""
        s = self.settings
        backoff = s.backoff_initial_s
        uncertain = uncertain_seen = False
        uncertain_bad: list[tuple[Item, BaseException, str]] = []
        while True:
            if self.abandon.is_set():
                raise Abandoned()
            self.last_attempt = self.clock.monotonic()
            try:
                if uncertain:
                    if self._committed(unit_id):
                        self._success(items, probe, started=None)
                        logger.warning("accounting: %s: the uncertain COMMIT of batch %s did commit; not written twice",
                                       self.store.path, unit_id)
                        return Outcome(True, uncertain_bad)
                    uncertain = False
                    self._set_uncertain(False)
                started = time.perf_counter()
                bad = self._transaction(items, unit_id, isolate)
            except AlreadyCommitted:
                self._success(items, probe, started=None)
                logger.warning("accounting: %s: batch %s was already committed by an earlier attempt; not written twice",
                               self.store.path, unit_id)
                return Outcome(True, uncertain_bad)
            except CircuitOpenError as err:
                self._blocked(err)
                wait = err.retry_after if err.retry_after is not None else s.backoff_max_s  # None: isolated
                self._pause(max(wait, s.backoff_initial_s))
                continue
            except StoreClosedError:
                raise
            except StoreError as err:
                if err.committed is True:  # an InvariantViolation raised after a durable COMMIT
                    self._success(items, probe, started=None)
                    return Outcome(True, list(self._attempt_bad))
                c = err.classification
                kind = c.kind if c is not None else ErrorKind.UNKNOWN
                if err.committed is None:
                    (logger.debug if uncertain_seen else logger.warning)(
                        "accounting: %s: COMMIT outcome of batch %s unknown (%s); it is looked up in %s before any "
                        "retry", self.store.path, unit_id, describe(err), BATCHES_TABLE)
                    uncertain = uncertain_seen = True
                    uncertain_bad = list(self._attempt_bad)
                    self._set_uncertain(True)
                    self.ledger.bump("uncertain_commits")
                elif kind in CALLER_KINDS:
                    return Outcome(False, error=err)
                if kind is ErrorKind.BUSY:
                    self._pause(backoff)
                else:
                    self._fault(err)
                    self._pause(backoff)
                backoff = min(backoff * 2, s.backoff_max_s)
                continue
            except Abandoned:
                raise
            except Exception as err:  # noqa: BLE001 - a driver refusing a value (TypeError, OverflowError...)
                return Outcome(False, error=err)
            self._success(items, probe, started=started)
            return Outcome(True, bad)

    def _transaction(self, items: Batch, unit_id: str, isolate: bool) -> list[tuple[Item, BaseException, str]]:
        """One attempt: the batch's transaction. Around each database call the writer marks
        the ledger (``Ledger.hand_over``) so a submitter gives it the GIL back when the call
        should be over (site/plugins/accounting.md, "Throughput")."""
        self._marked = self.ledger.hand_over(_SHORT_CALL)  # BEGIN IMMEDIATE
        try:
            return self._transaction_body(items, unit_id, isolate)
        finally:
            self._take_back()

    def _take_back(self) -> None:
        """Clear this thread's mark if it holds one (see ``Ledger.hand_over``)."""
        lock = self._marked
        if lock is not None:
            self._marked = None
            self.ledger.take_back(lock)

    def _transaction_body(self, items: Batch, unit_id: str, isolate: bool) -> list[tuple[Item, BaseException, str]]:
        store = self.store
        self._attempt_bad = []
        dialect = self.dialect
        led = self.ledger
        with store.transaction(name="accounting.batch"):
            self._take_back()
            conn = store.database.connection()
            if conn is not self._sized_for:  # a new connection (the first, or after a reopen)
                limits = dialect.limits(conn)
                if limits is not None:
                    self.planner.set_limits(*limits)
                self._sized_for = conn
            if not self.table_ready:
                for sql in dialect.create:
                    conn.execute(sql)
            already = False
            try:
                self._marked = led.hand_over(_SHORT_CALL)
                try:
                    already = not dialect.record_batch(conn, unit_id, time.time())
                finally:
                    self._take_back()
            except Exception as err:
                if self._kind(err) is not ErrorKind.CONSTRAINT:
                    raise
                already = True
            if already:  # raised outside the handler: no driver error in its context for the core to see
                raise AlreadyCommitted()
            planned = self.planner.plan(items, isolate=isolate,
                                        columns_of=lambda table: dialect.column_names(conn, table))
            bad = self._attempt_bad
            bad.extend((item, err, "invalid") for item, err in planned.bad)
            if not isolate:
                dialect.write(conn, planned.groups, self._execute_marked(conn.execute), self.no_copy)
            else:
                for statements, good in planned.groups.values():
                    for (sql, args), item in zip(statements, good, strict=True):
                        conn.execute("SAVEPOINT corestore_accounting_row")
                        try:
                            conn.execute(sql, args)
                        except Exception as err:
                            if self._kind(err) not in CALLER_KINDS:
                                raise
                            conn.execute("ROLLBACK TO corestore_accounting_row")
                            bad.append((item, err, "refused"))
                        conn.execute("RELEASE corestore_accounting_row")
            now = self.clock.monotonic()
            if now >= self.next_prune:
                conn.execute(dialect.prune, (batch_id_floor(time.time() - self.settings.batch_retention_s),))
                self.next_prune = now + _PRUNE_EVERY_S
            self._marked = led.hand_over(_SHORT_CALL)  # COMMIT
        self._take_back()
        self.table_ready = True
        return bad

    def _execute_marked(self, execute: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """``execute`` with each call marked for the submitters (``Ledger.hand_over``): a
        statement of n parameters runs about as long as n/16 submit() calls take."""
        led = self.ledger

        def run(sql: str, args: Any) -> Any:
            self._marked = led.hand_over(max(_SHORT_CALL, len(args) >> _PARAMS_SHIFT))
            try:
                return execute(sql, args)
            finally:
                self._take_back()

        return run

    def _committed(self, unit_id: str) -> bool:
        """Whether ``unit_id`` is in the bookkeeping table (a read transaction)."""
        store = self.store
        with store.read(name="accounting.check"):
            conn = store.database.connection()
            try:
                row = conn.execute(self.dialect.check, (unit_id,)).fetchone()
            except Exception as err:
                if self._kind(err) is ErrorKind.PROGRAMMING:  # no such table: nothing ever committed
                    return False
                raise
        return row is not None

    # -- outcomes ----------------------------------------------------------------------------
    def _success(self, items: Batch, probe: bool, *, started: float | None) -> None:
        led = self.ledger
        took = None if started is None else time.perf_counter() - started
        with led.lock:
            led.batches += 1
            if probe:
                led.probes += 1
            if took is not None:
                led.batch_s.append(took)
            if items:
                led.delay_s.append(max(0.0, time.time() - items.times[0]))
            was = self.episode.tier
            cleared = self.episode.success()
        if cleared:
            logger.warning("accounting: %s: write fault episode over after %d healthy batch(es) in a row",
                           self.store.path, self.settings.healthy_to_clear)
            if was in ("degraded", "persistent"):
                self._health()

    def _set_uncertain(self, value: bool) -> None:
        with self.ledger.lock:
            self.ledger.in_flight_uncertain = value

    def _fault(self, err: StoreError) -> None:
        now = self.clock.monotonic()
        desc = describe(err)
        with self.ledger.lock:
            self.ledger.faulted_batches += 1
            started, actions = self.episode.fault(now, desc)
        if started:
            logger.warning("accounting: %s: write fault episode started (%s); the batch is kept and retried with backoff",
                           self.store.path, desc)
            self._health()  # a baseline, so the DEGRADED step is a transition on_health_changed hears
        self._act(actions)

    def _blocked(self, err: CircuitOpenError) -> None:
        now = self.clock.monotonic()
        with self.ledger.lock:
            started, actions = self.episode.blocked(now, "circuit breaker open")
        if started:
            logger.warning("accounting: %s: the circuit breaker refuses writes; the writer waits %.1f s (rows stay queued)",
                           self.store.path, err.retry_after or self.settings.backoff_max_s)
        self._act(actions)

    def _tick(self, now: float) -> None:
        if not self.episode.failing:
            return
        with self.ledger.lock:
            actions = self.episode.tick(now)
        self._act(actions)

    def _act(self, actions: list[str]) -> None:
        ep = self.episode
        for action in actions:
            if action == REOPEN:
                self._reopen()
            elif action == DEGRADED:
                logger.warning("accounting: %s: writes failing for %d batch(es) / %.1f s: health DEGRADED (%s)",
                               self.store.path, ep.faulted, self.clock.monotonic() - ep.started, ep.last_error)
                self._health()
            elif action == PERSISTENT:
                self.ledger.bump("persistent_signals")
                logger.error("accounting: %s: writes failing for %d batch(es) / %.1f s (%s): on_persistent_failure "
                             "(signal %d of this episode)", self.store.path, ep.faulted,
                             self.clock.monotonic() - ep.started, ep.last_error, ep.signals)
                report = self._health()
                if report is not None:
                    self.store.hooks.on_persistent_failure(self.store, report)

    def _reopen(self) -> None:
        """Close this thread's connection; the next batch opens a fresh one."""
        self.ledger.bump("reopens")
        first = self.episode.reopens <= 1
        (logger.warning if first else logger.info)(
            "accounting: %s: reopening the writer connection (reopen %d of this episode)",
            self.store.path, self.episode.reopens)
        self._close_connection()

    def _close_connection(self) -> None:
        db = self.store.database
        try:
            if not db.in_transaction():
                db.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is dropped anyway
            logger.debug("accounting: closing the writer connection failed", exc_info=True)

    def _health(self) -> Any:
        """Recompute the store's report (no probe: the plugins' way to announce a transition),
        so on_health_changed fires once for the change."""
        try:
            return self.store.health(probe=False)
        except Exception:  # noqa: BLE001 - a health failure must not stop the writer
            logger.exception("accounting: %s: store.health() failed", self.store.path)
            return None

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` on the clock, running the wall-clock escalation as it comes due."""
        clock = self.clock
        end = clock.monotonic() + max(0.0, seconds)
        while True:
            if self.abandon.is_set():
                raise Abandoned()
            now = clock.monotonic()
            self._tick(now)
            self._log_losses(now=now)
            if now >= end:
                return
            clock.sleep(min(end, self._due(now)) - now, self.abandon)
