"""health's PostgreSQL server probe: version, primary or standby, connections, probe latency.

A SQLite file has no server to ask about; a PostgreSQL database does, and what a deployment
needs to know about it is not in the core's ``database`` probe (which only proves a query
answers): which server version answers, whether it is the primary or a standby (after a
failover a store may find itself on a read-only standby: every write then fails with
``25006``), how many of ``max_connections`` are used, and on a standby how far replay lags.

The probe is one read transaction through the store (``store.read(name="health.server")``): the
circuit breaker gates it (an open breaker is not hammered by monitoring), a failure is
classified like any other, and the query is bounded by ``SET LOCAL statement_timeout``. It runs
on the health plugin's own thread, never on the thread that called ``store.health()``: a report
carries the last result and its age, and asks for a new one when it is older than the probe
interval (the first ``health()`` asks for the first). The thread closes its connection after
each probe, so between probes the plugin holds no connection of its own.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from corestore import CircuitOpenError, HealthStatus, StoreError

__all__ = ["ServerProbe", "SERVER_QUERY"]

logger = logging.getLogger(__name__)

#: one round trip: version, role, connections, replay lag (None on a primary)
SERVER_QUERY = (
    "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
    "pg_is_in_recovery(), current_setting('max_connections')::int, "
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
    "CASE WHEN pg_is_in_recovery() THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)


class ServerProbe:
    """The last server facts of one store and when to ask again (thread-safe)."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._facts: dict[str, Any] | None = None
        self._error: str | None = None
        self._at: float | None = None  # monotonic time of the last result
        self._at_wall: float | None = None
        self.runs = 0

    def due(self, now: float, interval_s: float) -> bool:
        """True when there is no result yet or the last one is older than ``interval_s``."""
        with self._lock:
            return self._at is None or now - self._at >= interval_s

    def run(self, store: Any) -> None:
        """Ask the server (one bounded read transaction); keep the result or the error."""
        started = time.perf_counter()
        facts: dict[str, Any] | None = None
        error: str | None = None
        try:
            with store.read(name="health.server"):
                cur = store.database.connection().execute(
                    f"SET LOCAL statement_timeout = {max(1, int(self.timeout_s * 1000))}")
                cur = store.database.connection().execute(SERVER_QUERY)
                row = cur.fetchone()
            version, version_num, standby, max_conn, used, lag = row
            facts = {
                "server_version": str(version),
                "server_version_num": int(version_num),
                "role": "standby" if standby else "primary",
                "max_connections": int(max_conn),
                "connections_used": int(used),
                "replay_lag_s": None if lag is None else round(float(lag), 3),
                "probe_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        except CircuitOpenError:
            error = "not probed: circuit breaker open"
        except StoreError as err:
            c = err.classification
            error = f"server probe failed: {c.name if c is not None and c.name else type(err).__name__}"
        except Exception as err:  # noqa: BLE001 - a probe must never break the health thread
            error = f"server probe failed: {type(err).__name__}"
        finally:
            _release(store)
        with self._lock:
            self.runs += 1
            self._at, self._at_wall = time.monotonic(), time.time()
            if facts is not None:
                self._facts, self._error = facts, None
            else:
                self._error = error
        if error is not None:
            logger.debug("health: %s: %s", store.path, error)

    def section(self, store: Any) -> tuple[HealthStatus, str | None, dict[str, Any]]:
        """``(status, summary or None, details)`` for the health component: DEGRADED when the
        last probe failed, or when a store that writes finds itself on a standby."""
        with self._lock:
            facts = dict(self._facts) if self._facts is not None else None
            error, at_wall = self._error, self._at_wall
        details: dict[str, Any] = {"engine": "postgresql", "probes": self.runs}
        details["connections_open"] = _connections(store)
        pool = _pool(store)
        if pool is not None:
            details["pool"] = pool
        if facts is not None:
            details.update(facts)
        if at_wall is not None:
            details["probed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_wall))
        if error is not None:
            details["error"] = error
            return HealthStatus.DEGRADED, error, details
        if facts is None:
            return HealthStatus.UP, "server probe pending", details
        summary = f"PostgreSQL {facts['server_version']} {facts['role']}"
        if facts["role"] == "standby" and not store.profile.read_only:
            return HealthStatus.DEGRADED, summary + ": a standby is read-only, writes fail (READONLY)", details
        return HealthStatus.UP, summary, details


def _release(store: Any) -> None:
    """Close the probing thread's connection: between probes the plugin holds none (on a server,
    connections are counted against ``max_connections``; a probe every few seconds pays one
    connect instead)."""
    try:
        db = store.database
        if not db.in_transaction():
            db.close()
    except Exception:  # noqa: BLE001 - a broken connection is dropped anyway
        logger.debug("health: closing the server probe's connection failed", exc_info=True)


def _connections(store: Any) -> int | None:
    try:
        return int(store.database.connection_count())
    except Exception:  # noqa: BLE001 - a database without the count
        return None


def _pool(store: Any) -> dict[str, Any] | None:
    """The connection pool's figures when the store's database has a ``psycopg_pool`` pool."""
    pool = getattr(store.database, "pool", None)
    get_stats = getattr(pool, "get_stats", None)
    if get_stats is None:
        return None
    try:
        return {str(k): v for k, v in dict(get_stats()).items()}
    except Exception:  # noqa: BLE001 - figures only
        return None
