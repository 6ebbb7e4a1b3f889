"""telemetry: OpenTelemetry metrics (and optional spans) for every operation, on the
OpenTelemetry *API* only (``pip install corestore[otel]``); the SDK, its readers and exporters
are the application's choice, installed with ``opentelemetry.metrics.set_meter_provider`` (or
handed to :func:`use_meter_provider`). Without an SDK every instrument is the API's no-op.

What it records follows the stable database semantic conventions:
``db.client.operation.duration`` (histogram, seconds) **per attempt** — a ``run()`` that retried
is several attempts, each recorded, and the attempts that ended in BUSY still show their error —
with ``db.system.name=sqlite``, ``db.namespace`` (the database path), ``db.operation.name`` (the
operation's kind: ``write``, ``read``, ``checkpoint`` ...), ``db.collection.name`` never (a
transaction spans tables; corestore does not parse SQL), and on failure ``error.type`` and
``db.response.status_code`` (SQLite's extended result code name) plus corestore's own
``corestore.error.kind``. SQLite-specific figures carry the ``corestore.`` prefix; the table of
every instrument is on the Observability page of the docs.

Cost: recording one sample in the OpenTelemetry Python SDK costs about 80,000 instructions,
more than corestore's own work per transaction (site/performance.md). So the hook only appends
``(duration, attributes)`` to the store's :class:`~corestore_plugins._telemetry_buffer.SampleBuffer`;
the SDK records the samples at every collection (the observable instruments' callbacks run
before the synchronous instruments are collected) or, when ``buffer_size`` wait, on the
buffer's own thread: never on the caller's. That moves the SDK's cost off the transaction, not
out of the process. ``buffer_size = 0`` records each sample at once on the caller's thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from corestore import hookimpl
from corestore.errors import ErrorKind
from corestore.settings import boolean, number

from . import _observe
from ._telemetry_buffer import SampleBuffer

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Operation, Outcome, Store

__all__ = ["Telemetry", "use_meter_provider", "use_tracer_provider", "INSTRUMENTS"]

logger = logging.getLogger(__name__)

#: Every instrument: name -> (kind, unit, description). The docs' table is checked against it.
INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "db.client.operation.duration": ("histogram", "s", "Duration of one attempt of a database operation"),
    "corestore.retries": ("counter", "{retry}", "Attempts run() retried (BUSY, TRANSIENT_IO within the budget)"),
    "corestore.busy.time": ("counter", "s", "Time spent in attempts that ended in SQLITE_BUSY (waiting on the lock)"),
    "corestore.checkpoints": ("counter", "{checkpoint}", "store.checkpoint() calls by corestore.checkpoint.result"),
    "corestore.checkpoint.age": ("gauge", "s", "Seconds since the last successful store.checkpoint() of this process"),
    "corestore.wal.size": ("gauge", "By", "Size of the -wal file"),
    "corestore.breaker.state": ("gauge", "{state}",
                                "1 for the circuit breaker's current corestore.breaker.state, 0 for the others"),
    "corestore.breaker.transitions": ("counter", "{transition}", "Circuit breaker transitions by the state entered"),
    "corestore.accounting.queue.depth": ("gauge", "{row}", "Accounting rows accepted and not yet written (pending)"),
    "corestore.accounting.lag": ("gauge", "s", "p99 of submit-to-commit delay of recent accounting batches"),
    "corestore.accounting.rows": ("counter", "{row}", "Accounting rows by corestore.accounting.outcome"),
    "corestore.quarantine.state": ("gauge", "1", "1 while the quarantine plugin refuses writes"),
    "corestore.health.status": ("gauge", "1", "Aggregate health: 0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN"),
    "corestore.sqlite.version": ("gauge", "1", "1, with the linked SQLite library in corestore.sqlite.version"),
    "corestore.telemetry.dropped": ("counter", "{sample}",
                                    "Duration samples dropped because max_buffered were waiting for the SDK"),
}
#: The counters read at collection time (observable counters), not added as events happen.
_OBSERVED_COUNTERS = ("corestore.breaker.transitions", "corestore.accounting.rows", "corestore.telemetry.dropped")

_INSTANCES: weakref.WeakSet[Telemetry] = weakref.WeakSet()
_lock = threading.Lock()
_provider: dict[str, Any] = {"meter": None, "tracer": None}
_instruments: dict[str, Any] = {}


def use_meter_provider(provider: Any | None) -> None:
    """Record into ``provider`` instead of the global one (None: back to the global). Stores
    opened afterwards use it; an application normally calls
    ``opentelemetry.metrics.set_meter_provider`` instead."""
    with _lock:
        _provider["meter"] = provider
        _instruments.clear()


def use_tracer_provider(provider: Any | None) -> None:
    """Create spans (``spans = true``) with ``provider`` instead of the global one."""
    with _lock:
        _provider["tracer"] = provider


def _version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("corestore")
    except Exception:  # noqa: BLE001 - a source tree
        return "0"


def _get_instruments() -> dict[str, Any]:
    """The process's instruments (created once per meter provider)."""
    with _lock:
        if _instruments:
            return _instruments
        from opentelemetry import metrics

        provider = _provider["meter"]
        meter = (provider.get_meter("corestore", _version()) if provider is not None
                 else metrics.get_meter("corestore", _version()))
        made: dict[str, Any] = {}
        for name, (kind, unit, description) in INSTRUMENTS.items():
            if name == "db.client.operation.duration":
                made[name] = meter.create_histogram(name, unit=unit, description=description,
                                                    explicit_bucket_boundaries_advisory=list(_observe.DURATION_BUCKETS))
            elif kind == "counter" and name in _OBSERVED_COUNTERS:
                made[name] = meter.create_observable_counter(name, callbacks=[_callback(name)], unit=unit,
                                                             description=description)
            elif kind == "counter":
                made[name] = meter.create_counter(name, unit=unit, description=description)
            else:
                made[name] = meter.create_observable_gauge(name, callbacks=[_callback(name)], unit=unit,
                                                           description=description)
        _instruments.update(made)
        return _instruments


