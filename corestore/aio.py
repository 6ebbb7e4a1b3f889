"""The asyncio front door: ``await store.arun(fn)`` and friends, never blocking the event loop.

Every unit of work runs, whole, on a bounded per-store executor (:class:`Executor`) with every
policy and retry of ``store.run()``. The event loop only admits the unit (a counter under a lock),
hands it to a worker thread and is woken when it ends. Nothing here does I/O on the loop.

Cancellation tells the truth (see ``site/concepts/asyncio.md`` for the table):

* cancelled before a worker picked the unit up: it never runs (outcome ``not_started``);
* cancelled while it runs: a flag (set under the unit's lock) is checked when each attempt starts
  and before each statement, and the running statement is interrupted by a progress handler on
  the worker's own connection, which aborts a statement only while the unit is running. The last
  check, under the same lock, happens before COMMIT and ends the window: the handler is removed
  and nothing interrupts the unit any more, so an interrupt can never race into COMMIT. The unit
  either stops before COMMIT (``not_committed``: rolled back) or finishes (``committed``); an
  error from COMMIT itself leaves ``unknown``. Nothing is retried after COMMIT (``run()``'s rule).

  Not ``sqlite3_interrupt()`` from the loop: it does nothing while no statement runs, and while
  another statement of the connection is still pending (a cursor not read to its end) its flag
  stays set and aborts the ROLLBACK too, leaving the connection inside its transaction with the
  write lock held. The progress handler aborts one statement, once, and never a ROLLBACK.

The outcome is logged, counted (``store.stats()["asyncio"]``) and carried by the
``CancelledError`` the cancelled caller receives (after the unit ended).
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import queue as queues
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BusyError, Classification, ConfigError, ErrorKind, StoreClosedError, StoreError
from .transaction import run

if TYPE_CHECKING:  # pragma: no cover
    from .health import HealthReport
    from .store import Store

__all__ = ["UnitCancelled", "Executor", "DEFAULT_THREADS", "DEFAULT_QUEUE", "arun", "aopen", "aclose", "ahealth",
           "configure", "aio_stats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Worker threads per store (each holds at most one connection: this also bounds connections).
DEFAULT_THREADS = 8
#: Units admitted beyond the running ones (waiting for a worker); beyond that ``arun`` waits.
DEFAULT_QUEUE = 256

_QUEUED, _RUNNING, _COMMITTING, _DONE = range(4)
_COUNTERS = ("calls", "rejected_busy", "cancelled_not_started", "cancelled_not_committed", "cancelled_committed",
             "cancelled_unknown")
_lock = threading.Lock()  # creating a store's executor


def _progress_handler(conn: Any, handler: Callable[[], int] | None) -> None:
    """Install (or with None remove) ``handler`` on ``conn``, called every 1000 VM steps."""
    if hasattr(conn, "set_progress_handler"):  # sqlite3; apsw >= 3.42 too
        conn.set_progress_handler(handler, 1000)
    else:  # pragma: no cover - older apsw
        conn.setprogresshandler(handler, 1000)


class UnitCancelled(Exception):
    """Raised on the worker thread inside a cancelled ``arun`` unit, before a statement or
    before COMMIT: the transaction rolls back and ``run()`` does not retry it. The caller never
    sees it (it gets ``asyncio.CancelledError``)."""


class _Job:
    """One unit on its way through the executor; also its cancellation gate (``run(gate=)``)."""

    __slots__ = ("store", "call", "label", "deadline", "lock", "state", "cancel_requested", "conn", "fut", "ended",
                 "loop", "result", "error", "outcome", "delivered", "gated", "fired")

    def __init__(self, store: Store, call: Callable[[_Job], Any], label: str, deadline: float | None,
                 loop: asyncio.AbstractEventLoop, gated: bool) -> None:
        self.store = store
        self.call = call
        self.label = label
        self.deadline = deadline
        self.lock = threading.Lock()
        self.state = _QUEUED
        self.cancel_requested = False
        self.conn: Any = None
        self.loop = loop
        self.fut: asyncio.Future[Any] = loop.create_future()
        self.ended: asyncio.Future[None] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.outcome = ""
        self.delivered = False
        self.gated = gated
        self.fired = False  # the progress handler stopped a statement (it does so once)

    # -- the gate (worker thread, called by transaction.run and database.execute_sql) ----------
    def start(self, txn: Any) -> None:
        with self.lock:
            if self.cancel_requested:
                self.fired = True
                raise UnitCancelled(f"{self.store.path}: arun unit {self.label} was cancelled before it started")
            self.conn = txn.record.conn
            txn.gate = self
        _progress_handler(self.conn, self.progress)

    def check(self) -> None:
        if self.cancel_requested:
            self.fired = True  # the handler must not abort the ROLLBACK that follows
            raise UnitCancelled(f"{self.store.path}: arun unit {self.label} was cancelled; stopped before a statement")

    def progress(self) -> int:
        """SQLite's progress handler (worker thread, inside a statement): non-zero aborts the
        statement (``SQLITE_INTERRUPT``); only while running, and only once."""
        if self.cancel_requested and not self.fired and self.state == _RUNNING:
            self.fired = True
            return 1
        return 0

    def commit(self) -> None:
        with self.lock:  # the last point at which the unit can be stopped: after it, no interrupt
            if self.cancel_requested:
                self.fired = True
                raise UnitCancelled(f"{self.store.path}: arun unit {self.label} was cancelled; stopped before COMMIT")
            self.state = _COMMITTING
        self.unhook()

    def unhook(self) -> None:
        """Remove the progress handler from the worker's connection (worker thread)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                _progress_handler(conn, None)
            except Exception:  # closed at release (stale generation): nothing to remove
                logger.debug("%s: removing the progress handler failed", self.store.path, exc_info=True)

    # -- the loop side ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the unit to stop: a queued one never starts; a running one stops at its next
        statement (the running one is aborted by the progress handler) or, once COMMIT was
        reached, finishes."""
        with self.lock:
            self.cancel_requested = True

    def deliver(self) -> None:
        """On the loop: hand the result to the caller (unless it was cancelled) and wake a
        cancelled caller waiting for the unit to end."""
        self.delivered = True
        if not self.fut.done():
            if self.error is not None:
                self.fut.set_exception(self.error)
            else:
                self.fut.set_result(self.result)
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def settle(self, executor: Executor) -> None:
        """On the worker, after the unit: the outcome of a cancelled unit, logged and counted."""
        self.unhook()
        with self.lock:
            self.state = _DONE
            if not self.cancel_requested or self.outcome:
                return
        self.record_outcome(executor)

    def record_outcome(self, executor: Executor) -> None:
        """The outcome of a unit that was cancelled while it ran (or just as it ended), from how it
        ended; logged and counted once."""
        err = self.error
        if not self.gated:  # not a unit of work (ahealth): nothing was committed or not
            self.outcome = "completed"
            return
        if err is None or (isinstance(err, StoreError) and err.committed is True):
            self.outcome = "committed"
        elif isinstance(err, StoreError) and err.committed is None:
            self.outcome = "unknown"
        else:
            self.outcome = "not_committed"
        executor.count("cancelled_" + self.outcome)
        logger.info("%s: arun unit %s was cancelled while running; outcome: %s", self.store.path, self.label,
                    self.outcome)


class Executor:
    """A store's bounded executor: at most ``threads`` worker threads (started on demand, each
    with its own connection) and at most ``queue`` units waiting for one. Admission beyond that
    waits asynchronously, up to the unit's deadline, then raises :class:`BusyError`."""

    def __init__(self, store: Store, threads: int = DEFAULT_THREADS, queue: int = DEFAULT_QUEUE) -> None:
        for key, value, low in (("threads", threads, 1), ("queue", queue, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{store.path}: asyncio executor {key} = {value!r} must be an integer >= {low}")
        self.store_path = store.path
        self.threads = threads
        self.queue = queue
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._jobs: queues.SimpleQueue[_Job | None] = queues.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._admitted = 0  # running + waiting for a worker
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = collections.deque()
        self._shut = False
        self._counters = dict.fromkeys(_COUNTERS, 0)

    def count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._counters)
            out.update(threads=self.threads, queue=self.queue, workers=len(self._workers), admitted=self._admitted,
                       waiting=len(self._waiters))
        return out

    async def admit(self, path: str, until: float, deadline_given: bool) -> None:
        """Take a slot (running or queued), waiting asynchronously until ``until``."""
        with self._lock:
            if self._shut:
                raise StoreClosedError(f"{path}: the store was closed (its asyncio executor is shut down)", path=path)
            self._counters["calls"] += 1
            if self._admitted < self.threads + self.queue and not self._waiters:
                self._admitted += 1
                return
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (loop, waiter)
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, max(0.0, until - time.monotonic()))
        except (TimeoutError, asyncio.CancelledError) as err:
            with self._lock:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass  # a slot is being handed to it: _granted sees the waiter done and passes it on
            if isinstance(err, asyncio.CancelledError):
                raise
            self.count("rejected_busy")
            bound = "its deadline" if deadline_given else "the profile's retry.budget_s (no deadline given)"
            raise BusyError(
                f"{path}: the asyncio executor is full ({self.threads} threads, {self.queue} queued) and no slot freed "
                f"within {bound}; raise the executor's threads/queue or lower the load",
                classification=Classification(kind=ErrorKind.BUSY, name="ASYNC_EXECUTOR_FULL", retryable=False),
                path=path, committed=False,
            ) from None

    def release(self) -> None:
        """A unit ended (worker thread) or was never handed over: pass its slot on."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._admitted -= 1
                    return
                loop, waiter = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(self._granted, waiter)
                return
            except RuntimeError:  # that waiter's loop is closed: the next one gets the slot
                continue

    def _granted(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():  # it gave up (deadline or cancelled) after the slot was handed to it
            self.release()
        else:
            waiter.set_result(None)

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._shut:  # admitted while the store was closing: no worker will take it
                raise StoreClosedError(f"{self.store_path}: the store was closed (its asyncio executor is shut down)",
                                       path=self.store_path)
            if len(self._workers) < self.threads and len(self._workers) < self._admitted:
                worker = threading.Thread(target=self._work, name=f"corestore-aio-{len(self._workers)}", daemon=True)
                self._workers.append(worker)
                worker.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._execute(job)
            finally:
                self.release()
                try:
                    job.loop.call_soon_threadsafe(job.deliver)
                except RuntimeError:
                    logger.info("%s: arun unit %s ended after its event loop closed", self.store_path, job.label)

    def _execute(self, job: _Job) -> None:
        with job.lock:
            if job.cancel_requested:
                job.state = _DONE
                job.outcome = "not_started"
            else:
                job.state = _RUNNING
        if job.outcome:
            self.count("cancelled_not_started")
            logger.info("%s: arun unit %s was cancelled before it started; it never ran", self.store_path, job.label)
            return
        try:
            job.result = job.call(job)
        except BaseException as err:  # handed to the caller; the worker lives on
            job.error = err
        job.settle(self)

    def shutdown(self, timeout: float) -> None:
        """Stop the workers after the units already admitted (blocking; not on the loop)."""
        with self._lock:
            self._shut = True
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)
        end = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, end - time.monotonic()))
            if worker.is_alive():
                logger.warning("%s: asyncio worker %s still runs a unit after %.1f s at close", self.store_path,
                               worker.name, timeout)


def configure(store: Store, *, threads: int | None = None, queue: int | None = None) -> Executor:
    """The store's executor, created with ``threads``/``queue`` (defaults :data:`DEFAULT_THREADS`,
    :data:`DEFAULT_QUEUE`); asking an existing one for other sizes is a :class:`ConfigError`."""
    with _lock:
        ex: Executor | None = store._aio
        if ex is not None and ex.pid != os.getpid():
            ex = None  # a forked child: the parent's worker threads do not exist here
        if ex is None:
            ex = Executor(store, DEFAULT_THREADS if threads is None else threads,
                          DEFAULT_QUEUE if queue is None else queue)
            store._aio = ex
        elif (threads is not None and threads != ex.threads) or (queue is not None and queue != ex.queue):
            raise ConfigError(f"{store.path}: the asyncio executor already runs with threads={ex.threads}, "
                              f"queue={ex.queue}; asked for threads={threads}, queue={queue} (sizes are set once, "
                              "at the first aopen()/arun() of the store in this process)")
        return ex


async def _submit(store: Store, call: Callable[[_Job], T], label: str, deadline_s: float | None, gated: bool) -> T:
    ex = store._aio
    if ex is None or ex.pid != os.getpid():
        ex = configure(store)
    now = time.monotonic()
    until = now + (store.profile.retry.budget_s if deadline_s is None else deadline_s)
    await ex.admit(store.path, until, deadline_s is not None)
    loop = asyncio.get_running_loop()
    job = _Job(store, call, label, None if deadline_s is None else now + deadline_s, loop, gated)
    try:
        ex.submit(job)
    except BaseException:
        ex.release()
        raise
    try:
        return await job.fut  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        if job.delivered:
            raise
        job.cancel()
        job.ended = loop.create_future()
        try:
            await job.ended
        except asyncio.CancelledError:
            logger.info("%s: arun unit %s: cancelled again while waiting for it to end; its outcome goes to the log "
                        "and stats()", store.path, label)
            raise
        if not job.outcome:  # it ended just before the cancellation reached it
            job.record_outcome(ex)
        job.error = None  # nobody will read it: free its traceback (and the unit's cursors) now
        raise asyncio.CancelledError(f"{store.path}: arun unit {label}: outcome {job.outcome}") from None


def _remaining(job: _Job) -> float | None:
    if job.deadline is None:
        return None
    left = job.deadline - time.monotonic()
    if left <= 0:
        raise BusyError(f"{job.store.path}: arun unit {job.label} waited for a worker past its deadline; it never ran",
                        classification=Classification(kind=ErrorKind.BUSY, name="ASYNC_DEADLINE", retryable=False),
                        path=job.store.path, committed=False)
    return left


async def arun(store: Store, fn: Callable[[], T], *, read: bool = False, deadline_s: float | None = None,
               idempotent: bool = False, name: str | None = None) -> T:
    """``store.arun()``: ``store.run(fn, ...)`` on the store's executor; see the module docstring."""
    label = repr(name) if name else getattr(fn, "__qualname__", "unit")
    ctx = contextvars.copy_context()

    def call(job: _Job) -> T:
        return ctx.run(run, store, fn, read=read, deadline_s=_remaining(job), idempotent=idempotent, name=name,
                       gate=job)

    return await _submit(store, call, label, deadline_s, True)


