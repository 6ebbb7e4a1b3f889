"""The shared table and the locks behind the write gate (:mod:`corestore_plugins._write_gate_ticket`
runs the queueing protocol over them): the sidecar ``<db>.corestore-gate`` (opened ``O_RDWR |
O_NOFOLLOW | O_CLOEXEC``, a mode no more permissive than the database's), its layout (a ticket
counter and ``SLOTS`` 32-byte entries: ticket, state, pid, a time in monotonic nanoseconds), the
fcntl byte locks used as signals (OFD locks on 64-bit Linux, POSIX record locks elsewhere), the
futex wait/wake on an entry's state word (Linux), the helper threads that bound a blocking fcntl
wait where there is no futex, and :class:`GateTable`, one process's view of one sidecar.

An entry is 32 bytes: ``ticket`` (u64), ``state`` (u32: the futex word; it changes only when the
ticket is queued, admitted, ended or given up), ``pid`` (u32), ``until`` (u64, monotonic ns: for a
holder, from when a successor may take its place over *if* it is between transactions), ``busy``
(u32: 1 while the holder is inside a transaction, written by the holder on every one) and
``taken`` (u32: set, under ``META``, by the successor that took a kept place over; read by the
holder when it cannot prove by the clock that nobody could have).
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
from typing import TYPE_CHECKING, Any, ClassVar

__all__ = ["GateTable", "Outcome", "GATE_SUFFIX", "LIVENESS_S", "SLOTS", "gate_path_for", "open_sidecar"]

logger = logging.getLogger("corestore_plugins._write_gate_ticket")  # one channel for the gate

#: The gate's sidecar next to the database.
GATE_SUFFIX = ".corestore-gate"
#: Slots in the ticket table (the longest queue the gate can hold).
SLOTS = 4096

_MAGIC = b"CSGATE\x00\x02"  # 2: busy/taken words, the holder's byte locked for its whole turn
_NEXT = 8  # offset of the ticket counter (u64)
_HEADER = 64
_ENTRY = struct.Struct("<QIIQII")  # ticket, state, pid, until (monotonic ns), busy, taken
_ENTRY_SIZE = _ENTRY.size
_SIZE = _HEADER + SLOTS * _ENTRY_SIZE
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_UNTIL_BUSY_TAKEN = struct.Struct("<QII")  # an entry after its pid (offset + 16): until, busy, taken
_STATE = 8  # offsets inside an entry
_UNTIL = 16
_BUSY = 24
_TAKEN = 28
_LOCK_BASE = 1 << 30  # lock bytes live far beyond the table: they are signals, not data
_META = _LOCK_BASE
_SLOT_BYTE = _LOCK_BASE + 1

_WAITING, _HOLDING, _DONE, _ABANDONED = 1, 2, 3, 4

_OFD = (sys.platform.startswith("linux") and hasattr(fcntl, "F_OFD_SETLKW") and struct.calcsize("P") == 8
        and not os.environ.get("CORESTORE_GATE_POSIX_LOCKS"))  # tests run the other platforms' path with it
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux
_BUSY_ERRNOS = (errno.EAGAIN, errno.EACCES)
_SETLK = getattr(fcntl, "F_OFD_SETLK", 0)  # used inlined only where turns run (OFD locks)
_MAX_IDLE_HELPERS = 8
#: With futex waits, how often a waiter checks that its predecessor is still alive (a crashed
#: process wakes nobody; the kernel drops its fcntl lock, which the check sees).
LIVENESS_S = 0.005
#: A holder resumes its kept place without a system call only while the clock shows it is at
#: least this far before the moment a successor may take the place over (see ``Gate.resume``).
MARGIN_S = 0.00005
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


def _make_futex() -> _Futex | None:
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

    HELD: ClassVar[Outcome]
    WAITED: ClassVar[Outcome]
    RESUMED: ClassVar[Outcome]
    REENTERED: ClassVar[Outcome]
    TIMEOUT: ClassVar[Outcome]
    UNAVAILABLE: ClassVar[Outcome]
    ALL: ClassVar[tuple[Outcome, ...]]

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

    def __init__(self, gate: GateTable) -> None:
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
    turn ends, and whether it keeps its place between transactions (``keep``: a one-item list
    while it does; the thread's byte stays locked). ``keep`` is a list so that taking the place
    back is one atomic ``pop`` under the GIL: the owner resuming and :meth:`GateTable.close`
    giving the place up never both win. Otherwise only its own thread changes it."""

    __slots__ = ("depth", "ticket", "fd", "turn_end", "keep", "thread", "since", "turn_max", "offset", "safe",
                 "busy_i", "until_i", "u32", "u64", "round_s", "solo_start")

    def __init__(self) -> None:
        self.depth, self.ticket, self.fd, self.turn_end = 0, 0, -1, 0.0
        self.keep: list[int] = []
        self.since = 0.0  # when the current turn's first transaction began (0: measured already)
        self.turn_max = 0.0  # turn_s: the longest a turn may be stretched to
        self.offset = 0  # the ticket's entry in the table
        self.safe = 0.0  # resume without a system call while time.monotonic() is below this
        self.busy_i = 0  # the entry's busy word, as an index into the table's u32 view
        self.until_i = 0  # the entry's until word, as an index into the table's u64 view
        self.u32: Any = None  # the table's u32 and u64 views (the fast path's handles; see Gate.resume)
        self.u64: Any = None
        self.round_s = 0.0  # round_s: a round of turns is shared among the writers waiting
        #: when a turn began with nobody waiting (0: it began with others waiting): once others
        #: queue, it is cut to its share of a round from then (see Gate.release_for)
        self.solo_start = 0.0
        self.thread = threading.current_thread()

    @property
    def kept(self) -> bool:
        return bool(self.keep)


