"""Waiting for a turn at the write gate (:mod:`corestore_plugins._write_gate_ticket` runs the
queue): on Linux a futex sleep on the predecessor's state word, elsewhere a blocking fcntl wait on
its byte in a pooled helper thread; judging a predecessor found gone or keeping its place; giving
up a ticket; counting who waits (``queued()``). :class:`GateWaits` is the part of
:class:`~corestore_plugins._write_gate_ticket.Gate` that does it, over
:class:`~corestore_plugins._write_gate_table.GateTable`'s table and locks.
"""
from __future__ import annotations

import logging
import os
import time

from ._write_gate_table import (
    _ABANDONED,
    _DONE,
    _ENTRY,
    _ENTRY_SIZE,
    _FUTEX,
    _HEADER,
    _HOLDING,
    _MAX_IDLE_HELPERS,
    _META,
    _NEXT,
    _OFD,
    _SLOT_BYTE,
    _TAKEN,
    _U32,
    _U64,
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
        ``pred``'s byte, i.e. while its owner holds it no longer (a live owner keeps its byte locked
        from its ticket until its place is ended): ``"ours"`` (released, died holding or keeping
        its place, or a newer ticket in its slot) or ``"through"`` (it ended without holding, or
        was never taken: wait for its predecessor)."""
        owner, state, until = self._state(pred)
        if owner < pred or (owner == pred and state in (_WAITING, _ABANDONED)):
            if owner == pred:
                with self._lock:
                    self.counters["skipped_dead" if state == _WAITING else "skipped_abandoned"] += 1
            return "through"
        if owner == pred and state == _HOLDING:
            with self._lock:
                self.counters["dead_holders"] += 1
        return "ours"

    def _take_over(self, fd: int, pred: int, deadline: float) -> bool:
        """``pred`` holds the gate but is between transactions (``busy`` 0) and past its ``until``:
        a place kept by a writer that has not come back. Under ``META`` (which the holder takes
        too when the clock cannot prove nobody took its place), check again and mark it ``taken``:
        the turn is ours. Its owner finds the mark when it writes again, and queues afresh."""
        if not self._meta_lock(fd, deadline):
            return False
        try:
            owner, state, _pid, until, busy, taken = self._entry(pred)
            if owner != pred or state != _HOLDING or busy or taken or time.monotonic_ns() < until:
                return False
            _U32.pack_into(self._map, self._offset(pred) + _TAKEN, 1)  # type: ignore[arg-type]
        finally:
            _unlock(fd, _META)
        with self._lock:
            self.counters["taken_over"] += 1
        return True

    def _takeable(self, pred: int) -> bool:
        """``pred`` keeps its place between transactions and its ``until`` has passed."""
        owner, state, _pid, until, busy, taken = self._entry(pred)
        return owner == pred and state == _HOLDING and not busy and not taken and time.monotonic_ns() >= until

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
            if state == _HOLDING and self._takeable(pred) and self._take_over(fd, pred, deadline):
                break  # (a futex-mode process kept its place and has not come back)
            byte = _SLOT_BYTE + pred % SLOTS
            if not _try_lock(fd, byte):
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
            else:
                break
        return Outcome.WAITED

    def _wait_futex(self, fd: int, ticket: int, deadline: float) -> Outcome:
        """Wait for the turn on the predecessor's state word: its release (``DONE``) or give-up
        (``ABANDONED``) wakes us at once. While it holds the gate we also wake when its ``until``
        passes: if it is then between transactions it kept its place and has not come back, and
        we take the place over (:meth:`_take_over`). After a sleep that changed nothing (every
        ``LIVENESS_S`` at most: a waiter does not see its predecessor being admitted, so it also
        looks every ``LIVENESS_S`` for a place kept by a writer that has stopped writing; 25 ms
        made the end of a contention run, when writers finish one by one, stall visibly; so an
        admitted waiter wakes its successor once, which then sleeps to the new holder's
        ``until`` instead, and a writer that stops costs the queue its turn's end, not
        ``LIVENESS_S``) we
        check that it is still alive, i.e. still holds its byte, so a crashed process is
        noticed right after the kernel drops its lock."""
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
            if state == _HOLDING and self._takeable(pred) and self._take_over(fd, pred, deadline):
                break
            if check:
                check = False
                byte = _SLOT_BYTE + pred % SLOTS
                if _try_lock(fd, byte):  # nobody holds its byte: it is gone (or has just ended)
                    verdict = self._examine_locked(pred)
                    _unlock(fd, byte)
                    if verdict == "ours":
                        break
                    pred -= 1
                    continue
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return self._give_up(fd, ticket)
            wait = min(remaining, LIVENESS_S)
            if state == _HOLDING and until / 1e9 > now:  # wake when a kept place may be taken over
                wait = min(wait, until / 1e9 - now + 0.00002)
            futex.wait(self._state_address(pred), state, max(wait, 0.00002))
            check = self._state(pred)[:2] == (owner, state)  # unchanged: check it is alive
        return Outcome.WAITED

    def queued(self) -> int:
        """How many writers wait for their turn right now: the ``WAITING`` tickets at the end of
        the queue, read from the shared table without a lock (one memory read per waiter), or 0
        when none of their processes is alive (``kill(pid, 0)`` from the newest back until one
        is: one system call as a rule), so that a crashed waiter's entry never reads as a queue.

        **When**: the checkpoint governor asks before (and while holding the gate, after) taking
        the gate for a checkpoint, to defer it while writers queue (issue 19). The answer is a hint
        (the queue moves while it is read), never a basis for correctness; 0 when the gate is
        unavailable. A waiter whose pid this process cannot see (another PID namespace sharing the
        file) counts as gone: the governor then checkpoints as it would without a queue."""
        if self._map is None and not self._open():
            return 0
        table = self._map
        if table is None:  # closed meanwhile
            return 0
        ticket = _U64.unpack_from(table, _NEXT)[0] - 1
        pids: list[int] = []
        for _ in range(SLOTS):
            if ticket < 1:
                break
            owner, state, pid, _until, _busy, _taken = _ENTRY.unpack_from(
                table, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE)
            ticket -= 1
            if owner != ticket + 1 or state == _ABANDONED:
                continue  # a skipped ticket (its slot holds an older one) or a waiter that gave up
            if state != _WAITING:
                break  # the holder (or a finished ticket): the front of the queue
            pids.append(pid)
        seen: set[int] = set()
        for pid in pids:
            if pid not in seen:
                if _pid_alive(pid):
                    return len(pids)
                seen.add(pid)
        return 0

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


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a waiter's entry outlives a crashed waiter)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
