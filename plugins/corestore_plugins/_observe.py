"""State an exporter reads from a store without I/O on the database: the figures the
``telemetry`` plugin (OpenTelemetry) and the Prometheus exporter in ``corestore_contrib`` both
publish, computed in one place so the two always agree.

Everything here reads state the store and its plugins already hold, through their public
``stats()`` (and the breaker's public ``transitions``), never their private attributes; the
only system call is
``os.stat`` of the ``-wal`` file (safety rule 2: never open a file the process has SQLite
connections to).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Any

from corestore.health import HealthStatus

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Outcome, Store

__all__ = [
    "BREAKER_STATES",
    "ACCOUNTING_OUTCOMES",
    "HEALTH_VALUES",
    "DURATION_BUCKETS",
    "sqlite_version",
    "namespace",
    "wal_bytes",
    "breaker_state",
    "quarantined",
    "accounting_figures",
    "health_value",
    "error_fields",
    "TransitionCounter",
    "live",
    "register",
    "unregister",
    "after_fork_in_child",
]

logger = logging.getLogger(__name__)

#: Every breaker state, as reported in ``corestore.breaker.state`` (one 0/1 series each).
BREAKER_STATES: tuple[str, ...] = ("closed", "open", "half_open", "isolated")
#: The accounting counters published as ``corestore.accounting.rows`` by outcome.
ACCOUNTING_OUTCOMES: tuple[str, ...] = ("written", "dead_lettered", "dropped", "rejected")
#: ``corestore.health.status``: the aggregate status as a number (higher is worse).
HEALTH_VALUES: dict[HealthStatus, int] = {HealthStatus.UNKNOWN: 0, HealthStatus.UP: 1,
                                          HealthStatus.DEGRADED: 2, HealthStatus.DOWN: 3}
#: The bucket boundaries the OpenTelemetry database conventions give for
#: ``db.client.operation.duration`` (seconds).
DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def sqlite_version() -> str:
    """The SQLite library this process links (the one the stdlib ``sqlite3`` module uses)."""
    return sqlite3.sqlite_version


def namespace(store: Store) -> str:
    """``db.namespace`` for a store: its database path (``:memory:`` for a memory database)."""
    return str(store.path)


def wal_bytes(store: Store) -> int | None:
    """Size of the store's ``-wal`` file in bytes (0 when there is none; None for memory)."""
    if store.memory:
        return None
    try:
        return os.stat(f"{store.path}-wal").st_size
    except FileNotFoundError:
        return 0
    except OSError:
        return None


def breaker_state(store: Store) -> str | None:
    """The circuit breaker's state name (``closed`` ...; its ``stats()["state"]``), None without
    the plugin."""
    plugin = store.plugins.get("circuit_breaker")
    if plugin is None:
        return None
    try:
        return str(plugin.stats()["state"])
    except Exception:  # noqa: BLE001 - a breaker not attached yet (before on_store_open)
        return None


def quarantined(store: Store) -> bool | None:
    """True when the ``quarantine`` plugin refuses writes (its ``stats()["quarantined"]``); None
    without the plugin."""
    plugin = store.plugins.get("quarantine")
    return None if plugin is None else bool(plugin.stats()["quarantined"])


def accounting_figures(store: Store) -> dict[str, float] | None:
    """``pending`` rows, ``lag_s`` (p99 of submit-to-commit delay of recent batches), ``blocked``
    (submitters waiting for room) and the cumulative counters of :data:`ACCOUNTING_OUTCOMES`,
    from the plugin's ``stats()``; None without the plugin."""
    plugin = store.plugins.get("accounting")
    if plugin is None:
        return None
    stats = plugin.stats()
    figures: dict[str, float] = {"pending": float(stats["pending"]),
                                 "lag_s": float(stats["delay_ms"]["p99"]) / 1000.0,
                                 "blocked": float(stats.get("blocked", 0))}
    for outcome in ACCOUNTING_OUTCOMES:
        figures[outcome] = float(stats[outcome])
    return figures


def health_value(store: Store) -> int:
    """The store's aggregate status as :data:`HEALTH_VALUES` (computed without I/O)."""
    return HEALTH_VALUES[store.health(probe=False).status]


def error_fields(outcome: Outcome) -> tuple[str, str | None, str | None]:
    """``(error.type, db.response.status_code, corestore.error.kind)`` of a failed outcome.

    ``db.response.status_code`` is SQLite's extended result code name (``SQLITE_BUSY``,
    ``SQLITE_IOERR_WRITE`` ...) when the error came from SQLite; ``error.type`` matches it then,
    as the conventions ask, else it is the exception's class (``CircuitOpenError``, the caller's
    own exception); ``corestore.error.kind`` is corestore's :class:`~corestore.ErrorKind` name.
    """
    error = outcome.error
    c = outcome.classification
    status = c.name if c is not None and c.name and c.name.startswith("SQLITE_") else None
    kind = c.kind.name if c is not None else None
    return (status or type(error).__name__), status, kind


class TransitionCounter:
    """Counts breaker transitions by the state entered, cumulatively, from the plugin's public
    ``transitions`` record (it keeps the last 64: more than 64 transitions between two reads are
    counted as 64)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Any = None
        self.counts: dict[str, int] = {state: 0 for state in BREAKER_STATES}

    def update(self, store: Store) -> dict[str, int]:
        """Count transitions seen since the last call; returns the cumulative counts."""
        plugin = store.plugins.get("circuit_breaker")
        if plugin is None:
            return self.counts
        try:
            records = list(plugin.transitions)
        except Exception:  # noqa: BLE001 - not attached yet
            return self.counts
        with self._lock:
            fresh = []
            for record in reversed(records):
                if record is self._last:
                    break
                fresh.append(record)
            if records:
                self._last = records[-1]
            for record in fresh:
                self.counts[record.current.value] = self.counts.get(record.current.value, 0) + 1
            return dict(self.counts)


_registry_lock = threading.Lock()


def register(instances: weakref.WeakSet[Any], plugin: Any) -> None:
    """Add ``plugin`` to an exporter's set of live plugin instances."""
    with _registry_lock:
        instances.add(plugin)


def unregister(instances: weakref.WeakSet[Any], plugin: Any) -> None:
    """Remove ``plugin`` from an exporter's set of live plugin instances."""
    with _registry_lock:
        instances.discard(plugin)


def after_fork_in_child() -> None:
    """A new registry lock in a forked child (another thread of the parent may have held it);
    exporters call it from their ``on_fork_child`` hook."""
    global _registry_lock
    _registry_lock = threading.Lock()


def live(instances: weakref.WeakSet[Any]) -> list[Any]:
    """A snapshot of a weak set (for iteration while other threads add to it)."""
    with _registry_lock:
        return list(instances)
