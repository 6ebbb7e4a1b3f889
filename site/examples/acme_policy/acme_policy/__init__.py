"""acme_policy: a fault budget for corestore databases.

A corestore policy plugin, found through the ``corestore`` entry point
``acme_fault_budget``. It counts the storage faults each store reports
(``on_fatal``: disk I/O errors, corruption, a full disk...) over a sliding
window, and reports the store DEGRADED in ``store.health()`` (``on_health``)
while they exceed the budget, so a load balancer or a supervisor can act
before users notice.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from corestore import (
    Classification,
    ConfigError,
    HealthComponent,
    HealthStatus,
    hookimpl,
)
from corestore.settings import integer_at_least, non_negative_seconds

__all__ = ["FaultBudget"]

logger = logging.getLogger(__name__)


def _not_zero(instance: Any, attribute: attrs.Attribute[Any],
              value: float) -> None:
    if value == 0:  # after non_negative_seconds: a number >= 0 here
        raise ConfigError(
            f"{attribute.name} = {value!r} must be a number > 0 (seconds)")


class FaultBudget:
    """Health turns DEGRADED while more than ``max_faults`` storage faults
    happened in the last ``window_s`` seconds.

    ============== ===== ======= ==========================================
    setting        type  default meaning
    ============== ===== ======= ==========================================
    ``max_faults`` int   3       faults tolerated within the window
    ``window_s``   float 60.0    length of the sliding window, in seconds
    ============== ===== ======= ==========================================
    """

    # must equal the entry-point name
    name: ClassVar[str] = "acme_fault_budget"

    @attrs.frozen(kw_only=True)
    class Settings:
        max_faults: int = attrs.field(
            default=3,
            # corestore.settings: the shipped plugins' messages
            validator=integer_at_least(1),
            metadata={"help": "faults tolerated within the window "
                              "before health turns DEGRADED"},
        )
        window_s: float = attrs.field(
            default=60.0,
            validator=[non_negative_seconds, _not_zero],
            metadata={"help": "length of the sliding window, in seconds"},
        )

    def __init__(self, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # corestore builds one instance per store: state here is per store.
        self.settings = settings
        self._clock = clock
        # hooks run on the caller's thread: any thread
        self._lock = threading.Lock()
        self._faults: collections.deque[tuple[float, str]] = (
            collections.deque())
        self._over = False

    @hookimpl
    def on_fatal(self, store: Any, classification: Classification) -> None:
        """One call per failed operation (a ``store.run()`` with retries is
        one call)."""
        with self._lock:
            self._faults.append((self._clock(), classification.kind.name))
            over = self._count() > self.settings.max_faults
            crossed, self._over = over and not self._over, over
        if crossed:  # log the transition once, not every fault
            logger.warning("%s: fault budget exceeded (%d faults in %g s)",
                           store.path, self.settings.max_faults + 1,
                           self.settings.window_s)

    @hookimpl
    def on_health(self) -> HealthComponent:
        """State already held; no I/O in a health hook."""
        with self._lock:
            count = self._count()
            kinds = collections.Counter(kind for _, kind in self._faults)
            self._over = count > self.settings.max_faults
        limit, window = self.settings.max_faults, self.settings.window_s
        return HealthComponent(
            name=self.name,
            status=HealthStatus.DEGRADED if self._over else HealthStatus.UP,
            summary=f"{count} fault(s) in the last {window:g} s "
                    f"(budget {limit})",
            details={"faults_by_kind": dict(kinds), "max_faults": limit,
                     "window_s": window},
        )

    def _count(self) -> int:  # caller holds the lock
        horizon = self._clock() - self.settings.window_s
        while self._faults and self._faults[0][0] < horizon:
            self._faults.popleft()
        return len(self._faults)
