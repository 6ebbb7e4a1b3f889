"""The circuit breaker's records: its states, :class:`Transition`, the per-lane counters and the
sliding window (moved verbatim out of ``circuit_breaker.py``; the state machine is in
``_breaker_state``)."""
from __future__ import annotations

import collections
import enum
import logging
from typing import Any

import attrs

from corestore.health import HealthStatus
from corestore.timefmt import iso as _iso

__all__ = ["BreakerState", "Transition", "LANES", "NAME"]

logger = logging.getLogger(__name__)

#: The plugin's name (its health component and profile key).
NAME = "circuit_breaker"

#: The two directions counted apart: an operation of kind ``"read"`` is a read, every other kind
#: (``write``, ``batch``, ``checkpoint`` ...) a write.
LANES: tuple[str, str] = ("write", "read")

_WINDOW_BUCKETS = 10
_TRANSITIONS_KEPT = 64


class BreakerState(str, enum.Enum):  # noqa: UP042 - StrEnum would format a member with a spec (f'{m:>9}') by value, not by __str__ (the name)
    """Where a breaker stands. ``ISOLATED`` is forced open by :meth:`Breaker.isolate` until
    :meth:`Breaker.reset`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ISOLATED = "isolated"

    @property
    def health(self) -> HealthStatus:
        """UP closed, DEGRADED half-open, DOWN open or isolated."""
        return _HEALTH[self]

    def __str__(self) -> str:
        return self.name


_HEALTH = {
    BreakerState.CLOSED: HealthStatus.UP,
    BreakerState.HALF_OPEN: HealthStatus.DEGRADED,
    BreakerState.OPEN: HealthStatus.DOWN,
    BreakerState.ISOLATED: HealthStatus.DOWN,
}


# -- records -------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Transition:
    """One state change of a breaker, with the counters as they were at that moment.

    ``at`` is the breaker's clock (monotonic), ``wall`` a unix time; ``lane`` the direction
    (``"write"``/``"read"``) whose faults tripped it (None for other transitions);
    ``consecutive`` that lane's consecutive faults; ``window_calls`` / ``window_failures`` its
    sliding window (window mode only); ``cooldown_s`` the cooldown armed by an opening.
    """

    previous: BreakerState
    current: BreakerState
    reason: str
    at: float
    wall: float
    lane: str | None = None
    consecutive: int = 0
    window_calls: int = 0
    window_failures: int = 0
    cooldown_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.previous.value, "to": self.current.value, "reason": self.reason,
            "at": _iso(self.wall), "lane": self.lane, "consecutive": self.consecutive,
            "cooldown_s": self.cooldown_s,
        }


class _Window:
    """Outcomes of the last ``span`` seconds in ``_WINDOW_BUCKETS`` time buckets (so the window
    slides in steps of ``span / _WINDOW_BUCKETS`` and costs O(1) per outcome)."""

    __slots__ = ("width", "buckets", "calls", "failures")

    def __init__(self, span: float) -> None:
        self.width = span / _WINDOW_BUCKETS
        self.buckets: collections.deque[list[int]] = collections.deque()  # [index, calls, failures]
        self.calls = 0
        self.failures = 0

    def _expire(self, index: int) -> None:
        oldest = index - _WINDOW_BUCKETS + 1
        buckets = self.buckets
        while buckets and buckets[0][0] < oldest:
            _, calls, failures = buckets.popleft()
            self.calls -= calls
            self.failures -= failures

    def add(self, now: float, failed: bool) -> None:
        index = int(now // self.width)
        self._expire(index)
        if self.buckets and self.buckets[-1][0] == index:
            bucket = self.buckets[-1]
        else:
            bucket = [index, 0, 0]
            self.buckets.append(bucket)
        bucket[1] += 1
        self.calls += 1
        if failed:
            bucket[2] += 1
            self.failures += 1

    def counts(self, now: float) -> tuple[int, int]:
        self._expire(int(now // self.width))
        return self.calls, self.failures

    def clear(self) -> None:
        self.buckets.clear()
        self.calls = self.failures = 0


class _Lane:
    """The counters of one direction: consecutive faults, lifetime totals, the window."""

    __slots__ = ("name", "consecutive", "failures", "successes", "window")

    def __init__(self, name: str, window_s: float | None) -> None:
        self.name = name
        self.consecutive = 0
        self.failures = 0
        self.successes = 0
        self.window = _Window(window_s) if window_s else None


class _Flight:
    """A half-open probe this breaker admitted and has not seen end: its epoch (the state it was
    admitted in), whether its outcome was counted, whether its probe slot was given back."""

    __slots__ = ("op", "epoch", "done", "released")

    def __init__(self, op: Any, epoch: int) -> None:
        self.op = op  # a strong reference: id(op) cannot be reused while the probe is in flight
        self.epoch = epoch
        self.done = False
        self.released = False


_DONE = object()  # the in-flight marker of an operation whose outcome was counted
_CLOSED = BreakerState.CLOSED


_READ_KINDS = ("read", "backup")  # a backup only reads the database


def _lane_of(op: Any) -> str:
    return "read" if op is not None and op.kind in _READ_KINDS else "write"
