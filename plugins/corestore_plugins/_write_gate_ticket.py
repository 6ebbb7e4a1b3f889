"""The cross-process ticket gate behind the ``write_gate`` plugin: FIFO admission to one database's
write lock for every thread of every process, with explicit hand-off and no polling.

Why tickets: neither ``flock`` nor fcntl record locks queue their waiters in order, and a process
that releases such a lock can take it straight back before any waiter runs. The gate therefore
hands the turn over explicitly, like a CLH queue lock built from fcntl byte-range locks:

* The sidecar ``<db>.corestore-gate`` holds a small table, mapped into every process: a ticket
  counter ``next`` and one 32-byte entry per slot (``ticket``, ``state``, ``pid``, a time in
  monotonic nanoseconds: when a kept place's linger or a holder's turn ends). Beside the
  data, fcntl locks on single bytes far beyond the table are used as signals: byte ``META``
  guards the counter (held for microseconds), byte ``SLOT + (ticket mod SLOTS)`` is held by the
  ticket's owner from the moment it takes the ticket until it releases the gate, gives up or
  keeps its place between transactions (see turns).
* **Taking a ticket** (under ``META``): lock the own slot byte, write the entry
  (``ticket, WAITING, pid``), then publish ``next = ticket + 1``. If the predecessor's entry says
  ``DONE`` the gate is ours at once (the uncontended path: three fcntl calls).
* **Waiting** for the turn, on Linux: sleep on a futex on the state word of the predecessor
  ``ticket - 1`` (a kernel wait, no polling). Its release writes ``DONE`` and wakes exactly this
  waiter: one context switch per hand-off. A crashed process wakes nobody, but the kernel drops
  its fcntl locks: after a sleep that changed nothing (``LIVENESS_S``, 5 ms, at most) the waiter
  try-locks the predecessor's byte; if that succeeds the predecessor is gone, and its entry says
  what it was: ``HOLDING`` (died holding: the turn is ours), ``WAITING`` (died waiting) or
  ``ABANDONED`` (gave up: its wait timed out): the turn passes through it, so wait for *its*
  predecessor instead. A queue never stalls on a crashed holder or waiter and never lets two
  tickets in at once.
* **Turns.** A hand-off costs a context switch, as much as a whole ``synchronous=NORMAL``
  transaction, so a holder may keep its place between transactions: a release with ``linger_s``
  writes ``LINGER`` (with the time the linger ends) and unlocks its byte. If the same thread writes
  again it try-locks its byte back and, if its entry still says ``LINGER``, resumes (``RESUMED``:
  two fcntl calls, no hand-off) as long as its turn (``turn_s`` from when the gate became its)
  lasts (at least three transactions like its first), or for ever while nobody waits. A waiter
  takes a kept place over once its linger ends: it
  try-locks the byte (so the owner cannot resume meanwhile), writes ``DONE`` and goes in. Every
  turn ends with a real hand-off when others wait: round-robin, ``turn_s`` at a time.
* **Releasing**: write ``DONE`` into the own entry, wake the successor, unlock the own byte; a
  releaser that wants in again queues behind everybody already waiting.

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

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import platform
import stat
import struct
import sys
import threading
import time
from typing import Any, ClassVar

__all__ = ["Gate", "Outcome", "GATE_SUFFIX", "LIVENESS_S", "SLOTS", "gate_for", "gate_path_for", "open_sidecar"]

logger = logging.getLogger(__name__)

#: The gate's sidecar next to the database.
GATE_SUFFIX = ".corestore-gate"
#: Slots in the ticket table (the longest queue the gate can hold).
SLOTS = 4096

_MAGIC = b"CSGATE\x00\x01"
_NEXT = 8  # offset of the ticket counter (u64)
_HEADER = 64
_ENTRY = struct.Struct("<QIIQ8x")  # ticket, state, pid, linger end (monotonic ns), padding
_ENTRY_SIZE = _ENTRY.size
_SIZE = _HEADER + SLOTS * _ENTRY_SIZE
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_LOCK_BASE = 1 << 30  # lock bytes live far beyond the table: they are signals, not data
_META = _LOCK_BASE
_SLOT_BYTE = _LOCK_BASE + 1

_WAITING, _HOLDING, _DONE, _ABANDONED, _LINGER = 1, 2, 3, 4, 5

_OFD = (sys.platform.startswith("linux") and hasattr(fcntl, "F_OFD_SETLKW") and struct.calcsize("P") == 8
        and not os.environ.get("CORESTORE_GATE_POSIX_LOCKS"))  # tests run the other platforms' path with it
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux
_BUSY_ERRNOS = (errno.EAGAIN, errno.EACCES)
_SETLK = getattr(fcntl, "F_OFD_SETLK", 0)  # used inlined only where turns run (OFD locks)
_MAX_IDLE_HELPERS = 8
#: With futex waits, how often a waiter checks that its predecessor is still alive (a crashed
#: process wakes nobody; the kernel drops its fcntl lock, which the check sees).
LIVENESS_S = 0.005
#: A turn lasts at least as long as this many transactions like its first one: with slow commits
#: (``synchronous=FULL``: an fsync each) a hand-off per commit would cost a wake-up each.
MIN_TURN_TRANSACTIONS = 3


class _Futex:
    """Linux futex wait/wake on a 32-bit word of the shared table (through ``syscall(2)``)."""

    _NUMBERS = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98,
                "ppc64le": 221, "ppc64": 221, "s390x": 238}

    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def __init__(self) -> None:
        number = self._NUMBERS.get(platform.machine().lower())
        if number is None or not _OFD:
            raise OSError(errno.ENOSYS, "no futex on this platform")
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._nr = ctypes.c_long(number)

    def wait(self, address: int, expected: int, timeout: float) -> None:
        """Sleep while the word at ``address`` equals ``expected``, at most ``timeout`` s (returns
        early on a wake, a changed value or a signal: the caller re-reads the word)."""
        ts = self._Timespec(int(timeout), int((timeout % 1.0) * 1e9))
        self._syscall(self._nr, ctypes.c_void_p(address), ctypes.c_int(0), ctypes.c_int(expected),
                      ctypes.byref(ts), ctypes.c_void_p(0), ctypes.c_int(0))

    def wake(self, address: int) -> None:
        self._syscall(self._nr, ctypes.c_void_p(address), ctypes.c_int(1), ctypes.c_int(0x7FFFFFFF),
                      ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_int(0))


def _make_futex() -> "_Futex | None":
    if os.environ.get("CORESTORE_GATE_NO_FUTEX"):  # tests run the helper-thread path with it
        return None
    try:
        return _Futex()
    except (OSError, AttributeError):
        return None


_FUTEX = _make_futex()


class Outcome:
    """What :meth:`Gate.acquire` did: ``HELD`` (the turn was ours at once), ``WAITED`` (after a
    wait), ``RESUMED`` (this thread kept its place and resumed its turn: no hand-off),
    ``REENTERED`` (this thread already held the gate: depth + 1), ``TIMEOUT`` (not ours within
    the timeout: the caller uses SQLite's own lock) or ``UNAVAILABLE`` (no gate: the sidecar is
    not writable or not recognised, or every slot is in use). ``held`` says whether the caller
    now holds the gate. (A plain value class rather than an Enum: it is on every write's path.)"""

    __slots__ = ("value", "held")

    HELD: ClassVar["Outcome"]
    WAITED: ClassVar["Outcome"]
    RESUMED: ClassVar["Outcome"]
    REENTERED: ClassVar["Outcome"]
    TIMEOUT: ClassVar["Outcome"]
    UNAVAILABLE: ClassVar["Outcome"]
    ALL: ClassVar[tuple["Outcome", ...]]

    def __init__(self, value: str, held: bool) -> None:
        self.value = value
        self.held = held

    def __repr__(self) -> str:
        return f"Outcome.{self.value.upper()}"


Outcome.HELD = Outcome("held", True)
Outcome.WAITED = Outcome("waited", True)
Outcome.RESUMED = Outcome("resumed", True)
Outcome.REENTERED = Outcome("reentered", True)
Outcome.TIMEOUT = Outcome("timeout", False)
Outcome.UNAVAILABLE = Outcome("unavailable", False)
Outcome.ALL = (Outcome.HELD, Outcome.WAITED, Outcome.RESUMED, Outcome.REENTERED, Outcome.TIMEOUT, Outcome.UNAVAILABLE)


def gate_path_for(db_path: str) -> str:
    return db_path + GATE_SUFFIX


def open_sidecar(path: str, db_path: str) -> int:
    """Open (creating if needed) the sidecar ``path`` of ``db_path`` for reading and writing.

    ``O_NOFOLLOW`` (a symlink planted in its place is refused), ``O_CLOEXEC``, created with the
    database's permission bits (never more permissive than the database), and refused unless it is
    a regular file other than the database. A small local helper: the hardening work adds a shared
    ``corestore.sidecar`` helper that this should use once merged.
    """
    mode = stat.S_IMODE(os.stat(db_path).st_mode) & 0o666
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        db = os.stat(db_path)
        if (st.st_dev, st.st_ino) == (db.st_dev, db.st_ino):
            raise OSError(errno.EINVAL, "the sidecar is the database itself", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- lock primitives ---------------------------------------------------------------------------
_WRLCK: dict[int, bytes] = {}
_UNLCK: dict[int, bytes] = {}


def _flock(table: dict[int, bytes], kind: int, byte: int) -> bytes:
    """The packed ``struct flock`` for one byte (cached: the hot path locks the same few bytes)."""
    packed = table.get(byte)
    if packed is None:
        packed = table[byte] = _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0)
    return packed


def _try_lock(fd: int, byte: int) -> bool:
    try:
        if _OFD:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _WRLCK.get(byte) or _flock(_WRLCK, fcntl.F_WRLCK, byte))
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte, os.SEEK_SET)
    except OSError as err:
        if err.errno in _BUSY_ERRNOS:
            return False
        raise
    return True


