"""The accounting ledger: the bounded queue and the account of what became of every row.

One lock guards the queue, the rows in flight (taken by the writer, not yet settled) and every
counter, so a snapshot taken under it always satisfies the identities the plugin promises::

    accepted  = written + dead_lettered + dropped + pending      (pending = queued + in flight)
    submitted = accepted + rejected

Rows are numbered in acceptance order (``seq``). The writer takes rows from the head and settles
a batch as a whole, and ``drop_oldest`` drops from the head of the queue, so every row older
than the oldest unsettled one is settled: that is the watermark :meth:`Ledger.wait_settled`
(behind ``flush()``) waits for.

Nothing here does I/O; the lock is never held across I/O.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Item", "Ledger", "FlushWaiter", "percentiles"]

#: A queued row: ``(table_or_model, row, submitted_at, seq)``.
Item = tuple[Any, dict[str, Any], float, int]

_RING = 1024  # latency samples kept (a power of two)


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

    def __init__(self, capacity: int) -> None:
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)  # blocked submitters (on_full = "block")
        self.wake = threading.Event()  # the writer's wake-up: rows, flush, close
        self.capacity = capacity
        self.queue: collections.deque[Item] = collections.deque()
        self.in_flight: list[Item] | None = None
        self.in_flight_id: str | None = None
        self.in_flight_uncertain = False
        self.closed = False
        self.blocked = 0
        self.waiters: list[FlushWaiter] = []
        # counters (the names stats() reports: site/plugins/accounting.md)
        self.submitted = 0
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
        self.rejected_tables: dict[str, int] = {}  # rows refused for a table the database lacks
        # losses not yet logged (the writer logs them, at most once per interval)
        self.logged_rejected = 0
        self.logged_dropped = 0
        self.loss_signalled = False  # a loss woke the writer to report it
        # latency rings: submit() duration (ns), batch transaction (s), oldest row's wait (s)
        self.enqueue_ns = [0] * _RING
        self.enqueue_n = 0
        self.batch_s: collections.deque[float] = collections.deque(maxlen=_RING)
        self.delay_s: collections.deque[float] = collections.deque(maxlen=_RING)

    # -- the writer's side (call with the lock NOT held) -------------------------------------
    def take(self, limit: int) -> list[Item]:
        """Move up to ``limit`` rows from the head of the queue into flight."""
        with self.lock:
            q = self.queue
            if len(q) <= limit:
                batch = list(q)
                q.clear()
            else:
                popleft = q.popleft
                batch = [popleft() for _ in range(limit)]
            self.in_flight = batch
            self.in_flight_id = None
            self.in_flight_uncertain = False
            if self.blocked and batch:
                self.space.notify(len(batch))
        return batch

    def settle(self, batch: list[Item], *, written: int, dead: int, durable_dead: bool,
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
            in_flight = self.in_flight or []
            batch_id, uncertain = self.in_flight_id, self.in_flight_uncertain
            queued = list(self.queue)
            self.queue.clear()
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
            return self.in_flight[0][3] - 1
        if self.queue:
            return self.queue[0][3] - 1
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
            queued = len(self.queue)
            in_flight = len(self.in_flight) if self.in_flight else 0
            n = min(self.enqueue_n, _RING)
            out: dict[str, Any] = {
                "submitted": self.submitted,
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
