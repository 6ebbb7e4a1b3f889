"""Waiting for a turn at the write gate (:mod:`corestore_plugins._write_gate_ticket` runs the
queue): on Linux a futex sleep on the predecessor's state word, elsewhere a blocking fcntl wait on
its byte in a pooled helper thread; judging a predecessor found gone or keeping its place; giving
up a ticket. :class:`GateWaits` is the part of :class:`~corestore_plugins._write_gate_ticket.Gate`
that does it, over :class:`~corestore_plugins._write_gate_table.GateTable`'s table and locks.
"""
from __future__ import annotations

import logging
import time

from ._write_gate_table import (
    _ABANDONED,
    _DONE,
    _FUTEX,
    _HOLDING,
    _LINGER,
    _MAX_IDLE_HELPERS,
    _OFD,
    _SLOT_BYTE,
    _WAITING,
    LIVENESS_S,
    SLOTS,
    GateTable,
    Outcome,
    _Helper,
    _try_lock,
    _unlock,
)

__all__ = ["GateWaits"]

logger = logging.getLogger("corestore_plugins._write_gate_ticket")  # one channel for the gate


class GateWaits(GateTable):
    """Waiting for the turn, and leaving the queue without it (see the module docstring)."""

    def _examine_locked(self, pred: int) -> str:
        """What ``pred``'s entry means for its successor, read while the successor holds
        ``pred``'s byte (so its owner, if alive, cannot resume meanwhile): ``"ours"`` (released,
        died holding, a newer ticket in its slot, or a kept place whose linger ended: taken over
        now), ``"through"`` (it ended without holding, or was never taken: wait for its
        predecessor) or ``"wait"`` (a kept place still within its linger)."""
        owner, state, until = self._state(pred)
        if owner < pred or (owner == pred and state in (_WAITING, _ABANDONED)):
            if owner == pred:
                with self._lock:
                    self.counters["skipped_dead" if state == _WAITING else "skipped_abandoned"] += 1
            return "through"
        if owner == pred and state == _LINGER:
            if time.monotonic_ns() < until:
                return "wait"
            self._set_state(pred, _DONE)
            with self._lock:
                self.counters["taken_over"] += 1
            return "ours"
        if owner == pred and state == _HOLDING:
            with self._lock:
                self.counters["dead_holders"] += 1
        return "ours"

    def _wait_helper(self, fd: int, ticket: int, deadline: float) -> Outcome:
        """Wait for the turn by blocking on the predecessor's byte (in a helper thread)."""
        pred = ticket - 1
        while pred >= 1 and ticket - pred < SLOTS:
            owner, state, until = self._state(pred)
            if owner < pred:
                pred -= 1
                continue
            if owner > pred or state == _DONE:
                break
            if state == _LINGER:  # (a futex-mode process keeps its place): wait for its linger to end
                pause = min(deadline - time.monotonic(), until / 1e9 - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
            byte = _SLOT_BYTE + pred % SLOTS
            if not _try_lock(fd, byte):
                if state == _LINGER:  # its owner resumed (or a steal is under way): look again
                    if time.monotonic() >= deadline:
                        return self._give_up(fd, ticket)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._give_up(fd, ticket)
                if not self._helper_wait(fd, byte, remaining):
                    self._abandon(ticket, fd)  # fd stays with the helper until its wait ends
                    with self._lock:
                        self.counters["orphaned_waits"] += 1
                    return Outcome.TIMEOUT
            verdict = self._examine_locked(pred)
            _unlock(fd, byte)
            if verdict == "through":
                pred -= 1
            elif verdict == "ours":
                break
            elif time.monotonic() >= deadline:
                return self._give_up(fd, ticket)
        return Outcome.WAITED

    def _wait_futex(self, fd: int, ticket: int, deadline: float) -> Outcome:
        """Wait for the turn on the predecessor's state word: its release (``DONE``) or give-up
        (``ABANDONED``) wakes us at once. After a sleep that changed nothing (every
        ``LIVENESS_S`` at most) we check that it is still alive, i.e. still holds its byte, so a
        crashed process is noticed right after the kernel drops its lock; a place it keeps
        (``LINGER``, its byte free) is taken over once its linger ends."""
        assert _FUTEX is not None
        futex = _FUTEX
        pred = ticket - 1
        check = False
        while pred >= 1 and ticket - pred < SLOTS:
            owner, state, until = self._state(pred)
            if owner < pred:
                pred -= 1  # never taken
                continue
            if owner > pred or state == _DONE:
                break  # released (or long gone): ours
            if state == _ABANDONED:
                with self._lock:
                    self.counters["skipped_abandoned"] += 1
                pred -= 1
                continue
            if check or (state == _LINGER and time.monotonic_ns() >= until):
                check = False
                byte = _SLOT_BYTE + pred % SLOTS
                if _try_lock(fd, byte):  # nobody holds its byte: gone, or a kept place
                    verdict = self._examine_locked(pred)
                    _unlock(fd, byte)
                    if verdict == "ours":
                        break
                    if verdict == "through":
                        pred -= 1
                        continue
                    owner, state, until = self._state(pred)
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return self._give_up(fd, ticket)
            wait = min(remaining, LIVENESS_S)
            if until and until / 1e9 > now:  # LINGER: its end; HOLDING: the end of its turn
                wait = min(wait, until / 1e9 - now)
            futex.wait(self._state_address(pred), state, max(wait, 0.00002))
            check = self._state(pred)[:2] == (owner, state)  # unchanged: check it is alive
        return Outcome.WAITED

    def _give_up(self, fd: int, ticket: int) -> Outcome:
        self._abandon(ticket, fd)
        self._give_back(fd)
        return Outcome.TIMEOUT

    def _helper_wait(self, fd: int, byte: int, timeout: float) -> bool:
        with self._lock:
            helper = self._helpers.pop() if self._helpers else None
        if helper is None:
            helper = _Helper(self)
        if helper.wait(fd, byte, timeout):
            with self._lock:
                if len(self._helpers) < _MAX_IDLE_HELPERS:
                    self._helpers.append(helper)
                    return True
            helper.retire()
            return True
        return False  # the helper now owns fd (and, with POSIX locks, the process lock)

    def _abandon(self, ticket: int, fd: int) -> None:
        """Give up a queued ticket: its successors skip it."""
        self._set_state(ticket, _ABANDONED)
        self._wake(ticket)
        _unlock(fd, _SLOT_BYTE + ticket % SLOTS)

    def _orphan_done(self, helper: _Helper) -> None:
        """An abandoned wait ended (on the helper's thread): the descriptor returns to the pool."""
        self._give_back(helper.fd)

    def _give_back(self, fd: int) -> None:
        self._give_fd(fd)
        if not _OFD:
            self._proc.release()
