"""The cross-process ticket gate behind the ``write_gate`` plugin: FIFO admission to one database's
write lock for every thread of every process, with explicit hand-off and no polling.

Why tickets: neither ``flock`` nor fcntl record locks queue their waiters in order, and a process
that releases such a lock can take it straight back before any waiter runs. The gate therefore
hands the turn over explicitly, like a CLH queue lock built from fcntl byte-range locks:

* The sidecar ``<db>.corestore-gate`` holds a small table, mapped into every process: a ticket
  counter ``next`` and one 32-byte entry per slot (``ticket``, ``state``, ``pid``, ``until`` in
  monotonic nanoseconds, ``busy``, ``taken``: see turns). Beside the data, fcntl locks on single
  bytes far beyond the table are used as signals: byte ``META`` guards the counter and
  takeovers (held for microseconds), byte ``SLOT + (ticket mod SLOTS)`` is held by the
  ticket's owner from the moment it takes the ticket until its place ends (it releases the
  gate, gives up, or its kept place is taken over and it notices).
* **Taking a ticket** (under ``META``): lock the own slot byte, write the entry
  (``ticket, WAITING, pid``), then publish ``next = ticket + 1``. If the predecessor's entry says
  ``DONE`` the gate is ours at once (the uncontended path: three fcntl calls).
* **Waiting** for the turn, on Linux: sleep on a futex on the state word of the predecessor
  ``ticket - 1`` (a kernel wait, no polling). Its release writes ``DONE`` and wakes exactly this
  waiter: one context switch per hand-off. A crashed process wakes nobody, but the kernel drops
  its fcntl locks: after a sleep that changed nothing (``LIVENESS_S``, 5 ms, at most) the waiter
  try-locks the predecessor's byte (a live owner keeps it locked from its ticket until its place
  ends); if that succeeds the predecessor is gone, and its entry says
  what it was: ``HOLDING`` (died holding or keeping its place: the turn is ours), ``WAITING`` (died waiting) or
  ``ABANDONED`` (gave up: its wait timed out): the turn passes through it, so wait for *its*
  predecessor instead. A queue never stalls on a crashed holder or waiter and never lets two
  tickets in at once.
* **Turns.** A hand-off costs a context switch, as much as a whole ``synchronous=NORMAL``
  transaction, so a holder may keep its place between transactions: a release with ``linger_s``
  leaves its byte locked (it is still alive) and writes ``busy = 0`` into its entry, publishing
  ``until``: from then on, if it is still between transactions, its successor may take the place
  over. ``until`` is ``linger_s`` after the commit while others wait (within the turn: ``turn_s``
  from when the gate became ours, at least three transactions like its first), the turn's end
  while nobody waits. If the same thread writes again it resumes (``RESUMED``, no hand-off)
  **without a system call**: it writes ``busy = 1`` and then reads the clock; at least
  ``MARGIN_S`` before ``until``, no successor can have acted (one acts only after ``until`` and
  reads ``busy`` then; the write came first). Otherwise it decides under ``META``: a successor
  that took the place over marked it ``taken`` (then it ends the place and queues afresh); if
  not, the place is still its own (a new turn if nobody waits), unless the turn is over and
  others wait (then it hands on). A successor takes a kept place over only under ``META``, and
  only if, looked at again there, it is still between transactions, not taken and past
  ``until``. A holder inside a transaction (``busy = 1``) is never taken over. Every turn ends
  with a real hand-off when others wait: round-robin, ``turn_s`` at a time, or ``round_s``
  shared among the writers waiting (a turn begun with nobody waiting is cut to its share of a
  round as soon as others queue: the first writer of a burst must not run a whole ``turn_s``
  ahead of everyone). (If the clock
  argument ever failed, e.g. a write left invisible to another CPU for ``MARGIN_S``, two writers
  would hold the gate at once and SQLite's lock would order them: never a correctness issue.)
* **Releasing**: write ``DONE`` into the own entry, wake the successor, unlock the own byte; a
  releaser that wants in again queues behind everybody already waiting.
* **Closing**: the last store of the process using the file closes its gate
  (:func:`release_gate`): kept places are ended, descriptors closed, the table unmapped.

Bounded waits: the futex sleep takes a timeout, so every wait ends by its deadline; a waiter that
gives up marks its entry ``ABANDONED`` and wakes its successor, which skips it. Without futex
(other platforms) a blocking fcntl call has no timeout: the wait on the predecessor's byte runs
on a pooled helper thread while the caller waits on a thread lock with its deadline (a caller that
gives up leaves the orphaned wait to the helper, which returns the descriptor to the pool when it
ends), and turns are off. ``META`` is only ever held across a few memory writes, so it is taken
with non-blocking attempts (yielding between them) until the same deadline.

Locks need a writable descriptor: the sidecar is opened ``O_RDWR`` (with ``O_NOFOLLOW``,
``O_CLOEXEC``, and a mode no more permissive than the database's), and every lock is a write lock;
a user who can only read the database cannot open it for writing and so can never hold the gate.
On Linux the locks are open-file-description (OFD) locks, owned per descriptor, so threads queue
individually (each participant borrows a descriptor from a per-gate pool); elsewhere they are
POSIX record locks, owned per process, so one thread per process queues at a time behind an
in-process lock.

Limits: the slot table has ``SLOTS`` entries. A ticket whose slot is still in use by an older one
(a place kept by a thread that never wrote again) is skipped; when every slot is in use the writer
is told the gate is unavailable and uses SQLite's own lock. On
network file systems fcntl locks and shared mappings are unreliable: use the gate on local disks
only (the database itself should not be on one either).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ._write_gate_table import (
    _BUSY,
    _DONE,
    _ENTRY_SIZE,
    _FUTEX,
    _HEADER,
    _HOLDING,
    _META,
    _NEXT,
    _OFD,
    _SLOT_BYTE,
    _TAKEN,
    _U64,
    _UNTIL,
    _WAITING,
    GATE_SUFFIX,
    LIVENESS_S,
    MARGIN_S,
    MIN_TURN_TRANSACTIONS,
    SLOTS,
    Outcome,
    _Thread,
    _try_lock,
    _unlock,
    gate_path_for,
    open_sidecar,
)
from ._write_gate_wait import GateWaits

__all__ = ["Gate", "Outcome", "GATE_SUFFIX", "LIVENESS_S", "SLOTS", "gate_for", "gate_path_for", "open_sidecar",
           "release_gate", "reset_gates_after_fork"]

logger = logging.getLogger(__name__)


class Gate(GateWaits):
    """The gate of one database file in this process (get it with :func:`gate_for`).

    Re-entrant per thread: a thread that holds it and asks again gets ``REENTERED`` and must
    release as many times as it acquired. Thread-safe; fork-safe (the child starts afresh).
    """

    # -- acquire / release -------------------------------------------------------------------------
    def _thread_state(self) -> _Thread:
        t = self._local.t = _Thread()
        with self._lock:
            self._threads.append(t)
        return t

    def this_thread(self) -> _Thread:
        """This thread's state at this gate (for :meth:`resume` and :meth:`release_for`, which a
        caller on every write's path uses to skip the thread-local look-up)."""
        return getattr(self._local, "t", None) or self._thread_state()

    def resume(self, t: _Thread, turn_s: float) -> bool:
        """The common case of :meth:`acquire`, for ``t`` = :meth:`this_thread`: if the thread kept
        its place (and holds nothing) and its turn lasts or nobody waits, take it back and return
        True (no hand-off; within the turn no system call at all); else False (then call
        :meth:`acquire`)."""
        keep = t.keep
        if keep and not t.depth:
            try:
                keep.pop()  # atomic under the GIL: close() may be giving the place up
            except IndexError:
                return False
            # busy first, then the clock: a successor takes a kept place over only after `until`
            # (t.safe + MARGIN_S), and only if it then reads busy == 0, so a busy written before a
            # clock reading below t.safe is seen by every successor that could act (module docs)
            self._u32[t.busy_i] = 1
            if time.monotonic() < t.safe:
                t.depth = 1
                return True
            if self._resume_slow(t, turn_s):
                t.depth = 1
                return True
        return False

    def held_by_this_thread(self) -> bool:
        t = getattr(self._local, "t", None)
        return t is not None and t.depth > 0

    def acquire(self, timeout_s: float, *, turn_s: float = 0.0, round_s: float = 0.0) -> Outcome:
        """Take the gate within ``timeout_s`` seconds (FIFO across threads and processes).

        ``turn_s`` > 0 opens a *turn*: until ``turn_s`` after the gate became ours, a
        :meth:`release` with ``linger_s`` keeps the place while others wait, and this thread's
        next :meth:`acquire` resumes it without a hand-off. ``round_s`` > 0 shortens the turn to
        ``round_s`` divided among the writers waiting behind when the gate became ours (so that a
        whole round of turns takes about ``round_s``).
        """
        t = getattr(self._local, "t", None) or self._thread_state()
        if t.depth:
            t.depth += 1
            return Outcome.REENTERED
        if self._map is None and not self._open():  # (a forked child starts afresh: see the fork hook)
            return Outcome.UNAVAILABLE
        if t.keep and self.resume(t, turn_s):
            return Outcome.RESUMED
        deadline = time.monotonic() + max(0.0, timeout_s)
        if not _OFD and not self._proc.acquire(timeout=max(0.0, timeout_s)):
            return Outcome.TIMEOUT
        try:
            fd = self._take_fd()
        except OSError as err:
            if not _OFD:
                self._proc.release()
            logger.debug("%s: gate descriptor: %s", self.path, err)
            return Outcome.UNAVAILABLE
        outcome = self._enqueue_and_wait(t, fd, deadline, turn_s if _FUTEX is not None else 0.0, round_s)
        if outcome.held:
            t.depth = 1
            t.fd = fd
        return outcome

    def _enqueue_and_wait(self, t: _Thread, fd: int, deadline: float, turn_s: float, round_s: float) -> Outcome:
        if not self._meta_lock(fd, deadline):
            self._give_back(fd)
            return Outcome.TIMEOUT
        assert self._map is not None
        try:
            ticket = _U64.unpack_from(self._map, _NEXT)[0] or 1
            for _ in range(SLOTS):
                if _try_lock(fd, _SLOT_BYTE + ticket % SLOTS):
                    break
                # the slot still belongs to an older ticket (a place kept by a thread that has not
                # written since): skip this ticket; its stale entry lets successors pass through it
                ticket += 1
            else:
                with self._lock:
                    self.counters["queue_full"] += 1
                self._give_back(fd)
                return Outcome.UNAVAILABLE
            self._set_entry(ticket, _WAITING)
            _U64.pack_into(self._map, _NEXT, ticket + 1)
            owner, state, _until = self._state(ticket - 1)
            pred_done = ticket == 1 or (owner == ticket - 1 and state == _DONE)  # DONE is final
        finally:
            _unlock(fd, _META)
        t.ticket = ticket
        t.offset = offset = _HEADER + (ticket % SLOTS) * _ENTRY_SIZE
        t.busy_i = (offset + _BUSY) // 4
        t.until_i = (offset + _UNTIL) // 8
        t.u32, t.u64 = self._u32, self._u64
        try:
            if pred_done:
                outcome = Outcome.HELD
            elif _FUTEX is not None:
                outcome = self._wait_futex(fd, ticket, deadline)
            else:
                outcome = self._wait_helper(fd, ticket, deadline)
        except BaseException:  # a failed wait (an fcntl error): leave the queue, never stall it
            self._give_up(fd, ticket)
            raise
        if outcome.held:
            t.turn_max, t.round_s = turn_s, round_s
            now = time.monotonic()
            t.solo_start = 0.0
            if turn_s > 0 and round_s > 0:  # share a round among those waiting behind
                waiting = _U64.unpack_from(self._map, _NEXT)[0] - ticket - 1
                if waiting > 0:
                    turn_s = min(turn_s, round_s / waiting)
                else:
                    t.solo_start = now
            t.turn_end = now + turn_s
            t.since = now if turn_s > 0 else 0.0
            self._publish(t, t.turn_end if turn_s > 0 else now)
            self._set_entry(ticket, _HOLDING, self._u64[t.until_i], busy=1)
            if _U64.unpack_from(self._map, _NEXT)[0] > ticket + 1:
                # our successor went to sleep while we were WAITING (no `until` to wake at, so for
                # LIVENESS_S): wake it to read our `until`, or a place we keep after our last write
                # would hold it up to LIVENESS_S (measured: 5 ms per writer that stops, stacked
                # at the end of a contention run, the whole NORMAL latency tail)
                self._wake(ticket)
        return outcome

    def _publish(self, t: _Thread, until: float) -> None:
        """Publish ``until`` (monotonic seconds): from then on a successor may take the place over
        while it is kept between transactions; the owner resumes without a system call only
        until ``MARGIN_S`` before it."""
        self._u64[t.until_i] = int(until * 1e9)
        t.safe = until - MARGIN_S

    def _resume_slow(self, t: _Thread, turn_s: float) -> bool:
        """:meth:`resume` when the clock cannot prove that nobody took the place over (its
        ``until`` is near or past): decide under ``META``, the lock a successor takes to take a
        place over. ``busy`` is already 1. True: the place is still ours (a new turn if nobody
        waits); False: it was taken over, or the turn is over and others wait (then it is handed
        on now), and the caller queues afresh."""
        fd, ticket = t.fd, t.ticket
        if not self._meta_lock(fd, time.monotonic() + 1.0):  # META is held for microseconds only
            self._finish(ticket, fd, _DONE)  # cannot tell: end the place (a taker ignores it)
            return False
        try:
            taken = self._u32[(t.offset + _TAKEN) // 4]
            if not taken:
                now = time.monotonic()
                waiting = _U64.unpack_from(self._map, _NEXT)[0] > ticket + 1  # type: ignore[arg-type]
                if now < t.turn_end or not waiting:
                    if now >= t.turn_end:  # nobody waits: a new turn
                        t.turn_end = now + t.turn_max
                        if t.round_s > 0:
                            t.solo_start = now
                    self._publish(t, t.turn_end)
                    return True
        finally:
            _unlock(fd, _META)
        if taken:
            with self._lock:
                self.counters["places_lost"] += 1
        self._finish(ticket, fd, _DONE)  # taken over (its taker ignores this entry now), or handed on
        return False

    def _finish(self, ticket: int, fd: int, state: int | None) -> None:
        """End a ticket: set ``state`` (if given), wake its successor, unlock its byte, give the
        descriptor back."""
        if state is not None:
            self._set_state(ticket, state)
        assert self._map is not None
        if _U64.unpack_from(self._map, _NEXT)[0] > ticket + 1:
            # somebody queued behind: wake it. (Nobody seen: a waiter that reads the state just
            # before this write finds it changed when the futex call compares it, or at worst at
            # its next liveness check, after this byte is unlocked.)
            self._wake(ticket)
        _unlock(fd, _SLOT_BYTE + ticket % SLOTS)
        self._give_back(fd)

    def _give_up_place(self, t: _Thread) -> bool:
        """End the place ``t`` keeps, if it still keeps one (from another thread: close, or a
        thread that has ended); True if it did."""
        try:
            t.keep.pop()
        except IndexError:
            return False
        self._finish(t.ticket, t.fd, _DONE)
        return True

    def _sweep_ended_threads(self) -> None:
        """End the places kept by threads that have ended (a live thread ends its own at its next
        write, or a successor takes it over once its ``until`` has passed) and give their
        descriptors back."""
        with self._lock:
            ended = [t for t in self._threads if not t.thread.is_alive()]
            if not ended:
                return
            self._threads = [t for t in self._threads if t.thread.is_alive()]
        for t in ended:
            self._give_up_place(t)

    def release(self, *, linger_s: float = 0.0) -> None:
        """Release one level; the last one hands the turn to the next ticket — or, with
        ``linger_s`` > 0 while the turn lasts (or nobody waits), keeps the place: its byte stays
        locked and its entry says it is between transactions, so that this thread's next write
        resumes without a hand-off, while a waiter may take the place over once ``linger_s``
        has passed (or, when nobody waited, once the turn is over)."""
        t = getattr(self._local, "t", None)
        if t is None or t.depth <= 0:
            raise RuntimeError(f"{self.path}: release() without acquire() on this thread")
        self.release_for(t, linger_s)

    def release_for(self, t: _Thread, linger_s: float = 0.0) -> None:
        """:meth:`release` for ``t`` = :meth:`this_thread`, which holds the gate (``t.depth`` > 0)."""
        t.depth -= 1
        if t.depth:
            return
        if linger_s > 0 and _FUTEX is not None and not self._closing:
            since = t.since
            if since:  # a turn holds at least MIN_TURN_TRANSACTIONS transactions as long as the first,
                # but never more than turn_s (a first transaction slowed by preemption must not
                # make a long turn)
                t.since = 0.0
                stretch = min((time.monotonic() - since) * MIN_TURN_TRANSACTIONS, t.turn_max)
                if since + stretch > t.turn_end:
                    t.turn_end = since + stretch
                    self._publish(t, t.turn_end)
            if self._u64[1] > t.ticket + 1:  # others wait (the ticket counter is the table's second word)
                now = time.monotonic()
                if t.solo_start:
                    # the turn began with nobody waiting (a whole turn_s): now that others queue,
                    # it is cut to its share of a round, as if they had been waiting at its start
                    # (a writer that came first must not run a whole turn_s ahead of the queue)
                    share = t.round_s / (self._u64[1] - t.ticket - 1)
                    t.solo_start = 0.0
                    if now + share < t.turn_end:
                        t.turn_end = now + share
                        self._publish(t, t.turn_end)
                        self._wake(t.ticket)  # our successor sleeps to the old (later) end of the turn
                if now >= t.turn_end:
                    self._finish(t.ticket, t.fd, _DONE)  # the turn is over: hand it on
                    return
                until = now + linger_s
                self._publish(t, until if until < t.turn_end else t.turn_end)
            # (nobody waits: no clock needed; the place is kept, and may be taken over by a
            # newcomer once the turn's `until` has passed)
            self._u32[t.busy_i] = 0  # between transactions: a successor may take over after until
            t.keep.append(1)
            return
        self._finish(t.ticket, t.fd, _DONE)

    def close(self) -> None:
        """The last store using this gate in this process has closed: end the places kept by this
        process's threads, close every descriptor (those in use when their holders release) and
        unmap the table. A later :func:`gate_for` of the same file starts a new gate."""
        with _gates_lock:
            if _gates.get(self.db_path) is self:
                del _gates[self.db_path]
        with self._lock:
            self._closing = True
            threads = list(self._threads)
        for t in threads:
            self._give_up_place(t)
        with self._lock:
            fds, self._fds = self._fds, []
            helpers, self._helpers = self._helpers, []
            out = self._out
        for fd in fds:
            os.close(fd)
        for helper in helpers:
            helper.retire()
        if out <= 0:
            self._unmap()

    # -- introspection ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The table's state as this process sees it (no locks taken): for health and tests."""
        out: dict[str, Any] = {"path": self.path, "locks": "ofd" if _OFD else "posix",
                               "wait": "futex" if _FUTEX is not None else "helper thread",
                               "available": self._opened and self.unavailable is None}
        if self.unavailable:
            out["unavailable"] = self.unavailable
        if self._map is not None:
            out["next_ticket"] = _U64.unpack_from(self._map, _NEXT)[0]
        with self._lock:
            out.update(self.counters)
            out["idle_descriptors"] = len(self._fds)
        return out

    def _after_fork_in_child(self) -> None:
        fds = self._fds
        old_map = self._map
        users = self._users  # the stores the child inherited still close
        self._lock = threading.Lock()
        self._reset_process_state()
        self._users = users
        for fd in fds:  # shared descriptions: closing the child's copies releases nothing
            try:
                os.close(fd)
            except OSError:
                pass
        # the old mapping is left to the garbage collector (a ctypes view may still pin it)
        del old_map


_gates: dict[str, Gate] = {}
_gates_lock = threading.Lock()


def gate_for(db_path: str) -> Gate:
    """The process-wide :class:`Gate` of ``db_path`` (a real path): one per file per process,
    shared by its stores; each user gives it back with :func:`release_gate`."""
    reset_gates_after_fork()  # a no-op unless this is a forked child whose stores all were closed
    with _gates_lock:
        gate = _gates.get(db_path)
        if gate is None:
            gate = _gates[db_path] = Gate(db_path)
        gate._users += 1
        return gate


def release_gate(gate: Gate) -> None:
    """A store using ``gate`` has closed; the last one closes the gate (:meth:`Gate.close`), so
    no descriptor of the sidecar stays open in this process once no store uses the file."""
    with _gates_lock:
        gate._users -= 1
        last = gate._users <= 0
    if last:
        gate.close()


_reset_in_pid = os.getpid()


def reset_gates_after_fork() -> None:
    """In a forked child: drop every gate's process state (descriptors, locks, helper threads:
    the parent's). Called by the plugin's ``on_fork_child`` (once per store; the first call in
    each process does the work)."""
    global _gates_lock, _reset_in_pid
    if _reset_in_pid == os.getpid():
        return
    _reset_in_pid = os.getpid()
    _gates_lock = threading.Lock()
    for gate in _gates.values():
        gate._after_fork_in_child()