async def aopen(*args: Any, threads: int | None = None, queue: int | None = None, **kwargs: Any) -> Store:
    """``corestore.open()`` off the loop (the WAL switch and the init lock may wait for seconds),
    then the store's executor with ``threads``/``queue`` (see :func:`configure`)."""
    from .opening import open as open_store

    store = await asyncio.to_thread(open_store, *args, **kwargs)
    try:
        configure(store, threads=threads, queue=queue)
    except ConfigError:
        await asyncio.to_thread(store.close)
        raise
    return store


async def aclose(store: Store, timeout: float = 30.0) -> None:
    """``store.close()`` off the loop (plugins drain: accounting may write for seconds); the last
    reference also stops the executor, waiting up to ``timeout`` seconds for running units."""

    def close() -> None:
        store.close()
        ex = store._aio
        if store.closed and ex is not None and ex.pid == os.getpid():
            ex.shutdown(timeout)

    await asyncio.to_thread(close)


async def ahealth(store: Store, *, probe: bool = True, deadline_s: float | None = None) -> HealthReport:
    """``store.health()`` on the store's executor (the probe reads the database)."""
    return await _submit(store, lambda job: store.health(probe=probe), "health", deadline_s, False)


def aio_stats(store: Store) -> dict[str, int]:
    """The executor's counters (zeros before the first async call): calls, rejected_busy, the
    cancelled units by outcome, threads, queue, workers started, admitted and waiting units."""
    ex: Executor | None = store._aio
    if ex is None:
        out = dict.fromkeys(_COUNTERS, 0)
        out.update(threads=DEFAULT_THREADS, queue=DEFAULT_QUEUE, workers=0, admitted=0, waiting=0)
        return out
    return ex.stats()