def _wait_lock(fd: int, byte: int) -> None:
    """Block (in the kernel) until the write lock on ``byte`` is ours. Only helper threads call it."""
    if _OFD:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _WRLCK.get(byte) or _flock(_WRLCK, fcntl.F_WRLCK, byte))
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, byte, os.SEEK_SET)


def _unlock(fd: int, byte: int) -> None:
    if _OFD:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _UNLCK.get(byte) or _flock(_UNLCK, fcntl.F_UNLCK, byte))
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte, os.SEEK_SET)


class _Helper:
    """A pooled thread that performs one blocking lock wait at a time for a caller with a deadline."""

    __slots__ = ("gate", "go", "done", "mutex", "fd", "byte", "cancelled", "finished", "error", "thread")

    def __init__(self, gate: "Gate") -> None:
        self.gate = gate
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.mutex = threading.Lock()
        self.fd = -1
        self.byte = 0
        self.cancelled = False
        self.finished = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=f"corestore-write-gate:{os.path.basename(gate.db_path)}",
                                       daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            if self.fd < 0:
                return  # retired
            error: BaseException | None = None
            try:
                _wait_lock(self.fd, self.byte)
            except BaseException as err:  # reported to the caller (or logged if it gave up)
                error = err
            with self.mutex:
                if not self.cancelled:
                    self.error = error
                    self.finished = True
                    self.done.release()
                    continue
            # the caller gave up: finish its orphaned wait and put everything back
            if error is None:
                _unlock(self.fd, self.byte)
            else:
                logger.debug("%s: an abandoned gate wait failed: %s", self.gate.path, error)
            self.gate._orphan_done(self)
            return

    def wait(self, fd: int, byte: int, timeout: float) -> bool:
        """Wait for the lock on ``byte`` through ``fd`` at most ``timeout`` seconds. False: timed
        out, the wait was handed to this helper (which then owns ``fd``) and it leaves the pool."""
        self.fd, self.byte, self.cancelled, self.finished, self.error = fd, byte, False, False, None
        self.go.release()
        if not self.done.acquire(timeout=max(0.0, timeout)):
            with self.mutex:
                if not self.finished:
                    self.cancelled = True
                    return False
            self.done.acquire()  # finished at the same moment: consume the signal
        if self.error is not None:
            raise self.error
        return True

    def retire(self) -> None:
        self.fd = -1
        self.go.release()


