"""The accounting ledger: the bounded queue and the account of what became of every row.

One lock guards the queue, the rows in flight (taken by the writer, not yet settled) and every
counter, so a snapshot taken under it always satisfies the identities the plugin promises::

    accepted  = written + dead_lettered + dropped + pending      (pending = queued + in flight)
    submitted = accepted + rejected

Rows are numbered in acceptance order (``seq``). The queue holds a contiguous run of them ending
at ``accepted`` (rows only join at the tail, and leave from the head), so a queued row's number
is implied by its place and not stored. The writer takes rows from the head and settles
a batch as a whole, and ``drop_oldest`` drops from the head of the queue, so every row older
than the oldest unsettled one is settled: that is the watermark :meth:`Ledger.wait_settled`
(behind ``flush()``) waits for.

Nothing here does I/O; the lock is never held across I/O.

How the queued rows themselves are kept (segments: no object per row) is
:mod:`corestore_plugins.accounting.segments`; the ledger keeps the run of segments
(``segments``, the last one ``tail``) and the count of rows in them (``queued``).
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .segments import Batch, Item, Part, Segment, Shape

__all__ = ["Ledger", "FlushWaiter", "percentiles", "NEVER"]

#: Shapes remembered per ledger (a table and its keys), before the cache starts over.
_SHAPES = 256

_RING = 1024  # latency samples kept (a power of two)
# submit() latency samples (stats()["enqueue_us"]): every call for the first 1024 rows, then one
# call in 16 (two clock reads per call cost about a tenth of submit() itself)
_TIME_ALL = 1024
_TIME_EVERY = 16
#: ``Ledger.turn_mark`` when the writer is not inside a marked database call
NEVER = 1 << 62


class FlushWaiter:
    """One ``flush()`` call: the last ``seq`` it waits for, whether one of those rows was lost,
    and the event set when they are all settled (only then: no spurious wake-ups, which would
    cost the writer a GIL hand-off per batch)."""

    __slots__ = ("target", "lost", "event")

    def __init__(self, target: int) -> None:
        self.target = target
        self.lost = False
        self.event = threading.Event()


class Ledger:
    """The queue, the rows in flight and the counters, under one lock (see the module docs)."""

    # slots: submit() reads and writes a dozen of these per row, and an instance with this many
    # attributes in a dict gets the interpreter's slower attribute access (callgrind: 6,280
    # instructions per submit() call without slots, 5,971 with)
    __slots__ = ("_shapes", "_turn_spare", "accepted", "backlog_limit", "batch_s", "batches", "blocked",
                 "capacity", "closed", "dead_lettered", "delay_s", "dropped", "enqueue_n", "enqueue_ns",
                 "faulted_batches", "full_armed", "high_water", "in_flight", "in_flight_id",
                 "in_flight_uncertain", "isolated_batches", "lock", "logged_dropped", "logged_rejected",
                 "loss_signalled", "near_full", "persistent_signals", "probes", "queued", "rejected",
                 "rejected_tables", "reopens", "segments", "shape", "space", "tail", "taken", "time_next",
                 "turn", "turn_mark", "turn_waiting", "turns", "uncertain_commits", "waiters", "wake",
                 "written", "yield_armed", "yielding", "yields")

    def __init__(self, capacity: int, *, backlog_limit: int = 0) -> None:
        """``capacity`` is ``queue_size``; ``backlog_limit`` the most rows one batch takes once
        the queue is at or above :attr:`high_water` (``max_batch_size``; 0: no more than asked)."""
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)  # blocked submitters (on_full = "block")
        self.taken = threading.Condition(self.lock)  # a submitter giving the writer its turn (yield_ms)
        self.wake = threading.Event()  # the writer's wake-up: rows, flush, close
        self.capacity = capacity
        #: half the queue: from here the writer takes up to ``backlog_limit`` rows per batch and
        #: a submitter gives it its turn (at most once per batch taken)
        self.high_water = max(1, capacity // 2)
        self.backlog_limit = backlog_limit
        self.yield_armed = True  # a submitter may yield (reset by every take)
        self.full_armed = True  # ... and once more with the queue nine-tenths full (reset by every take)
        #: nine-tenths of the queue: a submitter's last wait for the writer before rows are refused
        self.near_full = max(1, capacity - capacity // 10)
        self.yielding = 0
        #: held by the writer while it is inside a database call it marked (see give_turn): the
        #: first submitter past ``turn_mark`` waits for it, so the writer gets the GIL back as
        #: soon as its call returns instead of after the interpreter's switch interval
        self.turn: threading.Lock = threading.Lock()
        self._turn_spare: threading.Lock = threading.Lock()  # marks alternate between two locks (hand_over)
        self.turn_mark = NEVER
        self.turn_waiting = 0  # submitters inside give_turn (for tests and stats)
        #: the queued rows, oldest first, in segments (accounting.segments); ``tail`` is the last
        #: one (rows join it), ``queued`` the rows in all of them
        self.segments: collections.deque[Segment] = collections.deque()
        self.tail: Segment | None = None
        self.queued = 0
        #: the shape of the last flat segment a row went to, unless its table is known to be
        #: missing: submit()'s fast path tries it first (set by submit(); cleared by take_all()
        #: and revoke_shape())
        self.shape: Shape | None = None
        self._shapes: dict[tuple[str, tuple[str, ...]], Shape] = {}
        self.in_flight: Batch | None = None
        self.in_flight_id: str | None = None
        self.in_flight_uncertain = False
        self.closed = False
        self.blocked = 0
        self.waiters: list[FlushWaiter] = []
        # counters (the names stats() reports: site/plugins/accounting.md); ``submitted`` is
        # accepted + rejected, computed, so submit() updates one counter per row
        self.accepted = 0
        self.rejected = 0
        self.dropped = 0
        self.written = 0
        self.dead_lettered = 0
        self.batches = 0
        self.faulted_batches = 0
        self.reopens = 0
        self.persistent_signals = 0
        self.uncertain_commits = 0
        self.probes = 0
        self.isolated_batches = 0
        self.yields = 0  # submit() calls that waited for the writer to take a batch (yield_ms)
        self.turns = 0  # submit() calls that waited for a database call of the writer to return
        self.rejected_tables: dict[str, int] = {}  # rows refused for a table the database lacks
        # losses not yet logged (the writer logs them, at most once per interval)
        self.logged_rejected = 0
        self.logged_dropped = 0
        self.loss_signalled = False  # a loss woke the writer to report it
        # latency rings: submit() duration (ns), batch transaction (s), oldest row's wait (s)
        self.enqueue_ns = [0] * _RING
        self.enqueue_n = 0
        #: submit() times a call when ``accepted`` has reached this: every call at first, then
        #: one in 16 once 1024 were timed (set by timed())
        self.time_next = 0
        self.batch_s: collections.deque[float] = collections.deque(maxlen=_RING)
        self.delay_s: collections.deque[float] = collections.deque(maxlen=_RING)

    # -- the submitters' side (call with the lock held) --------------------------------------
    def place(self, table: Any, row: dict[str, Any], values: tuple[Any, ...] | None, shape: Shape | None,
              ts: float) -> None:
        """Queue one row at the tail (the caller counts it: ``queued``, ``accepted``). With
        ``values`` (its values in ``shape``'s key order) ``row`` is the caller's own dict,
        copied only if it goes to a mixed segment; without, ``row`` is already a copy, and a
        named table's row of two or more keys gets its shape here. It joins the tail if the
        tail is of its kind; else a new segment opens (see ``Segment.open_flat_after``)."""
        own = values is None  # ``row`` is a copy already
        if own and type(table) is str and len(row) >= 2:
            keys = tuple(row)
            shape = self._shapes.get((table, keys))
            if shape is None and all(type(k) is str for k in keys):
                if len(self._shapes) >= _SHAPES:
                    self._shapes.clear()
                shape = self._shapes[(table, keys)] = Shape(table, keys)
            if shape is not None:
                values = shape.get(row)
        tail = self.tail
        if values is not None and shape is not None:
            if tail is None or tail.shape is not shape:
                if tail is not None and len(tail) and not tail.open_flat_after():
                    self._mixed(tail if tail.shape is None else self._open(None), table,
                                row if own else row.copy(), ts)
                    return
                tail = self._open(shape)
            tail.values.extend(values)
            tail.times.append(ts)
            return
        if tail is None or tail.shape is not None:
            tail = self._open(None)
        self._mixed(tail, table, row, ts)

    def revoke_shape(self) -> None:
        """End submit()'s fast path for :attr:`shape` (lock held): a caller that read the shape
        before this fails its re-check under the lock (the tail is no longer that shape's)."""
        self.shape = None
        if self.tail is not None and self.tail.shape is not None:
            self._open(None)

    def _open(self, shape: Shape | None) -> Segment:
        seg = Segment(shape)
        segs = self.segments
        if self.tail is not None and not len(self.tail):  # emptied by the writer: it goes
            segs.pop()
        segs.append(seg)
        self.tail = seg
        return seg

    @staticmethod
    def _mixed(seg: Segment, table: Any, row: dict[str, Any], ts: float) -> None:
        assert seg.tables is not None
        seg.tables.append(table)
        seg.values.append(row)
        seg.times.append(ts)

    def timed(self, started_ns: int, seq: int) -> None:
        """A timed submit() call, which began at ``started_ns`` (``perf_counter_ns``), queued row
        ``seq`` (lock held): keep its duration; the next call timed is one in 16 after the
        first 1024 (every one before)."""
        i = self.enqueue_n
        self.enqueue_ns[i & (_RING - 1)] = time.perf_counter_ns() - started_ns
        self.enqueue_n = i + 1
        self.time_next = seq + (0 if i + 1 < _TIME_ALL else _TIME_EVERY - 1)

    # -- the writer's side (call with the lock NOT held) -------------------------------------
    def take(self, limit: int) -> Batch:
        """Move up to ``limit`` rows from the head of the queue into flight; up to
        ``backlog_limit`` when the queue is at or above :attr:`high_water` (the writer is behind:
        one transaction for more rows means fewer round trips for the same rows)."""
        with self.lock:
            n = self.queued
            if n >= self.high_water and self.backlog_limit > limit:
                limit = self.backlog_limit
            batch = Batch.cut(self._cut_head(min(n, limit)))
            self.in_flight = batch
            self.in_flight_id = None
            self.in_flight_uncertain = False
            if self.blocked and batch:
                self.space.notify(len(batch))
            self.yield_armed = self.full_armed = True
            if self.yielding:
                self.taken.notify_all()
        return batch

    def _cut_head(self, k: int) -> list[Part]:
        """Remove the ``k`` oldest queued rows (lock held), as parts, numbered. Only the tail may
        be an empty segment (``_open`` drops an emptied tail it replaces), so every segment
        before it holds rows: a segment used up here is dropped unless it is the tail."""
        first = self.accepted - self.queued + 1  # the head's seq
        parts: list[Part] = []
        left = k
        segs = self.segments
        while left:
            seg = segs[0]
            m = min(len(seg), left)
            assert m, f"accounting ledger: {left} row(s) counted but not queued"
            parts.append(seg.cut(m, first))
            first += m
            left -= m
            if not len(seg) and seg is not self.tail:
                segs.popleft()
        self.queued -= k
        return parts

    def hand_over(self, rows: int) -> threading.Lock | None:
        """The writer is about to enter a database call (the GIL is released inside it): after
        about ``rows`` more accepted rows (the call should be over by then) a submitter waits
        for it (:meth:`give_turn`). Returns the lock to pass to :meth:`take_back` after the
        call, or None (not marked). Two locks alternate: the submitter that waited for the
        previous call may still hold that one until it gets the GIL back."""
        lock = self._turn_spare
        if not lock.acquire(False):
            return None
        self._turn_spare = self.turn
        self.turn = lock
        self.turn_mark = self.accepted + rows
        return lock

    def take_back(self, lock: threading.Lock) -> None:
        """The writer's marked call returned (it holds the GIL again)."""
        self.turn_mark = NEVER
        lock.release()

    def give_turn(self, seconds: float) -> None:
        """A submitter passed ``turn_mark``: wait up to ``seconds`` for the writer's database call
        to return and the writer to take the GIL back (releasing the GIL meanwhile). On timeout
        the mark is cleared, so one call of the writer costs the submitters one wait at most."""
        turn = self.turn
        self.turn_waiting += 1
        try:
            if turn.acquire(True, seconds):
                turn.release()
            else:
                self.turn_mark = NEVER
        finally:
            self.turn_waiting -= 1
        with self.lock:
            self.turns += 1

    def make_room(self, on_full: str, block_timeout_s: float) -> bool:
        """The queue is full or closed (call with the lock held): may a new row go in?
        ``on_full`` decides: "reject" (no), "drop_oldest" (drop the head, counted; yes) or
        "block" (wait up to ``block_timeout_s`` for room)."""
        if self.closed:
            return False
        if on_full == "reject":
            return False
        if on_full == "drop_oldest":
            head = self.accepted - self.queued + 1
            segs = self.segments
            seg = segs[0]  # (holds rows: only the tail may be empty, see _cut_head)
            seg.drop_first()
            if not len(seg) and seg is not self.tail:
                segs.popleft()
            self.queued -= 1
            self.dropped += 1
            if self.waiters:
                self.lose([head])
                self.wake_waiters()
            return True
        deadline = time.monotonic() + block_timeout_s
        self.blocked += 1
        try:
            while self.queued >= self.capacity and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.space.wait(left)
        finally:
            self.blocked -= 1
        return not self.closed

    def give_way(self, seconds: float, *, last_chance: bool = False) -> None:
        """A submitter far ahead of the writer (the queue at or above :attr:`high_water`, or a
        batch just made ready) waits up to ``seconds`` for the writer to take its next batch,
        releasing the GIL meanwhile; at most one such wait per batch taken, plus one
        ``last_chance`` wait with the queue at :attr:`near_full` (a writer slow to be scheduled
        on a loaded machine), so a stalled writer costs the producers two waits. Call with the
        lock NOT held."""
        with self.lock:
            if self.closed:
                return
            # the writer may have taken a batch since the caller looked at the queue (its wait
            # for the writer's call came first): then there is nothing left to give way to, and
            # waiting would last until yield_ms (measured: 5 ms with the writer waiting for
            # rows and the producer waiting for the writer)
            if self.queued < (self.near_full if last_chance else self.high_water):
                return
            if last_chance:
                if not self.full_armed:
                    return
                self.full_armed = False
            else:
                if not self.yield_armed:
                    return
                self.yield_armed = False
            self.yielding += 1
            try:
                self.taken.wait(seconds)
            finally:
                self.yielding -= 1
            self.yields += 1

    def settle(self, batch: Batch, *, written: int, dead: int, durable_dead: bool,
               lost_seqs: Iterable[int] = ()) -> bool:
        """Account a finished batch; False if :meth:`take_all` took it first (close)."""
        with self.lock:
            if self.in_flight is not batch:
                return False
            self.in_flight = None
            self.in_flight_id = None
            self.in_flight_uncertain = False
            self.written += written
            self.dead_lettered += dead
            if self.waiters:
                if not durable_dead:
                    self.lose(lost_seqs)
                self.wake_waiters()
        return True

    def take_all(self) -> tuple[list[Item], list[Item], str | None, bool]:
        """At close: everything unsettled, as ``(in_flight, queued, batch_id, uncertain)``."""
        with self.lock:
            in_flight = list(self.in_flight or ())
            batch_id, uncertain = self.in_flight_id, self.in_flight_uncertain
            queued: list[Item] = list(Batch.cut(self._cut_head(self.queued)))
            self.segments.clear()
            self.tail = None
            self.shape = None  # (the fast path relies on a tail while a shape is set)
            self.queued = 0
            self.in_flight = None
            self.in_flight_id = None
            self.in_flight_uncertain = False
            if self.blocked:
                self.space.notify_all()
        return in_flight, queued, batch_id, uncertain

    def settle_leftovers(self, count: int, *, durable: bool, seqs: Iterable[int]) -> None:
        """Account rows dead-lettered at close (taken with :meth:`take_all`)."""
        with self.lock:
            self.dead_lettered += count
            if self.waiters:
                if not durable:
                    self.lose(seqs)
                self.wake_waiters()

    def bump(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    # -- flush -----------------------------------------------------------------------------
    def _watermark(self) -> int:
        """Every row with ``seq`` <= this is settled (call with the lock held)."""
        if self.in_flight:
            return self.in_flight.seqs[0] - 1
        if self.queued:
            return self.accepted - self.queued
        return self.accepted

    def wait_settled(self, timeout: float | None) -> bool:
        """Wait until every row accepted before the call is settled; True if all were written
        or durably dead-lettered (none dropped, none lost), False on timeout or loss."""
        with self.lock:
            waiter = FlushWaiter(self.accepted)
            if self._watermark() >= waiter.target:
                return True
            self.waiters.append(waiter)
        self.wake.set()  # the writer stops waiting for its batch to fill
        try:
            waiter.event.wait(timeout)
        finally:
            with self.lock:
                self.waiters.remove(waiter)
                done = self._watermark() >= waiter.target
        return done and not waiter.lost

    def wake_waiters(self) -> None:
        """Set the event of every flush() waiter whose rows are all settled (lock held)."""
        mark = self._watermark()
        for w in self.waiters:
            if w.target <= mark:
                w.event.set()

    def lose(self, seqs: Iterable[int]) -> None:
        """Rows ``seqs`` were lost (dropped, or dead-lettered to no file): the flush() waiters
        covering them will return False (lock held)."""
        seqs = list(seqs)
        if not seqs:
            return
        low = min(seqs)
        for w in self.waiters:
            if low <= w.target:
                w.lost = True

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self, extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """The counters, ``extra()`` (state the writer mutates under this lock) and copies of
        the latency rings, all under the lock: one consistent view."""
        with self.lock:
            queued = self.queued
            in_flight = len(self.in_flight) if self.in_flight else 0
            n = min(self.enqueue_n, _RING)
            out: dict[str, Any] = {
                "submitted": self.accepted + self.rejected,  # every submit() is one or the other
                "accepted": self.accepted,
                "rejected": self.rejected,
                "dropped": self.dropped,
                "written": self.written,
                "dead_lettered": self.dead_lettered,
                "pending": queued + in_flight,
                "queued": queued,
                "in_flight": in_flight,
                "batches": self.batches,
                "faulted_batches": self.faulted_batches,
                "reopens": self.reopens,
                "persistent_signals": self.persistent_signals,
                "uncertain_commits": self.uncertain_commits,
                "isolated_batches": self.isolated_batches,
                "yields": self.yields,
                "turns": self.turns,
                "probes": self.probes,
                "rejected_tables": dict(self.rejected_tables),
                "blocked": self.blocked,
                "waiters": len(self.waiters),
                "_enqueue_ns": self.enqueue_ns[:n] if n < _RING else list(self.enqueue_ns),
                "_batch_s": list(self.batch_s),
                "_delay_s": list(self.delay_s),
            }
            if extra is not None:
                out.update(extra())
        return out


def percentiles(samples: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, float | int]:
    """``{"p50", "p99", "max", "samples"}`` of ``samples`` multiplied by ``scale``."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0}
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, int(q * n))] * scale, digits)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(s[-1] * scale, digits), "samples": n}
