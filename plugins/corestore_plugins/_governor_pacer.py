"""One thread per process that paces the checkpoint governors whose own thread has not started.

**When.** :class:`~corestore_plugins.checkpoint_governor.CheckpointGovernor` (governed mode, a
writable file, ``interval_s`` > 0) hands itself to :func:`watch` at ``on_store_open`` instead of
starting its own thread there. Every ``interval_s`` this module's thread calls the governor's
``paced_check()``: one ``stat`` of ``-wal``; over the target, the governor starts its own thread,
which runs the round at once, and leaves this pacer (:func:`unwatch`). The governor also starts
its own thread at its ``check_every``-th operation (its commit-path counter), and leaves then.

**Why.** A governor thread per store cost every fresh ``corestore.open()`` a thread start
(``clone3``, the start handshake, then the join at close): the largest part of a fresh open's
time for the default profile on a SQLite with the WAL-reset bug (issue 18). The pacer keeps the
governor's promise (a size check at least every ``interval_s``, a round within ``interval_s`` of
the WAL going over its target) without that: the per-store thread, which may wait seconds for
SQLite's writer lock or the write gate, exists only once the store has written (or the WAL
needs a round), so one store's slow round never delays another's check. The pacer itself only
``stat``s files; it never takes a lock a writer takes and never touches SQLite.

The thread is started at the first :func:`watch` of the process, is a daemon, and waits at most
:data:`_IDLE_S` at a time while nothing is watched. After ``fork()`` the child starts with no
pacer and nothing watched (:func:`_after_fork_in_child`): a governor in the child starts its own
thread at its ``check_every``-th operation, as before.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Protocol

__all__ = ["watch", "unwatch", "watching"]

logger = logging.getLogger(__name__)

#: longest single wait of the pacer thread while nothing is due (it loops: never an unbounded wait)
_IDLE_S = 60.0


class _Paced(Protocol):
    def paced_check(self) -> None: ...


_lock = threading.Lock()
_cond = threading.Condition(_lock)
_watched: dict[Any, tuple[float, float]] = {}  # governor -> (interval_s, next check, monotonic)
_thread: threading.Thread | None = None
_wakes_at = 0.0  # when the pacer's current wait ends (monotonic): a later first check needs no notify


def watch(governor: _Paced, interval_s: float) -> None:
    """Check ``governor`` every ``interval_s`` (> 0) from the pacer thread until :func:`unwatch`."""
    global _thread
    with _cond:
        first = time.monotonic() + interval_s
        _watched[governor] = (interval_s, first)
        if _thread is None:
            _thread = threading.Thread(target=_loop, name="corestore-governor-pacer", daemon=True)
            _thread.start()
        elif first < _wakes_at:  # due before the pacer wakes: wake it (else no thread switch per open)
            _cond.notify()


def unwatch(governor: _Paced) -> None:
    """Stop pacing ``governor`` (its own thread runs, or its store closed); idempotent."""
    with _cond:
        _watched.pop(governor, None)


def watching(governor: _Paced) -> bool:
    """Whether the pacer checks ``governor`` (for tests and ``stats()``)."""
    with _cond:
        return governor in _watched


def _loop() -> None:
    global _wakes_at
    while True:
        with _cond:
            now = time.monotonic()
            due = [g for g, (_interval, at) in _watched.items() if at <= now]
            for g in due:
                interval, _at = _watched[g]
                _watched[g] = (interval, now + interval)
            if not due:
                soonest = min((at for _interval, at in _watched.values()), default=now + _IDLE_S)
                timeout = min(max(soonest - now, 0.0), _IDLE_S)
                _wakes_at = now + timeout
                _cond.wait(timeout)
                _wakes_at = 0.0  # awake: a watch() now is seen at the top of the loop
                continue
        for governor in due:
            try:
                governor.paced_check()
            except Exception:  # the pacer must never die silently: log and go on
                logger.exception("checkpoint governor: a paced check failed")


def _after_fork_in_child() -> None:
    global _lock, _cond, _thread, _wakes_at
    _wakes_at = 0.0
    _lock = threading.Lock()
    _cond = threading.Condition(_lock)
    _watched.clear()
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
