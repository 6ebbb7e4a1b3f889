"""When :class:`~corestore_plugins.checkpoint_governor.CheckpointGovernor` runs a round: its
thread (started lazily, issue 18), the commit path's size check, and the process-wide pacer's
check until the thread runs (:mod:`corestore_plugins._governor_pacer`). What a round *does* is
in the plugin's module; this is the part that decides when.

**The commit path's check** (``on_success``, every ``check_every`` operations): one ``stat`` of
``-wal``, which wakes the thread (starting it, the first time) only when a round has work: the
WAL over its target, and, while a checkpoint is deferred under contention
(:mod:`corestore_plugins._governor_deferral`; the thread looks every ``RECHECK_S`` then), at the
deferral's WAL ceiling. Why not a wake-up every ``check_every`` operations, as before issue 19's
fourth round: ``on_success`` runs before the write gate is released, so every writer queued at
the gate waits for what it costs: 1-2 us for a ``stat``, about 0.1 ms for a wake-up (GIL and CPU
contention during the writer's turn) and 0.45 ms for the thread's start (site/performance.md).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from corestore import hookimpl

from . import _governor_pacer
from ._governor_deferral import RECHECK_S

__all__ = ["GovernorThread"]

logger = logging.getLogger("corestore_plugins.checkpoint_governor")  # one channel for the governor


class GovernorThread:
    """The thread, the commit-path check and the paced check of a checkpoint governor (a mixin:
    :class:`~corestore_plugins.checkpoint_governor.CheckpointGovernor` supplies the state)."""

    if TYPE_CHECKING:  # supplied by CheckpointGovernor
        from ._governor_deferral import Deferral

        settings: Any
        _store: Any
        _lock: threading.Lock
        _wake: threading.Event
        _stop: threading.Event
        _thread: threading.Thread | None
        _restart: bool
        _governing: bool
        _ops: int
        _counts: dict[str, int]
        _deferral: Deferral

        def tick(self) -> str: ...
        def _governs(self, store: Any) -> bool: ...
        @staticmethod
        def _wal_bytes(store: Any) -> int | None: ...

    def _start(self, store: Any) -> None:
        """Start the governor thread (once; never after ``on_close``) and wake it for a round."""
        with self._lock:
            if self._thread is not None or self._stop.is_set() or not self._governs(store):
                return
            self._restart = False
            _governor_pacer.unwatch(self)
            self._thread = threading.Thread(target=self._loop, name=f"corestore-governor:{os.path.basename(store.path)}",
                                            daemon=True)
            self._wake.set()  # the first round runs at once
            self._thread.start()

    def paced_check(self) -> None:
        """The pacer's check while this governor has no thread (every ``interval_s``): one
        ``stat`` of ``-wal``, counted in ``checks``; over the target, the thread starts and runs
        the round (:mod:`corestore_plugins._governor_pacer`)."""
        store = self._store
        if store is None or store.closed or self._stop.is_set():
            _governor_pacer.unwatch(self)
            return
        with self._lock:
            self._counts["checks"] += 1
        if (self._wal_bytes(store) or 0) > self.settings.target_wal_bytes:
            self._start(store)

    @property
    def thread_started(self) -> bool:
        """Whether this governor's own thread is running (it starts lazily, see ``on_store_open``)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @hookimpl
    def on_success(self, store: Any) -> None:
        """The hot path: one counter; every ``check_every`` operations one ``stat`` of ``-wal``
        (:meth:`_commit_check`). It does not name ``operation``: alone it costs the core no
        Operation object."""
        self._ops += 1
        if self._ops >= self.settings.check_every:
            self._ops = 0
            self._commit_check(store)

    def _commit_check(self, store: Any) -> None:
        """Every ``check_every`` operations, on the committing thread: ``stat`` ``-wal`` and wake
        the governor's thread (starting it, the first time) only when a round has work (the
        module docs say why, and what a wake-up here cost the writers queued at the gate)."""
        if not self._governing:
            return
        try:
            wal = self._wal_bytes(store) or 0
        except Exception:  # (a stat error: the round reports it)
            wal = -1
        s = self.settings
        if 0 <= wal <= s.target_wal_bytes:
            return
        if self._deferral.waiting_below_ceiling(wal, s.target_wal_bytes):
            return  # deferred under contention: the thread is looking every RECHECK_S
        if self._restart:  # its first round (or a forked child's): its thread starts here
            self._start(store)
        self._wake.set()

    def _loop(self) -> None:
        """The governor thread: a round at every wake-up, every ``interval_s``, and every
        ``RECHECK_S`` while a checkpoint is deferred; never dies of an exception."""
        interval = self.settings.interval_s or None
        while not self._stop.is_set():
            wait = interval
            if self._deferral.since is not None and (wait is None or wait > RECHECK_S):
                wait = RECHECK_S  # a deferred checkpoint: look again soon for a pause of the writes
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # the governor must never die silently: log and go on
                logger.exception("%s: checkpoint governor round failed", getattr(self._store, "path", "?"))