def _callback(name: str) -> Any:
    def callback(options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        out: list[Any] = []
        for plugin in _observe.live(_INSTANCES):
            try:
                plugin.flush()  # callbacks run before the synchronous instruments are collected
                out.extend(Observation(value, attributes) for value, attributes in plugin.observe(name))
            except Exception:  # noqa: BLE001 - one store must not break the collection
                logger.exception("telemetry: observing %s for %r failed", name, plugin)
        return out

    return callback


class Telemetry:
    """OpenTelemetry metrics for one store (optional spans). Settings:

    =============  =====  =======  ==============================================================
    key            type   default  meaning
    =============  =====  =======  ==============================================================
    spans          bool   false    one CLIENT span per operation attempt (needs a tracer provider)
    buffer_size    int    1024     duration samples waiting before the store's telemetry thread
                                   records them into the SDK (collections record them too);
                                   0: each is recorded at once on the caller's thread
    max_buffered   int    65536    at most this many wait (never fewer than buffer_size); more are
                                   dropped and counted in ``corestore.telemetry.dropped``
    =============  =====  =======  ==============================================================
    """

    name: ClassVar[str] = "telemetry"

    # Slots: CPython 3.11 specialises a slot read on the hot path (``after_operation``) whatever
    # happened to the instance; an instance-dict read was left unspecialised once the plugin
    # manager had looked at the instance (about 1,000 instructions per call, measured).
    __slots__ = ("settings", "clock", "_buffer_size", "_pending", "_buffer", "_wake_at", "_store", "_ok", "_base",
                 "_instruments", "_transitions", "_last_checkpoint", "_tracer", "__weakref__")

    @attrs.frozen(kw_only=True)
    class Settings:
        spans: bool = attrs.field(default=False, validator=boolean,
                                  metadata={"help": "one CLIENT span per operation attempt"})
        buffer_size: int = attrs.field(default=1024, validator=number(0, 1_000_000, integer=True),
                                       metadata={"help": "duration samples waiting before the store's telemetry thread "
                                                         "records them (collections record them too); 0: each is "
                                                         "recorded at once on the caller's thread"})
        max_buffered: int = attrs.field(default=65536, validator=number(1, 10_000_000, integer=True),
                                        metadata={"help": "at most this many samples wait (never fewer than "
                                                          "buffer_size); more are dropped and counted in "
                                                          "corestore.telemetry.dropped"})

    def __init__(self, settings: Telemetry.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`) is what the
        plugin reads the time with: the same keyword, and the same ``clock`` attribute, on every
        shipped plugin that reads the time. An attempt's duration is ``clock() -
        operation.started``, and the core sets ``started`` with :func:`time.monotonic`: a
        replacement must keep that scale (a test steps it forward from ``time.monotonic()``)."""
        self.settings = settings if settings is not None else Telemetry.Settings()
        self.clock: Callable[[], float] = clock
        self._buffer_size = self.settings.buffer_size
        self._pending = SampleBuffer(self._buffer_size, self.settings.max_buffered, "?")
        self._buffer = self._pending.samples  # the hook appends here while fewer than _wake_at wait
        self._wake_at = self._buffer_size
        self._store: weakref.ref[Store] | None = None
        self._ok: dict[str, dict[str, Any]] = {}
        self._base: dict[str, Any] = {}
        self._instruments: dict[str, Any] = {}
        self._transitions = _observe.TransitionCounter()
        self._last_checkpoint: float | None = None
        self._tracer: Any = None

    # -- lifecycle -----------------------------------------------------------------------------
    @hookimpl
    def on_store_open(self, store: Store) -> None:
        self._store = weakref.ref(store)
        self._base = {"db.system.name": "sqlite", "db.namespace": _observe.namespace(store)}
        for attributes in self._ok.values():  # the open's, cached before the store was known (samples hold them)
            attributes.update(self._base)
        self._pending.name = os.path.basename(str(store.path)) or str(store.path)
        self._instruments = _get_instruments()
        self._pending.bind(self._instruments["db.client.operation.duration"].record)
        if self._buffer_size == 0:
            self._pending.drain()  # the open's sample, kept until the histogram was bound
        if self.settings.spans:
            from opentelemetry import trace

            provider = _provider["tracer"]
            self._tracer = (provider.get_tracer("corestore", _version()) if provider is not None
                            else trace.get_tracer("corestore", _version()))
        _observe.register(_INSTANCES, self)

    @hookimpl
    def on_close(self, store: Store) -> None:
        self._pending.stop()
        self.flush()
        _observe.unregister(_INSTANCES, self)

    @hookimpl
    def on_fork_child(self, store: Store) -> None:
        """In a forked child: the buffered samples are the parent's (recording them here would
        count them twice), and a lock another thread of the parent held at the fork stays held."""
        global _lock
        _lock = threading.Lock()
        _observe.after_fork_in_child()
        self._pending.after_fork_in_child()

    def stats(self) -> dict[str, Any]:
        """``buffered`` (duration samples waiting for the SDK), ``buffer_size``, ``spans``,
        ``attached`` (the store is open and the instruments exist), ``checkpoint_age_s`` (seconds
        since the last successful ``store.checkpoint()``, None before one): the same ``stats()``
        every shipped plugin has. Cheap: nothing here is counted on the hot path."""
        last = self._last_checkpoint
        return {"buffered": len(self._buffer), "buffer_size": self._buffer_size, "spans": self.settings.spans,
                "attached": bool(self._instruments) and self._store is not None,
                "checkpoint_age_s": None if last is None else max(0.0, self.clock() - last)}

    # -- operations ----------------------------------------------------------------------------
    # One hook, taking every argument of its specification: the generated dispatch calls it
    # directly. The attempt's start is the operation's start (set just before
    # ``before_operation``), so no ``before_operation`` is needed: half the dispatch cost.
    # The success path is the transaction's whole cost (site/performance.md, "Telemetry"):
    # it reads the Operation's slots (``_started``, ``_kind``: this plugin ships with the core;
    # the public properties cost a Python call each, about 300 instructions), reads the clock
    # through a local (a method-style call of an instance attribute is not specialised by
    # CPython 3.11) and finds the cached attributes with a subscript (a KeyError once per kind).
    @hookimpl
    def after_operation(self, store: Store, operation: Operation, outcome: Outcome) -> None:
        clock = self.clock
        now = clock()
        elapsed = now - operation._started  # noqa: SLF001 - see above
        if outcome.error is None:
            kind = operation._kind  # noqa: SLF001 - see above
            try:
                attributes = self._ok[kind]
            except KeyError:
                attributes = self._ok[kind] = self._attributes(kind)
            buffer = self._buffer
            if len(buffer) < self._wake_at:  # the transaction's whole cost: one append
                buffer.append((elapsed, attributes))
            else:
                self._pending.full((elapsed, attributes))
            if kind == "checkpoint" and operation._name is None:  # noqa: SLF001
                self._checkpoint_done(now, "ok")
        else:
            self._failed(operation, outcome, elapsed, now)
        if self._tracer is not None:
            self._span(operation, outcome, elapsed)

    def _attributes(self, kind: str) -> dict[str, Any]:
        return {**self._base, "db.operation.name": kind}

    def _failed(self, operation: Operation, outcome: Outcome, elapsed: float, now: float) -> None:
        error_type, status, kind = _observe.error_fields(outcome)
        attributes = self._attributes(operation.kind)
        attributes["error.type"] = error_type
        if status is not None:
            attributes["db.response.status_code"] = status
        if kind is not None:
            attributes["corestore.error.kind"] = kind
        instruments = self._instruments
        if not instruments:  # a failed open of the store: before on_store_open bound the instruments
            return
        buffer = self._buffer
        if len(buffer) < self._wake_at:  # in order with the successes, recorded off the caller's thread
            buffer.append((elapsed, attributes))
        else:
            self._pending.full((elapsed, attributes))
        if outcome.retrying:
            instruments["corestore.retries"].add(1, attributes)
        c = outcome.classification
        if c is not None and c.kind is ErrorKind.BUSY:
            instruments["corestore.busy.time"].add(elapsed, self._base)
        if operation.kind == "checkpoint" and operation.name is None:
            self._checkpoint_done(None, "error")

    def _checkpoint_done(self, now: float | None, result: str) -> None:
        if now is not None:
            self._last_checkpoint = now
        self._instruments["corestore.checkpoints"].add(1, {**self._base, "corestore.checkpoint.result": result})

    def _span(self, operation: Operation, outcome: Outcome, elapsed: float) -> None:
        """One CLIENT span for the attempt, started at its start (``operation.started``)."""
        end = time.time_ns()
        span = self._tracer.start_span(f"{operation.kind} {self._base['db.namespace']}", kind=_span_kind(),
                                       attributes=self._attributes(operation.kind), start_time=end - int(elapsed * 1e9))
        if outcome.error is not None:
            from opentelemetry.trace import Status, StatusCode

            error_type, status, kind = _observe.error_fields(outcome)
            span.set_attribute("error.type", error_type)
            if status is not None:
                span.set_attribute("db.response.status_code", status)
            if kind is not None:
                span.set_attribute("corestore.error.kind", kind)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=end)

    # -- collection ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Record the waiting duration samples now (every collection does this first; waits
        for a batch the store's telemetry thread is recording, so every sample appended
        before the call is recorded when it returns)."""
        self._pending.drain()

    def observe(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """The observations of the observable instrument ``name`` for this store, now."""
        store = self._store() if self._store is not None else None
        if store is None or store.closed:
            return []
        base = self._base
        if name == "corestore.wal.size":
            size = _observe.wal_bytes(store)
            return [] if size is None else [(size, base)]
        if name == "corestore.checkpoint.age":
            last = self._last_checkpoint
            return [] if last is None else [(self.clock() - last, base)]
        if name == "corestore.breaker.state":
            state = _observe.breaker_state(store)
            if state is None:
                return []
            return [(1 if s == state else 0, {**base, "corestore.breaker.state": s}) for s in _observe.BREAKER_STATES]
        if name == "corestore.breaker.transitions":
            if "circuit_breaker" not in store.plugins:
                return []
            counts = self._transitions.update(store)
            return [(n, {**base, "corestore.breaker.state": s}) for s, n in counts.items()]
        if name in ("corestore.accounting.queue.depth", "corestore.accounting.lag", "corestore.accounting.rows"):
            figures = _observe.accounting_figures(store)
            if figures is None:
                return []
            if name == "corestore.accounting.queue.depth":
                return [(figures["pending"], base)]
            if name == "corestore.accounting.lag":
                return [(figures["lag_s"], base)]
            return [(figures[o], {**base, "corestore.accounting.outcome": o}) for o in _observe.ACCOUNTING_OUTCOMES]
        if name == "corestore.quarantine.state":
            q = _observe.quarantined(store)
            return [] if q is None else [(int(q), base)]
        if name == "corestore.health.status":
            return [(_observe.health_value(store), base)]
        if name == "corestore.telemetry.dropped":
            return [(self._pending.dropped, base)]
        if name == "corestore.sqlite.version":
            return [(1, {**base, "corestore.sqlite.version": _observe.sqlite_version()})]
        return []


def _span_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT
