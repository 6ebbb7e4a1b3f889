"""Where the ``telemetry`` plugin leaves its duration samples, and how they reach the
OpenTelemetry SDK without the transaction paying for it.

Recording one sample in the OpenTelemetry Python SDK costs about 80,000 CPU instructions
(cleaning and hashing the attributes on every call; site/performance.md): more than a whole
corestore transaction. The plugin's hook therefore only appends ``(duration, attributes)`` to
:attr:`SampleBuffer.samples` (the attributes dict is cached per operation kind: the append
allocates the tuple and nothing else). The SDK gets the samples later, off the caller's thread:

* at every collection: the plugin's observable callbacks call :meth:`SampleBuffer.drain`, and
  the SDK runs every observable callback before it collects the synchronous instruments, so a
  sample appended before a collection starts is in that collection's export;
* when ``size`` samples wait: the hook wakes this buffer's thread (``corestore-telemetry[...]``,
  started on the first fill), which drains them. The caller never records.

Memory is bounded: at most ``limit`` samples wait. A sample that finds ``limit`` waiting (the SDK
cannot keep up, or no thread could run) is dropped and counted (:attr:`SampleBuffer.dropped`,
exported as ``corestore.telemetry.dropped``), with one WARNING per buffer. The histogram cannot
take pre-aggregated points through the OpenTelemetry API (``record()`` takes one value, and the
point's count and sum must stay exact), so the SDK's work stays one ``record()`` per sample:
deferred, not saved.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SampleBuffer", "JOIN_TIMEOUT_S"]

logger = logging.getLogger(__name__)

#: How long :meth:`SampleBuffer.stop` waits for the thread to finish the batch it is recording.
JOIN_TIMEOUT_S = 10.0

Sample = tuple[float, dict[str, Any]]


class SampleBuffer:
    """The samples of one store waiting for the SDK, and the thread that records them when
    ``size`` wait. ``size`` 0: :meth:`full` records each sample at once on the caller's thread
    (the caller's context then reaches the SDK, for exemplars). Thread-safe without a lock on
    the append: :meth:`drain` takes the first ``n`` samples with two atomic list operations, so
    an append that races with it stays for the next drain."""

    def __init__(self, size: int, limit: int, name: str) -> None:
        self.samples: list[Sample] = []
        self.size = size
        self.limit = max(limit, size)
        self.name = name
        self.dropped = 0
        self._record: Callable[[float, dict[str, Any]], Any] | None = None
        self._drain_lock = threading.Lock()  # one drain at a time: a collection waits for the thread's batch
        self._state_lock = threading.Lock()  # the thread's start/stop and the dropped count
        self._wake = threading.Event()
        self._waking = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def bind(self, record: Callable[[float, dict[str, Any]], Any]) -> None:
        """Record with ``record`` (the histogram's ``record``) from now on."""
        self._record = record

    def full(self, sample: Sample) -> None:
        """The hook found ``size`` samples waiting (every time when ``size`` is 0): keep
        ``sample`` if fewer than ``limit`` wait, else count it dropped; wake the thread."""
        if self.size == 0:
            record = self._record
            if record is not None:
                record(*sample)
            else:  # the store's open, before on_store_open bound the histogram: kept for it
                self.samples.append(sample)
            return
        if len(self.samples) < self.limit:
            self.samples.append(sample)
        else:
            with self._state_lock:
                self.dropped += 1
                first = self.dropped == 1
            if first:
                logger.warning("telemetry[%s]: %d samples wait for the OpenTelemetry SDK; dropping new ones "
                               "(counted in corestore.telemetry.dropped)", self.name, self.limit)
        if not self._waking:
            self._waking = True
            self._start_or_wake()

    def _start_or_wake(self) -> None:
        with self._state_lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"corestore-telemetry[{self.name}]",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        """The thread: wait to be woken, drain, until :meth:`stop`."""
        while True:
            self._wake.wait()
            self._wake.clear()
            self._waking = False  # before draining: a fill during the drain wakes it again
            if self._stopping:
                return
            self.drain()

    def drain(self) -> int:
        """Record every sample waiting now (returns how many). Waits for a drain in progress on
        another thread first, so once it returns every sample appended before the call has
        been recorded."""
        with self._drain_lock:
            record = self._record
            samples = self.samples
            n = len(samples)
            if n == 0 or record is None:
                return 0
            batch = samples[:n]
            del samples[:n]  # appends racing with this land after index n and stay
            try:
                for value, attributes in batch:
                    record(value, attributes)
            except Exception:  # noqa: BLE001 - the SDK's fault must not kill the thread or a collection
                logger.exception("telemetry[%s]: recording %d samples into the OpenTelemetry SDK failed",
                                 self.name, n)
            return n

    def stop(self) -> None:
        """Stop the thread (the store closes): it finishes the batch it is recording; waits at
        most :data:`JOIN_TIMEOUT_S`, then logs an ERROR naming the thread."""
        with self._state_lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            return
        self._wake.set()
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.error("telemetry[%s]: thread %s did not stop within %g s (still recording into the SDK)",
                         self.name, thread.name, JOIN_TIMEOUT_S)

    def after_fork_in_child(self) -> None:
        """In a forked child: the waiting samples are the parent's (recording them here would
        count them twice), the thread does not exist here, and a lock held at the fork stays
        held."""
        self.samples.clear()
        self.dropped = 0
        self._drain_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._waking = False
        self._thread = None