class _Thread:
    """One thread's state at one gate: how deep it holds it, its ticket and descriptor, when its
    turn ends, and whether it keeps its place (``kept``: ``LINGER``, its byte unlocked). Only its
    own thread changes it while the thread lives."""

    __slots__ = ("depth", "ticket", "fd", "turn_end", "kept", "thread", "since", "turn_max")

    def __init__(self) -> None:
        self.depth, self.ticket, self.fd, self.turn_end, self.kept = 0, 0, -1, 0.0, False
        self.since = 0.0  # when the current turn's first transaction began (0: measured already)
        self.turn_max = 0.0  # turn_s: the longest a turn may be stretched to
        self.thread = threading.current_thread()


class Gate:
    """The gate of one database file in this process (get it with :func:`gate_for`).

    Re-entrant per thread: a thread that holds it and asks again gets ``REENTERED`` and must
    release as many times as it acquired. Thread-safe; fork-safe (the child starts afresh).
    """

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.path = gate_path_for(db_path)
        self._lock = threading.Lock()
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._opened = False
        self.unavailable: str | None = None
        self._map: mmap.mmap | None = None
        self._anchor: Any = None
        self._base = 0
        self._fds: list[int] = []  # idle descriptors (OFD: one per participant at a time)
        self._helpers: list[_Helper] = []
        self._proc = threading.Lock()  # POSIX record locks: one participant per process
        self._local = threading.local()
        self._threads: list[_Thread] = []  # every thread's state here (for places kept by ended threads)
        self._pid = os.getpid()
        self.counters = {"skipped_dead": 0, "skipped_abandoned": 0, "dead_holders": 0, "queue_full": 0,
                         "orphaned_waits": 0, "taken_over": 0}

    # -- opening -----------------------------------------------------------------------------
    def _open(self) -> bool:
        with self._lock:
            if self._opened:
                return self.unavailable is None
            self._opened = True
            try:
                fd = open_sidecar(self.path, self.db_path)
            except OSError as err:
                self.unavailable = f"cannot open {self.path} for writing: {err.strerror or err}"
                logger.info("%s: write gate unavailable (%s); writers use SQLite's own lock", self.db_path, self.unavailable)
                return False
            try:
                why = self._initialise(fd)
            except OSError as err:
                why = f"{self.path}: {err.strerror or err}"
            if why is not None:
                os.close(fd)
                self.unavailable = why
                logger.warning("%s: write gate unavailable (%s); writers use SQLite's own lock", self.db_path, why)
                return False
            self._fds.append(fd)
            return True

    def _initialise(self, fd: int) -> str | None:
        deadline = time.monotonic() + 5.0
        if not self._meta_lock(fd, deadline):
            return "the gate's table lock was not free within 5 s"
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                os.ftruncate(fd, _SIZE)
                os.pwrite(fd, _MAGIC, 0)
            elif size != _SIZE or os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                return f"{self.path} is not a corestore gate of this version (size {size}); it is left alone"
            self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if _FUTEX is not None:
                self._anchor = ctypes.c_char.from_buffer(self._map)  # keeps the mapping's address
                self._base = ctypes.addressof(self._anchor)
        finally:
            _unlock(fd, _META)
        return None

    def _take_fd(self) -> int:
        with self._lock:
            if self._fds:
                return self._fds.pop()
        self._sweep_ended_threads()
        with self._lock:
            if self._fds:
                return self._fds.pop()
        return open_sidecar(self.path, self.db_path)

    def _give_fd(self, fd: int) -> None:
        with self._lock:
            self._fds.append(fd)

    # -- the table -------------------------------------------------------------------------------
    def _offset(self, ticket: int) -> int:
        return _HEADER + (ticket % SLOTS) * _ENTRY.size

    def _set_entry(self, ticket: int, state: int, until_ns: int = 0) -> None:
        assert self._map is not None
        _ENTRY.pack_into(self._map, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE, ticket, state, self._pid, until_ns)

    def _set_state(self, ticket: int, state: int) -> None:
        assert self._map is not None
        _U32.pack_into(self._map, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE + 8, state)

    def _state_address(self, ticket: int) -> int:
        return self._base + self._offset(ticket) + 8

    def _state(self, ticket: int) -> tuple[int, int, int]:
        """(owner ticket, state, until_ns) of ``ticket``'s slot."""
        assert self._map is not None
        owner, state, _pid, until = _ENTRY.unpack_from(self._map, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE)
        return owner, state, until

    def _wake(self, ticket: int) -> None:
        if _FUTEX is not None:
            _FUTEX.wake(self._state_address(ticket))

    def _meta_lock(self, fd: int, deadline: float) -> bool:
        """``META`` is held for a few memory writes only: non-blocking attempts, yielding the CPU
        between them, until ``deadline``."""
        spins = 0
        while not _try_lock(fd, _META):
            if time.monotonic() >= deadline:
                return False
            spins += 1
            if spins < 64:
                os.sched_yield() if hasattr(os, "sched_yield") else time.sleep(0)
            else:
                time.sleep(0.0002)
        return True

    # -- acquire / release -------------------------------------------------------------------------
    def _thread_state(self) -> _Thread:
        t = self._local.t = _Thread()
        with self._lock:
            self._threads.append(t)
        return t

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
        if t.kept and self._resume(t, turn_s):
            t.depth = 1
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
            t.turn_max = turn_s
            if turn_s > 0 and round_s > 0:  # share a round among those waiting behind
                waiting = _U64.unpack_from(self._map, _NEXT)[0] - ticket - 1  # type: ignore[arg-type]
                turn_s = min(turn_s, round_s / waiting) if waiting > 0 else turn_s
            now = time.monotonic()
            turn_end = now + turn_s
            t.turn_end = turn_end
            t.since = now if turn_s > 0 else 0.0
            self._set_entry(ticket, _HOLDING, int(turn_end * 1e9) if turn_s > 0 else 0)
        return outcome

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

    def _resume(self, t: _Thread, turn_s: float) -> bool:
        """This thread kept its place (``LINGER``, its byte unlocked) and writes again: take its
        byte back; if nobody took the place over meanwhile and its turn lasts (or nobody waits:
        then a new turn starts), the gate is its again without a hand-off. Else finish the release
        (and the caller queues afresh)."""
        t.kept = False
        ticket, fd = t.ticket, t.fd
        byte = _SLOT_BYTE + ticket % SLOTS
        try:  # _try_lock, inlined: this is every resumed write's path
            fcntl.fcntl(fd, _SETLK, _WRLCK.get(byte) or _flock(_WRLCK, fcntl.F_WRLCK, byte))
        except OSError as err:
            if err.errno not in _BUSY_ERRNOS:
                raise
            self._give_back(fd)  # a successor is taking it over right now (or the slot moved on)
            return False
        m = self._map
        offset = _HEADER + (ticket % SLOTS) * _ENTRY_SIZE
        owner, state, _pid, _until = _ENTRY.unpack_from(m, offset)  # type: ignore[arg-type]
        if owner == ticket and state == _LINGER:
            now = time.monotonic()
            if now < t.turn_end or _U64.unpack_from(m, _NEXT)[0] <= ticket + 1:  # type: ignore[arg-type]
                if now >= t.turn_end:  # nobody waits: a new turn
                    t.turn_end = now + turn_s
                _ENTRY.pack_into(m, offset, ticket, _HOLDING, self._pid, int(t.turn_end * 1e9))  # type: ignore[arg-type]
                return True
            self._finish(ticket, fd, _DONE)  # the turn is over and others wait: hand it on
            return False
        _unlock(fd, byte)  # taken over (DONE) or the slot moved on
        self._give_back(fd)
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

    def _sweep_ended_threads(self) -> None:
        """Give back the descriptors of places kept by threads that have ended (a live thread
        finishes its own at its next write). The place itself needs nothing: its byte is already
        unlocked, and a successor takes it over when its linger ends."""
        with self._lock:
            ended = [t for t in self._threads if not t.thread.is_alive()]
            if not ended:
                return
            self._threads = [t for t in self._threads if t.thread.is_alive()]
        for t in ended:
            if t.kept:
                t.kept = False
                self._give_back(t.fd)

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

    def release(self, *, linger_s: float = 0.0) -> None:
        """Release one level; the last one hands the turn to the next ticket — or, with
        ``linger_s`` > 0 while the turn lasts (or nobody waits), keeps the place: ``LINGER`` until
        ``linger_s`` from now, the byte unlocked, so that this thread's next write resumes without
        a hand-off while a waiter may take the place over once the linger ends."""
        t = getattr(self._local, "t", None)
        if t is None or t.depth <= 0:
            raise RuntimeError(f"{self.path}: release() without acquire() on this thread")
        t.depth -= 1
        if t.depth:
            return
        ticket, fd = t.ticket, t.fd
        if linger_s > 0 and _FUTEX is not None:
            m = self._map
            now = time.monotonic()
            if t.since:  # a turn holds at least MIN_TURN_TRANSACTIONS transactions as long as the first,
                # but never more than turn_s (a first transaction slowed by preemption must not
                # make a long turn)
                stretch = min((now - t.since) * MIN_TURN_TRANSACTIONS, t.turn_max)
                t.turn_end = max(t.turn_end, t.since + stretch)
                t.since = 0.0
            waiters = _U64.unpack_from(m, _NEXT)[0] > ticket + 1  # type: ignore[arg-type]
            if not waiters or now < t.turn_end:
                until = min(t.turn_end, now + linger_s) if waiters else now + linger_s
                _ENTRY.pack_into(m, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE,  # type: ignore[arg-type]
                                 ticket, _LINGER, self._pid, int(until * 1e9))
                t.kept = True
                byte = _SLOT_BYTE + ticket % SLOTS  # unlocked (inlined _unlock): a successor may take over
                fcntl.fcntl(fd, _SETLK, _UNLCK.get(byte) or _flock(_UNLCK, fcntl.F_UNLCK, byte))
                return
        self._finish(ticket, fd, _DONE)

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
        self._lock = threading.Lock()
        self._reset_process_state()
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
    """The process-wide :class:`Gate` of ``db_path`` (a real path): one per file per process."""
    with _gates_lock:
        gate = _gates.get(db_path)
        if gate is None:
            gate = _gates[db_path] = Gate(db_path)
        return gate


def _reset_after_fork() -> None:
    global _gates_lock
    _gates_lock = threading.Lock()
    for gate in _gates.values():
        gate._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)
