"""Prometheus metrics for corestore (``pip install corestore[prometheus]``): the ``prometheus``
plugin and :func:`render` for a ``/metrics`` endpoint.

The figures are those of the ``telemetry`` plugin in Prometheus naming (``corestore_..._total``,
``_seconds``, ``_bytes``; label ``database`` is the path). Every series is updated *eagerly*, as
events happen, so the module is correct under ``prometheus_client``'s multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``; gunicorn-style workers), which forbids custom collectors,
``set_function``, ``Info`` and ``Enum``: counters and the histogram on every operation; gauges
(WAL size, breaker state, accounting backlog, quarantine, health) on store open, on every
health change, at most once per ``refresh_s`` after an operation, and before every
:func:`render` in the rendering process. Each gauge declares how the processes' values combine
(``multiprocess_mode``): see :data:`METRICS`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

try:
    import prometheus_client
    from prometheus_client import Counter, Gauge, Histogram
except ImportError as err:  # pragma: no cover - the extra is not installed
    raise ImportError(f"the prometheus plugin needs prometheus_client: pip install 'corestore[prometheus]' ({err})") from err

from corestore import hookimpl
from corestore.errors import ErrorKind
from corestore.settings import number
from corestore_plugins import _observe

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Operation, Outcome, Store

__all__ = ["Prometheus", "METRICS", "render", "refresh_all", "CONTENT_TYPE"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

#: name -> (type, labels, multiprocess mode or "", help). The docs' table is checked against it.
METRICS: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "corestore_operation_duration_seconds": ("histogram", ("database", "operation", "error_type", "error_kind"), "",
                                             "Duration of one attempt of a database operation (error_type empty on success)"),
    "corestore_retries_total": ("counter", ("database", "error_type"), "", "Attempts run() retried"),
    "corestore_busy_seconds_total": ("counter", ("database",), "", "Time spent in attempts that ended in SQLITE_BUSY"),
    "corestore_checkpoints_total": ("counter", ("database", "result"), "", "store.checkpoint() calls by result"),
    "corestore_last_checkpoint_timestamp_seconds": ("gauge", ("database",), "max",
                                                    "Unix time of the last successful store.checkpoint()"),
    "corestore_wal_bytes": ("gauge", ("database",), "mostrecent", "Size of the -wal file"),
    "corestore_breaker_state": ("gauge", ("database", "state"), "livemax",
                                "1 for the circuit breaker's current state (per process: max over live processes)"),
    "corestore_breaker_transitions_total": ("counter", ("database", "state"), "", "Breaker transitions by state entered"),
    "corestore_accounting_queue_depth": ("gauge", ("database",), "livesum", "Accounting rows accepted, not yet written"),
    "corestore_accounting_lag_seconds": ("gauge", ("database",), "livemax", "p99 submit-to-commit delay of recent batches"),
    "corestore_accounting_rows_total": ("counter", ("database", "outcome"), "", "Accounting rows by outcome"),
    "corestore_quarantined": ("gauge", ("database",), "livemax", "1 while the quarantine plugin refuses writes"),
    "corestore_health_status": ("gauge", ("database",), "livemax", "Aggregate health: 0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN"),
    "corestore_sqlite_version_info": ("gauge", ("version",), "livemax", "1, labelled with the linked SQLite version"),
}


def _make() -> dict[str, Any]:
    made: dict[str, Any] = {}
    for name, (kind, labels, mode, doc) in METRICS.items():
        if kind == "histogram":
            made[name] = Histogram(name, doc, labels, buckets=_observe.DURATION_BUCKETS)
        elif kind == "counter":
            made[name] = Counter(name.removesuffix("_total"), doc, labels)
        else:
            made[name] = Gauge(name, doc, labels, multiprocess_mode=mode)
    return made


_M = _make()
_INSTANCES: weakref.WeakSet[Prometheus] = weakref.WeakSet()


def refresh_all() -> None:
    """Bring every gauge of every open store in this process up to date (no database I/O)."""
    for plugin in _observe.live(_INSTANCES):
        try:
            plugin.refresh()
        except Exception:  # noqa: BLE001 - one store must not break the scrape
            logger.exception("prometheus: refreshing %r failed", plugin)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type: this process's registry, or, under
    ``PROMETHEUS_MULTIPROC_DIR``, every process's files merged by ``MultiProcessCollector``.
    Gauges of this process's stores are refreshed first."""
    refresh_all()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"):
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return prometheus_client.generate_latest(registry), CONTENT_TYPE
    return prometheus_client.generate_latest(prometheus_client.REGISTRY), CONTENT_TYPE


