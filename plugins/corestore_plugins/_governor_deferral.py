"""Deferring a due checkpoint while writers queue at the write gate (issue 19), for
:class:`~corestore_plugins.checkpoint_governor.CheckpointGovernor`.

**When.** A governor round finds the WAL over ``target_wal_bytes`` and the ``write_gate`` plugin
is enabled: before it takes the gate, and again once it holds it, it asks the gate how many
writers are queued (``WriteGate.queued()``, read from the gate's shared table without a lock).

**Why.** A checkpoint holds every writer out for its whole length (under the WAL-reset mitigation
SQLite's writer lock; otherwise the gate): 40-60 ms for a 17 MB WAL here, which was the whole
latency tail of a 20-writer ``synchronous=NORMAL`` sample. Put off while writers queue, it lands
in a pause of the writes instead. It runs anyway, writers queued or not, once the WAL reaches
``target_wal_bytes * defer_wal_factor`` or the deferral has lasted ``defer_max_s`` (*forced*):
during sustained contention there is no pause, and the WAL may not grow without bound. Without
the gate there is no cheap cross-process sign of waiting writers (SQLite's busy handler sleeps
invisibly), so there is no deferral. A deferred checkpoint is simply not run: nothing here
touches the mitigation's guarantee.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Deferral", "RECHECK_S"]

logger = logging.getLogger(__name__)

#: While a checkpoint is deferred the governor's thread looks again this often (instead of its
#: ``interval_s``): the checkpoint lands within this long of the writes pausing. (A look is a few
#: memory reads of the gate's table and, as a rule, one ``kill(pid, 0)``.)
RECHECK_S = 0.05


class Deferral:
    """One governor's deferral: since when a due checkpoint is deferred, whether the coming one is
    forced (``"wal"`` or ``"time"``: past that ceiling with writers queued), and the counters
    ``deferred`` (rounds that put it off) and ``forced``. Thread-safe."""

    def __init__(self, factor: float, max_s: float, clock: Callable[[], float]) -> None:
        self.factor = factor
        self.max_s = max_s
        self.clock = clock
        self._lock = threading.Lock()
        self.since: float | None = None  # (clock) deferred since then; None: not deferring
        self.forced: str | None = None
        self.counts = {"deferred": 0, "forced": 0}

    @property
    def enabled(self) -> bool:
        return self.factor > 1 and self.max_s > 0

    def ceiling(self, target: int) -> int:
        """The WAL size at which a deferred checkpoint runs anyway."""
        return int(target * self.factor)

    def waiting_below_ceiling(self, wal: int, target: int) -> bool:
        """A checkpoint is deferred and the WAL (``wal`` >= 0) is still under the ceiling: the
        governor's thread, looking every :data:`RECHECK_S`, needs no wake-up."""
        return self.since is not None and 0 <= wal < target * self.factor

    def defer(self, path: str, gate: Any, wal: int, target: int) -> bool:
        """Whether to put the due checkpoint off now: ``gate`` (the ``write_gate`` plugin, or
        None: never) has writers queued and neither ceiling is reached. Past a ceiling with writers
        queued it returns False and marks the coming checkpoint forced (logged once)."""
        if gate is None or not self.enabled:
            return False
        queued = gate.queued()
        if not queued:
            return False
        now = self.clock()
        with self._lock:
            first = self.since is None
            if first:
                self.since = now
            since = self.since
            assert since is not None
            announced = self.forced is not None
            if wal >= target * self.factor:
                self.forced = "wal"
            elif now - since >= self.max_s:
                self.forced = "time"
            else:
                self.counts["deferred"] += 1
                self.forced = None
                if first:
                    logger.debug("%s: checkpoint deferred: WAL %d bytes, %d writer(s) queued at the write gate",
                                 path, wal, queued)
                return True
            forced = self.forced
        if not announced:  # (the round's second look, inside the gate, says nothing new)
            logger.info("%s: checkpoint runs although %d writer(s) queue at the write gate: %s", path, queued,
                        f"the WAL reached {wal} bytes (ceiling {self.ceiling(target)})" if forced == "wal"
                        else f"deferred for {now - since:.1f} s (defer_max_s {self.max_s:g})")
        return False

    def end(self) -> tuple[float | None, str | None]:
        """A checkpoint ran: (how long it was deferred, or None; why forced, or None); the
        deferral is over."""
        with self._lock:
            since, forced = self.since, self.forced
            self.since = self.forced = None
            if forced is not None:
                self.counts["forced"] += 1
        return (None if since is None else round(self.clock() - since, 3)), forced

    def reset(self) -> None:
        """No deferral any more: the WAL is back under its target (another process checkpointed
        it), a reader holds the checkpoint up (not the queue), or a forked child starts afresh."""
        with self._lock:
            self.since = self.forced = None

    def snapshot(self) -> dict[str, Any]:
        """The counters and ``deferring_s`` (how long so far, or None), for ``stats()``."""
        with self._lock:
            since = self.since
            out: dict[str, Any] = dict(self.counts)
        out["deferring_s"] = None if since is None else round(self.clock() - since, 3)
        return out

    def summary(self, wal: int, target: int, deferring_s: float) -> str:
        """The health summary while a checkpoint is deferred."""
        return (f"WAL {wal} bytes over target {target}: checkpoint deferred for {deferring_s:.1f} s while writers "
                f"queue at the write gate (it runs at a pause, or at the ceiling: {self.ceiling(target)} bytes "
                f"or {self.max_s:g} s)")
