"""The accounting writer's clock: where its time-based rules read the time and sleep.

Every wait of the writer thread goes through a clock: the batch latency wait, the idle wait, the
backoff after a storage fault, the wait for an open circuit breaker's cooldown, and the fault
episode's wall-clock escalation (``reopen_after_s``, ``degraded_after_s``, ``persistent_after_s``,
``refire_s``). :class:`SystemClock` is the real one. :class:`ManualClock` is for tests: time
moves only when the test calls :meth:`ManualClock.advance`, and
:meth:`ManualClock.wait_quiescent` returns once every thread sleeping on the clock has done what
was due and parked again, so a test can step a two-minute escalation in milliseconds and check
the state in between (time-based rules take an injected clock).

Submit timestamps (``ts_column``) and ``_corestore_batches.committed_at`` are wall-clock
(``time.time()``) and do not go through the clock.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "ManualClock"]


@runtime_checkable
class Clock(Protocol):
    """What the writer needs from a clock."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        """Sleep ``seconds`` (``math.inf``: until woken), or until ``wake`` is set; return
        whether ``wake`` was set."""


class SystemClock:
    """The real clock: ``time.monotonic`` and ``Event.wait``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        if seconds <= 0:
            return wake.is_set()
        return wake.wait(None if math.isinf(seconds) else seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to, for tests of time-based rules.

    ``sleep`` blocks the calling thread until the manual time reaches its deadline or its
    ``wake`` event is set. :meth:`wait_quiescent` waits (in real time) until every live thread
    that ever slept on this clock is asleep again with a deadline still in the future: after
    ``clock.advance(30); clock.wait_quiescent()`` the writer has run everything that was due
    at the new time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._cond = threading.Condition()
        self._sleeping: dict[threading.Thread, tuple[float, threading.Event]] = {}
        self._threads: set[threading.Thread] = set()
        self.sleeps = 0  # how many sleeps have started (for tests that count steps)

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` and wake the sleepers that are due."""
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def sleep(self, seconds: float, wake: threading.Event) -> bool:
        me = threading.current_thread()
        with self._cond:
            deadline = self._now + max(0.0, seconds)
            self._threads.add(me)
            self._sleeping[me] = (deadline, wake)
            self.sleeps += 1
            self._cond.notify_all()
            try:
                while self._now < deadline and not wake.is_set():
                    # a short real-time wait: the wake event is set without this condition
                    self._cond.wait(0.002)
            finally:
                del self._sleeping[me]
                self._cond.notify_all()
            return wake.is_set()

    def sleepers(self) -> list[float]:
        """Deadlines of the threads sleeping now (earliest first)."""
        with self._cond:
            return sorted(d for d, _ in self._sleeping.values())

    def wait_quiescent(self, timeout: float = 10.0) -> bool:
        """Wait until every live thread known to this clock sleeps with a future deadline and
        an unset wake event. Returns False on timeout (real seconds)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                live = [t for t in self._threads if t.is_alive()]
                self._threads = set(live)
                if live and all(
                    t in self._sleeping and self._sleeping[t][0] > self._now and not self._sleeping[t][1].is_set()
                    for t in live
                ):
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.002))

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