class Prometheus:
    """Prometheus series for one store. Settings:

    =========  =====  =======  ===================================================================
    key        type   default  meaning
    =========  =====  =======  ===================================================================
    refresh_s  float  1.0      gauges are re-read after an operation at most this often (0: every
                               operation); also on open, on health changes and before a render
    =========  =====  =======  ===================================================================
    """

    name: ClassVar[str] = "prometheus"

    @attrs.frozen(kw_only=True)
    class Settings:
        refresh_s: float = attrs.field(default=1.0, validator=number(0.0, 3600.0),
                                       metadata={"help": "seconds between two gauge refreshes after operations"})

    def __init__(self, settings: Prometheus.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`): the same
        keyword and ``clock`` attribute as every shipped plugin that reads the time. Durations
        are ``clock() - operation.started`` (set with :func:`time.monotonic` by the core), so a
        replacement must keep that scale."""
        self.settings = settings if settings is not None else Prometheus.Settings()
        self.clock: Callable[[], float] = clock
        self._store: weakref.ref[Store] | None = None
        self._db = ""
        self._next_refresh = 0.0
        self._refresh_lock = threading.Lock()
        self._transitions = _observe.TransitionCounter()
        self._seen_transitions: dict[str, int] = {}
        self._seen_rows: dict[str, float] = {}
        self._ok: dict[str, Any] = {}

    @hookimpl
    def on_store_open(self, store: Store) -> None:
        self._store = weakref.ref(store)
        self._db = _observe.namespace(store)
        _M["corestore_sqlite_version_info"].labels(_observe.sqlite_version()).set(1)
        _observe.register(_INSTANCES, self)
        self.refresh()

    @hookimpl
    def on_close(self, store: Store) -> None:
        self.refresh()
        _observe.unregister(_INSTANCES, self)

    @hookimpl
    def on_fork_child(self, store: Store) -> None:
        """In a forked child: a refresh another thread of the parent was in holds the lock for
        ever; prometheus_client itself starts the child's multiprocess files by pid."""
        self._refresh_lock = threading.Lock()
        _observe.after_fork_in_child()
        self._next_refresh = 0.0

    def stats(self) -> dict[str, Any]:
        """``database`` (the ``database`` label), ``refresh_s``, ``attached`` (the store is open),
        ``multiprocess`` (``PROMETHEUS_MULTIPROC_DIR`` is set): the same ``stats()`` every shipped
        plugin has."""
        store = self._store() if self._store is not None else None
        return {"database": self._db, "refresh_s": self.settings.refresh_s,
                "attached": store is not None and not store.closed,
                "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))}

    @hookimpl
    def after_operation(self, store: Store, operation: Operation, outcome: Outcome) -> None:
        now = self.clock()
        elapsed = now - operation.started  # this attempt's start
        if outcome.error is None:
            child = self._ok.get(operation.kind)
            if child is None:
                child = self._ok[operation.kind] = _M["corestore_operation_duration_seconds"].labels(
                    self._db, operation.kind, "", "")
            child.observe(elapsed)
        else:
            error_type, _status, kind = _observe.error_fields(outcome)
            _M["corestore_operation_duration_seconds"].labels(self._db, operation.kind, error_type, kind or "").observe(elapsed)
            if outcome.retrying:
                _M["corestore_retries_total"].labels(self._db, error_type).inc()
            c = outcome.classification
            if c is not None and c.kind is ErrorKind.BUSY:
                _M["corestore_busy_seconds_total"].labels(self._db).inc(elapsed)
        if operation.kind == "checkpoint" and operation.name is None:
            _M["corestore_checkpoints_total"].labels(self._db, "ok" if outcome.ok else "error").inc()
            if outcome.ok:
                _M["corestore_last_checkpoint_timestamp_seconds"].labels(self._db).set(time.time())
        if now >= self._next_refresh:
            self._next_refresh = now + self.settings.refresh_s
            self.refresh()

    @hookimpl
    def on_health_changed(self, store: Store) -> None:
        self.refresh(health=False)  # called from inside health(): the status comes from last_health
        last = store.last_health
        if last is not None:
            _M["corestore_health_status"].labels(self._db).set(_observe.HEALTH_VALUES[last.status])

    def refresh(self, *, health: bool = True) -> None:
        """Set every gauge (and the counters kept by other plugins) from the store's state now."""
        store = self._store() if self._store is not None else None
        if store is None:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return  # another thread is refreshing this store right now
        try:
            db = self._db
            size = _observe.wal_bytes(store)
            if size is not None:
                _M["corestore_wal_bytes"].labels(db).set(size)
            state = _observe.breaker_state(store)
            if state is not None:
                for s in _observe.BREAKER_STATES:
                    _M["corestore_breaker_state"].labels(db, s).set(1 if s == state else 0)
                for s, n in self._transitions.update(store).items():
                    delta = n - self._seen_transitions.get(s, 0)
                    if delta > 0:
                        _M["corestore_breaker_transitions_total"].labels(db, s).inc(delta)
                        self._seen_transitions[s] = n
            figures = _observe.accounting_figures(store)
            if figures is not None:
                _M["corestore_accounting_queue_depth"].labels(db).set(figures["pending"])
                _M["corestore_accounting_lag_seconds"].labels(db).set(figures["lag_s"])
                for outcome in _observe.ACCOUNTING_OUTCOMES:
                    delta = figures[outcome] - self._seen_rows.get(outcome, 0.0)
                    if delta > 0:
                        _M["corestore_accounting_rows_total"].labels(db, outcome).inc(delta)
                        self._seen_rows[outcome] = figures[outcome]
            q = _observe.quarantined(store)
            if q is not None:
                _M["corestore_quarantined"].labels(db).set(int(q))
            if health and not store.closed:
                _M["corestore_health_status"].labels(db).set(_observe.health_value(store))
        finally:
            self._refresh_lock.release()
