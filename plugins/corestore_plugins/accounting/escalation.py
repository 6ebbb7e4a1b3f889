"""The fault episode: when the accounting writer reopens, degrades and signals.

An *episode* starts with the first batch that fails with a storage fault (or the first batch the
circuit breaker refuses) and lasts until ``healthy_to_clear`` batches in a row commit. Inside
it, three steps, each due by a count of faulted batches **or** by wall-clock time since the
episode started, whichever comes first (so a quiet queue escalates as fast as a busy one):

1. ``reopen``: close the writer's connection, after every ``reopen_after`` faulted batches or
   every ``reopen_after_s`` seconds while it keeps failing;
2. ``degraded``: the accounting health component says DEGRADED, once per episode, after
   ``degraded_after`` faulted batches or ``degraded_after_s`` seconds;
3. ``persistent``: ``on_persistent_failure`` (the application's "restart me" seam) after
   ``persistent_after`` faulted batches or ``persistent_after_s`` seconds, then again every
   ``refire_s`` seconds while the episode lasts.

One success does not end an episode (the incident's lesson: a lucky batch reset the streak);
it only pauses the wall-clock rules until the next fault. The object is plain state: the
writer mutates it under the ledger's lock and performs the returned actions itself.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["Escalation", "REOPEN", "DEGRADED", "PERSISTENT"]

REOPEN = "reopen"
DEGRADED = "degraded"
PERSISTENT = "persistent"


class Escalation:
    """The state of the current fault episode and its escalation rules (see the module docs)."""

    def __init__(self, *, reopen_after: int, reopen_after_s: float, degraded_after: int, degraded_after_s: float,
                 persistent_after: int, persistent_after_s: float, refire_s: float, healthy_to_clear: int) -> None:
        self.reopen_after = reopen_after
        self.reopen_after_s = reopen_after_s
        self.degraded_after = degraded_after
        self.degraded_after_s = degraded_after_s
        self.persistent_after = persistent_after
        self.persistent_after_s = persistent_after_s
        self.refire_s = refire_s
        self.healthy_to_clear = healthy_to_clear
        self.episodes = 0
        self.reset()

    def reset(self) -> None:
        """End the episode (or start with none)."""
        self.active = False
        self.failing = False
        self.started = 0.0
        self.faulted = 0
        self.healthy = 0
        self.reopen_mark_count = 0
        self.reopen_mark_time = 0.0
        self.reopens = 0
        self.degraded = False
        self.signalled_at: float | None = None
        self.signals = 0
        self.last_error = ""

    def _start(self, now: float) -> bool:
        if self.active:
            return False
        self.reset()
        self.active = True
        self.started = now
        self.reopen_mark_time = now
        self.episodes += 1
        return True

    # -- events ----------------------------------------------------------------------------
    def fault(self, now: float, error: str) -> tuple[bool, list[str]]:
        """A batch failed with a storage fault. Returns ``(episode_started, due_actions)``."""
        started = self._start(now)
        self.faulted += 1
        self.healthy = 0
        self.failing = True
        self.last_error = error
        return started, self._due(now)

    def blocked(self, now: float, reason: str) -> tuple[bool, list[str]]:
        """A batch could not even be tried (circuit breaker open): time runs, counts do not."""
        started = self._start(now)
        self.healthy = 0
        self.failing = True
        self.last_error = reason
        return started, self._due(now)

    def tick(self, now: float) -> list[str]:
        """Time passed while failing: the wall-clock rules that came due."""
        if not self.active or not self.failing:
            return []
        return self._due(now)

    def success(self) -> bool:
        """A batch committed. Returns True when this ends the episode."""
        if not self.active:
            return False
        self.failing = False
        self.healthy += 1
        if self.healthy >= self.healthy_to_clear:
            self.reset()
            return True
        return False

    # -- rules -----------------------------------------------------------------------------
    def _due(self, now: float) -> list[str]:
        actions: list[str] = []
        elapsed = now - self.started
        if (self.faulted - self.reopen_mark_count >= self.reopen_after
                or now - self.reopen_mark_time >= self.reopen_after_s):
            self.reopen_mark_count = self.faulted
            self.reopen_mark_time = now
            self.reopens += 1
            actions.append(REOPEN)
        if not self.degraded and (self.faulted >= self.degraded_after or elapsed >= self.degraded_after_s):
            self.degraded = True
            actions.append(DEGRADED)
        if self.signalled_at is None:
            if self.faulted >= self.persistent_after or elapsed >= self.persistent_after_s:
                self.signalled_at = now
                self.signals += 1
                actions.append(PERSISTENT)
        elif now - self.signalled_at >= self.refire_s:
            self.signalled_at = now
            self.signals += 1
            actions.append(PERSISTENT)
        return actions

    def next_due(self) -> float:
        """The monotonic time at which the next wall-clock rule comes due (inf: none)."""
        if not self.active or not self.failing:
            return math.inf
        due = [self.reopen_mark_time + self.reopen_after_s]
        if not self.degraded:
            due.append(self.started + self.degraded_after_s)
        if self.signalled_at is None:
            due.append(self.started + self.persistent_after_s)
        else:
            due.append(self.signalled_at + self.refire_s)
        return min(due)

    @property
    def tier(self) -> str:
        """``"none"``, ``"failing"``, ``"reopened"``, ``"degraded"`` or ``"persistent"``."""
        if not self.active:
            return "none"
        if self.signals:
            return "persistent"
        if self.degraded:
            return "degraded"
        if self.reopens:
            return "reopened"
        return "failing"

    def state(self, now: float) -> dict[str, Any]:
        """A JSON-friendly view for ``stats()`` and health details (no row data)."""
        return {
            "active": self.active,
            "tier": self.tier,
            "failing": self.failing,
            "faulted_batches": self.faulted,
            "healthy_batches": self.healthy,
            "duration_s": round(now - self.started, 3) if self.active else 0.0,
            "reopens": self.reopens,
            "signals": self.signals,
            "last_error": self.last_error,
            "episodes": self.episodes,
        }
