"""write_gate: fair, bounded write admission across threads and processes.

Why: SQLite admits one writer at a time, and the loser of each race waits in SQLite's busy
handler, which sleeps 1, 2, 5, 10 ... 100 ms between attempts: the lock sits idle while waiters
sleep, whoever releases it takes it straight back, and the longest waiters are penalised most
(measured here: with 20 writer processes the slowest transaction waited nearly the whole run and
the processes' finish times spread over 95 % of it). This plugin queues a database's writers, in
every thread and process that uses corestore, in FIFO order on a cross-process ticket gate
(:mod:`corestore_plugins._write_gate_ticket`) taken *before* ``BEGIN IMMEDIATE`` and released
after ``COMMIT``/``ROLLBACK``: the turn passes by explicit hand-off and a waiter sleeps in the
kernel until it is its turn, so SQLite's busy handler almost never runs among corestore's own
writers.

Behaviour:

* **What is gated.** Every write operation (``transaction()``, ``run()``, a write statement outside
  a transaction) and, with ``checkpoints = true``, ``store.checkpoint()``; not reads, not
  ``backup()``. ``before_operation`` takes the gate, ``after_operation`` (called once per
  operation however it ended) releases it; nested transactions (savepoints) never reach these
  hooks, and the gate is re-entrant per thread, so a thread never waits for itself.
* **Bounded.** The wait is bounded by the operation's deadline (``run(deadline_s=...)``) and by
  ``timeout_s`` (default: the profile's ``busy_timeout``). When the gate is not ours in time the
  writer is *not* failed: it goes on to SQLite's own lock with whatever is left of that budget
  (its connection's busy timeout is shortened for this one operation), so only SQLite's BUSY ends
  in :class:`~corestore.BusyError`, and it does so on time.
* **Never a correctness requirement.** Writers that do not use corestore (or whose gate is
  unavailable) simply meet SQLite's lock as before; the gate only orders the writers that use it.
  A killed holder or waiter releases its fcntl locks with its process and the queue moves on.
* **Lock order**: the init lock, then the gate, then SQLite's locks. A thread's first operation,
  which may open its connection and switch the journal mode under the init lock, is not gated.
* **Read-only users** cannot hold the gate: the sidecar is opened for writing and only write locks
  are used; without write access the plugin reports the gate unavailable and stays out of the way.
* **Checkpoints and other exclusive work** take the gate with :meth:`WriteGate.held`.
* **apsw**: ``apsw_busy_handler = true`` installs a fair busy handler (short fixed sleeps up to the
  deadline instead of SQLite's growing ones) for the waits the gate cannot cover (writers outside
  corestore, a gate that timed out).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import attrs

from corestore import HealthComponent, HealthStatus, hookimpl
from corestore.forking import refusal_for
from corestore.operation import Operation
from corestore.settings import boolean, non_negative_seconds, number, optional

from ._write_gate_table import _FUTEX
from ._write_gate_ticket import Gate, Outcome, gate_for, release_gate, reset_gates_after_fork

__all__ = ["WriteGate", "fair_busy_handler"]

logger = logging.getLogger(__name__)

#: The core's Operation keeps its kind in a slot behind a read-only property; the fast path reads
#: the slot (a property call is ~400 instructions, a sizeable part of the gate's per-write cost)
#: and falls back to the property if the core ever stores it differently.
_SLOT_KIND = isinstance(getattr(Operation, "_kind", None), types.MemberDescriptorType)
_monotonic = time.monotonic



def fair_busy_handler(timeout_s: float, sleep_s: float, deadline_of: Any = None) -> Any:
    """An apsw busy handler: retry every ``sleep_s`` seconds until ``timeout_s`` after the first
    BUSY of each lock attempt (or ``deadline_of()``, a monotonic time or None, if sooner).

    Unlike SQLite's own handler (1, 2, 5 ... 100 ms sleeps) the sleep does not grow, so a waiter
    never oversleeps a freed lock by more than ``sleep_s``.
    """
    started = [0.0]

    def handler(prior_calls: int) -> bool:
        now = time.monotonic()
        if prior_calls == 0:
            started[0] = now
        deadline = started[0] + timeout_s
        if deadline_of is not None:
            other = deadline_of()
            if other is not None and other < deadline:
                deadline = other
        if now >= deadline:
            return False
        time.sleep(min(sleep_s, deadline - now))
        return True

    return handler


class _ThreadState:
    """One thread's view of the plugin: its connection, the operations it holds the gate for,
    and a shortened busy wait to undo."""

    __slots__ = ("conn", "op", "ops", "shortened", "deadline", "gt", "resumed", "thread")

    def __init__(self) -> None:
        self.conn: Any = None
        self.op: Any = None  # the operation this thread holds the gate for (the outermost one)
        self.ops: list[Any] = []  # operations that re-entered the gate inside it (held(), nesting)
        self.shortened: Any = None
        self.deadline: float | None = None
        self.gt: Any = None  # this thread's state at the gate (Gate.this_thread()): the fast path's handle
        self.resumed = 0  # writes that resumed a kept place (counted here, without a lock: every write's path)
        self.thread = threading.current_thread()


class WriteGate:
    """FIFO, bounded admission of one database's writers across threads and processes.

    Settings (``[profiles.NAME.settings.write_gate]``):

    ===================== ===== ======= =========================================================
    name                  type  default meaning
    ===================== ===== ======= =========================================================
    ``timeout_s``         float none    Longest wait for the gate; none: the profile's
                                        ``busy_timeout``. An operation's deadline shortens it.
    ``checkpoints``       bool  true    ``store.checkpoint()`` takes the gate too.
    ``turn_s``            float 0.001   The longest turn: while its turn lasts (or while nobody
                                        waits) a writer keeps its place between transactions and
                                        resumes without a hand-off (0: hand off after each one).
    ``round_s``           float 0.005   A turn is at most ``round_s`` divided among the writers
                                        waiting behind, so a round of turns takes about
                                        ``round_s`` (0: every turn is ``turn_s``); a turn
                                        begun with nobody waiting is cut to its share once
                                        others queue.
    ``linger_s``          float 0.0002  How long a kept place waits for its writer to come back
                                        before the next in line may take it over.
    ``apsw_busy_handler`` bool  false   apsw driver: install the fair busy handler.
    ``busy_sleep_s``      float 0.001   The fair busy handler's fixed sleep.
    ===================== ===== ======= =========================================================

    Health component ``write_gate``: always UP (the gate is an optimisation); the summary says
    whether the gate is in use and how often writers waited or fell back to SQLite's lock.
    """

    name: ClassVar[str] = "write_gate"
    #: SQLite only: a PostgreSQL profile that lists it is refused at open (corestore.registry.check_engine)
    engines: ClassVar[tuple[str, ...]] = ("sqlite",)

    @attrs.frozen(kw_only=True)
    class Settings:
        """Settings of :class:`WriteGate`."""

        timeout_s: float | None = attrs.field(
            default=None, validator=optional(non_negative_seconds),
            metadata={"help": "longest wait for the gate (none: the profile's busy_timeout); a deadline shortens it"},
        )
        checkpoints: bool = attrs.field(
            default=True, validator=boolean, metadata={"help": "store.checkpoint() takes the gate too"},
        )
        apsw_busy_handler: bool = attrs.field(
            default=False, validator=boolean,
            metadata={"help": "apsw driver: a fair busy handler (short fixed sleeps to the deadline)"},
        )
        turn_s: float = attrs.field(
            default=0.001, validator=non_negative_seconds,
            metadata={"help": "the longest turn: while its turn lasts (or nobody waits) a writer keeps its place "
                              "between transactions and resumes without a hand-off (0: hand off after each one)"},
        )
        round_s: float = attrs.field(
            default=0.005, validator=non_negative_seconds,
            metadata={"help": "a round of turns: a writer's turn is at most round_s divided among the writers "
                              "waiting behind it (and at most turn_s), bounding everyone's wait (0: turn_s)"},
        )
        linger_s: float = attrs.field(
            default=0.0002, validator=non_negative_seconds,
            metadata={"help": "how long a writer keeps its place after a transaction, within its turn, "
                              "while others wait (0: never)"},
        )
        busy_sleep_s: float = attrs.field(
            default=0.001, validator=number(0, low_inclusive=False, unit="seconds"),
            metadata={"help": "the fair busy handler's fixed sleep"},
        )

    def __init__(self, settings: WriteGate.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds, monotonic) times the waits the plugin counts and the shortened busy
        wait; the gate itself keeps to :func:`time.monotonic` (its times are shared across processes)."""
        self.settings = settings if settings is not None else self.Settings()
        self.clock = clock
        self._gate: Gate | None = None
        self._resume_slow: Any = None  # the gate's methods behind the fast path, bound once
        self._release_for: Any = None
        self._last: tuple[Any, Any] = (None, None)  # (operation, thread state) of the last fast resume
        self._store: Any = None
        self._busy_ms = 0
        self._local = threading.local()
        self._stats_lock = threading.Lock()
        self._turn_s = self.settings.turn_s
        self._round_s = self.settings.round_s
        self._linger_s = self.settings.linger_s
        #: places are kept between transactions (futex waits: Linux, and linger_s > 0)
        self._keeps = _FUTEX is not None and self._linger_s > 0
        self._states: list[_ThreadState] = []  # every thread's state (their ``resumed`` counts)
        self._timeout = 0.0  # set at the first connection (the profile's busy_timeout by default)
        self._counts: dict[str, Any] = {o.value: 0 for o in Outcome.ALL}  # by outcome; stats() names them
        self._counts.update(ungated_first=0, wait_s_total=0.0, wait_s_max=0.0)

    # -- public ----------------------------------------------------------------------------------
    @property
    def gate(self) -> Gate | None:
        """The process-wide gate of this store's file (None for ``:memory:`` and read-only profiles)."""
        return self._gate

    @contextlib.contextmanager
    def held(self, timeout_s: float | None = None) -> Iterator[bool]:
        """Hold the gate for the ``with`` block (re-entrant in one thread); yields whether it is
        held. False means it could not be had within ``timeout_s`` (default: the plugin's timeout)
        or is unavailable: the block still runs, protected by SQLite's locks only, as every write
        is when the gate cannot be had. Checkpoints that must not interleave with corestore's
        writers run inside it; lock order: take the init lock, if at all, *before* this."""
        gate = self._gate
        if gate is None:
            yield False
            return
        outcome = gate.acquire(self._default_timeout() if timeout_s is None else timeout_s)
        try:
            yield outcome.held
        finally:
            if outcome.held:
                gate.release()

    def queued(self) -> int:
        """How many writers (of every process using the gate) wait for their turn now; 0 without a
        gate. A hint read from the shared table without a lock (the queue moves meanwhile): the
        checkpoint governor defers a checkpoint while it is non-zero (issue 19)."""
        gate = self._gate
        if gate is None:
            return 0
        try:
            return gate.queued()
        except (OSError, ValueError):  # the table was unmapped by a close meanwhile
            return 0

    def stats(self) -> dict[str, Any]:
        """Counters: ``gated`` (operations that held the gate), ``immediate`` (no wait),
        ``resumed`` (a kept place, no hand-off), ``waited``, ``reentered``, ``timeouts`` (went on to
        SQLite's lock after the timeout), ``unavailable`` (no gate: SQLite's lock only), ``ungated_first`` (a thread's first
        operation), ``wait_s_total``, ``wait_s_max``; plus the gate's own state under ``gate``."""
        with self._stats_lock:
            c = dict(self._counts)
            c["resumed"] += sum(st.resumed for st in self._states)
        out: dict[str, Any] = {
            "gated": c["held"] + c["resumed"] + c["waited"], "immediate": c["held"], "resumed": c["resumed"],
            "waited": c["waited"], "reentered": c["reentered"], "timeouts": c["timeout"],
            "unavailable": c["unavailable"], "ungated_first": c["ungated_first"],
            "wait_s_total": c["wait_s_total"], "wait_s_max": c["wait_s_max"],
        }
        if self._gate is not None:
            out["gate"] = self._gate.snapshot()
        return out

    # -- hooks -----------------------------------------------------------------------------------
    @hookimpl
    def on_open(self, store: Any, connection: Any) -> None:
        """Remember the gate, this thread's connection (for the bounded fallback) and, with the
        apsw driver and ``apsw_busy_handler``, install the fair busy handler."""
        if self._store is None:
            self._store = store
            self._busy_ms = int(store.profile.pragmas.get("busy_timeout", 0) or 0)
            self._timeout = self._default_timeout()
            if not store.memory and not store.profile.read_only:
                self._gate = gate_for(store.path)
                self._resume_slow = self._gate._resume_slow  # noqa: SLF001 - the fast path's fallback
                self._release_for = self._gate.release_for
        local = self._state()
        local.conn = connection
        if self.settings.apsw_busy_handler and store.profile.driver == "apsw":
            set_handler = getattr(connection, "set_busy_handler", None) or connection.setbusyhandler  # apsw < 3.42
            set_handler(fair_busy_handler(
                self._default_timeout(), self.settings.busy_sleep_s, lambda: local.deadline))

    @hookimpl
    def before_operation(self, store: Any, operation: Any) -> None:
        """Take the gate before ``BEGIN IMMEDIATE`` (bounded; never raises for contention).

        The common case first, in as few steps as possible (it is every write's path): this
        thread kept its place at the gate after its last write and takes it back, without a
        system call while the clock shows its place cannot have been taken over. This is
        :meth:`Gate.resume <corestore_plugins._write_gate_ticket.Gate.resume>` inlined (a
        method call is a sizeable part of the cost); the gate's thread handle carries the
        table's views for it."""
        try:
            local = self._local.s
        except AttributeError:
            return self._before_first(store, operation)
        gt = local.gt
        if (gt is not None and gt.keep and local.op is None
                and (operation._kind if _SLOT_KIND else operation.kind) == "write"):
            try:
                gt.keep.pop()  # atomic: the gate's close() may be ending the place
            except IndexError:
                return self._before(store, operation, local)
            gt.u32[gt.busy_i] = 1  # busy first, then the clock (see Gate.resume)
            if _monotonic() < gt.safe or self._resume_slow(gt, self._turn_s):
                gt.depth = 1
                local.resumed += 1
                local.op = operation
                self._last = (operation, local)
                return None
        return self._before(store, operation, local)

    def _before_first(self, store: Any, operation: Any) -> None:
        """``before_operation`` on a thread without state here yet."""
        if self._gate is not None and self._gated(operation):
            with self._stats_lock:
                self._counts["ungated_first"] += 1  # this thread's first operation opens its connection
        return None

    def _gated(self, operation: Any) -> bool:
        kind = operation.kind
        return kind == "write" or (kind == "checkpoint" and self.settings.checkpoints and operation.name != "backup")

    def _before(self, store: Any, operation: Any, local: _ThreadState) -> None:
        gate = self._gate
        if gate is None or not self._gated(operation):
            return
        if local.conn is None:
            with self._stats_lock:
                self._counts["ungated_first"] += 1
            return  # this thread's first operation opens its connection (maybe under the init lock)
        if refusal_for(store.path) is not None:
            return  # a forked child that may not use this file: the core refuses it at once, no wait
        started = self.clock()
        timeout = self._timeout
        if operation.deadline is not None:
            timeout = min(timeout, operation.deadline - started)
        try:
            outcome = gate.acquire(timeout, turn_s=self._turn_s, round_s=self._round_s)
        except Exception:  # the gate is an optimisation: a failure of its own never fails a write
            logger.exception("%s: write gate failed; using SQLite's own lock", store.path)
            outcome = Outcome.UNAVAILABLE
        if outcome.held:
            if local.op is None and outcome is not Outcome.REENTERED:
                local.op = operation
            else:
                local.ops.append(operation)
            if local.gt is None:
                local.gt = gate.this_thread()
        counts = self._counts
        with self._stats_lock:
            counts[outcome.value] += 1
            if outcome is Outcome.WAITED or outcome is Outcome.TIMEOUT:
                waited = self.clock() - started
                counts["wait_s_total"] += waited
                if waited > counts["wait_s_max"]:
                    counts["wait_s_max"] = waited
        if outcome is Outcome.TIMEOUT:
            self._shorten_busy_wait(store, operation, started + timeout)

    @hookimpl
    def after_operation(self, store: Any, operation: Any) -> None:
        """Release the gate taken for ``operation`` (after COMMIT/ROLLBACK): keep the place for
        this thread's next write while its turn lasts (or nobody waits), else hand it on; undo a
        shortened busy timeout."""
        last = self._last  # (operation, thread state) of the last resume: spares a thread-local look-up
        if last[0] is operation:
            local = last[1]
        else:
            try:
                local = self._local.s
            except AttributeError:
                return
        if local.op is operation and not local.ops:  # the common case: the thread's one hold
            local.op = None
            gt = local.gt
            # Gate.release_for's commonest case inlined: a lone writer (nobody queued behind it)
            # past the first transaction of its turn keeps its place: no clock, no system call
            if (gt.depth == 1 and not gt.since and gt.u64[1] <= gt.ticket + 1 and self._keeps
                    and self._gate is not None):
                gt.depth = 0
                gt.u32[gt.busy_i] = 0
                gt.keep.append(1)
                return
            self._release_for(gt, self._linger_s)
            return
        self._after(store, operation, local)

    def _after(self, store: Any, operation: Any, local: _ThreadState) -> None:
        try:
            ops = local.ops
            if ops and ops[-1] is operation:
                ops.pop()
                self._release_for(local.gt, 0.0)
            elif operation in ops:
                ops.remove(operation)
                self._release_for(local.gt, 0.0)
            elif local.op is operation:
                local.op = None
                self._release_for(local.gt, self._linger_s)
        except RuntimeError:  # an operation begun before a fork: the child holds nothing
            logger.debug("%s: gate release without a hold on this thread", store.path, exc_info=True)
        if local.shortened is operation:
            self._restore_busy_wait()

    @hookimpl
    def on_close(self, store: Any) -> None:
        """The store closes: give the gate back; the last store of this process using the file
        closes it (its kept places ended, its descriptors closed, the table unmapped)."""
        gate, self._gate = self._gate, None
        self._last = (None, None)
        if gate is not None:
            release_gate(gate)

    @hookimpl
    def on_fork_child(self, store: Any) -> None:
        """In a forked child (the core calls it): the gates' descriptors, locks and helper threads
        belong to the parent (reset once per process), and so do this plugin's per-thread holds."""
        reset_gates_after_fork()
        self._local = threading.local()
        self._last = (None, None)
        self._stats_lock = threading.Lock()
        # the parent's counts carry over, as the rest of its counters do; its threads' states go
        self._counts["resumed"] += sum(st.resumed for st in self._states)
        self._states = []

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """UP: the gate's state and the admission counters (no I/O)."""
        stats = self.stats()
        gate = stats.get("gate")
        if self._gate is None:
            summary = "not used (in-memory or read-only store)"
        elif gate is not None and gate.get("unavailable"):
            summary = f"unavailable ({gate['unavailable']}): writers use SQLite's own lock"
        else:
            summary = (f"{stats['gated']} writes admitted ({stats['waited']} after a wait, max "
                       f"{stats['wait_s_max'] * 1000:.1f} ms), {stats['timeouts']} fell back to SQLite's lock")
        return HealthComponent(name=self.name, status=HealthStatus.UP, summary=summary, details=stats)

    # -- internals -------------------------------------------------------------------------------
    def _state(self) -> _ThreadState:
        local = getattr(self._local, "s", None)
        if local is None:
            local = self._local.s = _ThreadState()
            with self._stats_lock:
                # fold the counts of threads that have ended (their states go) and keep this one
                alive = set(threading.enumerate())
                for st in [st for st in self._states if st.thread not in alive]:
                    self._counts["resumed"] += st.resumed
                    self._states.remove(st)
                self._states.append(local)
        return local

    def _default_timeout(self) -> float:
        if self.settings.timeout_s is not None:
            return float(self.settings.timeout_s)
        return self._busy_ms / 1000.0

    def shortened_for(self, operation: Any) -> bool:
        """True while this thread's busy timeout is shortened for ``operation`` (its gate wait
        timed out): ``pragma_guard`` asks, so that it does not report that as drift."""
        local = getattr(self._local, "s", None)
        return operation is not None and local is not None and local.shortened is operation

    def _shorten_busy_wait(self, store: Any, operation: Any, budget_end: float) -> None:
        """The gate timed out: SQLite's own wait gets only what is left of the budget, so the
        operation ends on time (a BUSY that ends it is SQLite's, classified as usual)."""
        local = self._state()
        conn = local.conn
        remaining_ms = max(0, int((budget_end - self.clock()) * 1000))
        local.deadline = budget_end
        if not (self.settings.apsw_busy_handler and store.profile.driver == "apsw"):
            try:
                conn.execute(f"PRAGMA busy_timeout = {remaining_ms}")
            except Exception:  # a closed connection: the next one gets the profile's timeout
                logger.debug("%s: could not shorten the busy timeout", store.path, exc_info=True)
                return
        local.shortened = operation

    def _restore_busy_wait(self) -> None:
        local = self._state()
        local.shortened = None
        local.deadline = None
        store = self._store
        if self.settings.apsw_busy_handler and store.profile.driver == "apsw":
            return
        try:
            local.conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        except Exception:
            logger.debug("%s: could not restore the busy timeout", store.path, exc_info=True)