class GateTable:
    """One process's view of one gate sidecar: its descriptors (a pool), the shared mapping and
    the per-thread states; the entries of the table and the ``META`` lock. :class:`Gate` adds the
    queue on top."""

    if TYPE_CHECKING:  # supplied by the subclass (Gate, in _write_gate_ticket)
        def _orphan_done(self, helper: _Helper) -> None: ...
        def _sweep_ended_threads(self) -> None: ...

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.path = gate_path_for(db_path)
        self._lock = threading.Lock()
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._opened = False
        self.unavailable: str | None = None
        self._map: mmap.mmap | None = None
        self._u32: Any = None  # memoryview casts of the mapping: a word read or written without struct
        self._u64: Any = None
        self._anchor: Any = None
        self._users = 0  # stores using this gate in this process (gate_for / release_gate)
        self._out = 0  # descriptors taken from the pool and not given back yet
        self._closing = False
        self._base = 0
        self._fds: list[int] = []  # idle descriptors (OFD: one per participant at a time)
        self._helpers: list[_Helper] = []
        self._proc = threading.Lock()  # POSIX record locks: one participant per process
        self._local = threading.local()
        self._threads: list[_Thread] = []  # every thread's state here (for places kept by ended threads)
        self._pid = os.getpid()
        self.counters = {"skipped_dead": 0, "skipped_abandoned": 0, "dead_holders": 0, "queue_full": 0,
                         "orphaned_waits": 0, "taken_over": 0, "places_lost": 0}

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
            self._u32 = memoryview(self._map).cast("I")
            self._u64 = memoryview(self._map).cast("Q")
            if _FUTEX is not None:
                self._anchor = ctypes.c_char.from_buffer(self._map)  # keeps the mapping's address
                self._base = ctypes.addressof(self._anchor)
        finally:
            _unlock(fd, _META)
        return None

    def _take_fd(self) -> int:
        with self._lock:
            if self._fds:
                self._out += 1
                return self._fds.pop()
        self._sweep_ended_threads()
        with self._lock:
            if self._fds:
                self._out += 1
                return self._fds.pop()
        fd = open_sidecar(self.path, self.db_path)
        with self._lock:
            self._out += 1
        return fd

    def _give_fd(self, fd: int) -> None:
        with self._lock:
            self._out -= 1
            if not self._closing:
                self._fds.append(fd)
                return
            last = self._out <= 0
        os.close(fd)  # closed: the last store using the gate in this process has closed it
        if last:
            self._unmap()

    def _unmap(self) -> None:
        """Drop the mapping (after :meth:`close`, once no descriptor is out)."""
        with self._lock:
            old, u32, u64, self._map, self._u32, self._u64 = self._map, self._u32, self._u64, None, None, None
            self._anchor = None
            self._base = 0
        for view in (u32, u64):
            if view is not None:
                view.release()
        if old is not None:
            try:
                old.close()
            except BufferError:  # a ctypes view still pins it: the garbage collector unmaps it
                logger.debug("%s: gate mapping still referenced at close", self.path)

    # -- the table -------------------------------------------------------------------------------
    def _offset(self, ticket: int) -> int:
        return _HEADER + (ticket % SLOTS) * _ENTRY.size

    def _set_entry(self, ticket: int, state: int, until_ns: int = 0, busy: int = 0) -> None:
        """Write ``ticket``'s entry; the state word last (it is what waiters act on)."""
        assert self._map is not None
        offset = _HEADER + (ticket % SLOTS) * _ENTRY_SIZE
        _U64.pack_into(self._map, offset, ticket)
        _U32.pack_into(self._map, offset + 12, self._pid)
        _UNTIL_BUSY_TAKEN.pack_into(self._map, offset + _UNTIL, until_ns, busy, 0)
        _U32.pack_into(self._map, offset + _STATE, state)

    def _set_state(self, ticket: int, state: int) -> None:
        assert self._map is not None
        _U32.pack_into(self._map, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE + 8, state)

    def _state_address(self, ticket: int) -> int:
        return self._base + self._offset(ticket) + 8

    def _state(self, ticket: int) -> tuple[int, int, int]:
        """(owner ticket, state, until_ns) of ``ticket``'s slot."""
        assert self._map is not None
        owner, state, _pid, until, _busy, _taken = _ENTRY.unpack_from(self._map, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE)
        return owner, state, until

    def _entry(self, ticket: int) -> tuple[int, int, int, int, int, int]:
        """(owner ticket, state, pid, until_ns, busy, taken) of ``ticket``'s slot."""
        assert self._map is not None
        return _ENTRY.unpack_from(self._map, _HEADER + (ticket % SLOTS) * _ENTRY_SIZE)

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
