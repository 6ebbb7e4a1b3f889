"""Probe-aware HTTP health for the application's own process: a WSGI and an ASGI application
(framework-neutral: mount them in Flask, Django, Starlette, FastAPI ...) serving

* ``/livez`` — liveness: 200 while the process can answer. A database being unhealthy never
  fails it (restarting the container does not repair a disk); with
  ``fail_liveness_on_persistent_failure=True`` it turns 503 once ``on_persistent_failure``
  fired for a store that enables the ``probes`` plugin (the application's "restart me" seam).
* ``/readyz`` — readiness: 503 only when a *critical* database (``[settings.probes] critical =
  true`` in its profile, or named in ``critical=``) has its circuit breaker OPEN or ISOLATED, is
  quarantined, or its health is DOWN; else 200. HALF_OPEN stays ready (traffic is what probes
  it). No database I/O: the state the plugins hold, ``store.health(probe=False)``.
* ``/startupz`` — startup: 503 until every store named in ``expect`` is open in this process.
* ``/healthz`` — every open store's full health report as JSON (503 when one is DOWN).
* ``/metrics`` — the Prometheus exposition (:func:`corestore_contrib.prometheus.render`; 404
  without ``prometheus_client``).

Each response body says what it checked. The ``probes`` plugin (entry point ``probes``) carries
the ``critical`` setting and records ``on_persistent_failure``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from corestore import hookimpl
from corestore.health import HealthStatus
from corestore.settings import boolean
from corestore.store import open_stores

if TYPE_CHECKING:  # pragma: no cover
    from corestore import HealthReport, Store

__all__ = ["Probes", "HealthEndpoints", "make_wsgi_app", "make_asgi_app", "PATHS"]

logger = logging.getLogger(__name__)

PATHS = ("/livez", "/readyz", "/startupz", "/healthz", "/metrics")

_persistent: dict[str, float] = {}  # database path -> the plugin's clock() when on_persistent_failure last fired
_persistent_lock = threading.Lock()


class Probes:
    """Marks a database critical for readiness and records ``on_persistent_failure`` for the
    liveness opt-in. Settings:

    ========  =====  =======  =====================================================================
    key       type   default  meaning
    ========  =====  =======  =====================================================================
    critical  bool   false    ``/readyz`` fails while this database's breaker is open, it is
                              quarantined or DOWN
    ========  =====  =======  =====================================================================
    """

    name: ClassVar[str] = "probes"

    @attrs.frozen(kw_only=True)
    class Settings:
        critical: bool = attrs.field(default=False, validator=boolean,
                                     metadata={"help": "readiness fails while this database is unusable"})

    def __init__(self, settings: Probes.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`): the same
        keyword and ``clock`` attribute as every shipped plugin that reads the time; it stamps
        ``on_persistent_failure``."""
        self.settings = settings if settings is not None else Probes.Settings()
        self.clock: Callable[[], float] = clock
        self._path: str | None = None

    @hookimpl
    def on_store_open(self, store: Store) -> None:
        self._path = store.path

    @hookimpl
    def on_persistent_failure(self, store: Store) -> None:
        with _persistent_lock:
            _persistent[store.path] = self.clock()

    @hookimpl
    def on_fork_child(self, store: Store) -> None:
        """In a forked child: a new lock (another thread of the parent may have held it)."""
        global _persistent_lock
        _persistent_lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        """``critical`` (this database fails ``/readyz`` while unusable) and
        ``persistent_failure_age_s`` (seconds since ``on_persistent_failure`` fired for it in this
        process; None: never): the same ``stats()`` every shipped plugin has."""
        with _persistent_lock:
            at = _persistent.get(self._path) if self._path is not None else None
        return {"critical": self.settings.critical,
                "persistent_failure_age_s": None if at is None else max(0.0, self.clock() - at)}


Response = tuple[int, str, bytes]


class HealthEndpoints:
    """The five endpoints as one function of the path: ``handle(path) -> (status, content type,
    body)``; :func:`make_wsgi_app` and :func:`make_asgi_app` put it on the wire.

    :param expect: the stores ``/startupz`` waits for: paths, names bound in ``config``'s
        ``[databases]``, or :class:`~corestore.Store` objects.
    :param critical: more databases (paths or bound names) to treat as critical, beside those
        whose profile sets ``[settings.probes] critical = true``.
    :param config: the config file that binds the names (as ``corestore.open(config=)``).
    :param fail_liveness_on_persistent_failure: let ``/livez`` fail after
        ``on_persistent_failure`` (stores enabling ``probes`` only).
    """

    def __init__(self, *, expect: Iterable[Any] = (), critical: Iterable[str] = (), config: str | None = None,
                 fail_liveness_on_persistent_failure: bool = False) -> None:
        self.expect = tuple(self._path(e, config) for e in expect)
        self.critical = frozenset(self._path(c, config) for c in critical)
        self.fail_liveness = fail_liveness_on_persistent_failure

    @staticmethod
    def _path(target: Any, config: str | None) -> str:
        if hasattr(target, "path") and hasattr(target, "profile"):
            return str(target.path)
        from corestore.opening import _resolve  # the exact resolution corestore.open() applies

        return _resolve(str(target), None, config).path

    # -- the probes --------------------------------------------------------------------------
    def stores(self) -> list[Store]:
        return [s for s in open_stores() if not s.closed]

    def is_critical(self, store: Store) -> bool:
        plugin = store.plugins.get("probes")
        return store.path in self.critical or bool(plugin is not None and plugin.settings.critical)

    def livez(self) -> Response:
        if self.fail_liveness:
            with _persistent_lock:
                failing = {s.path: _persistent[s.path] for s in self.stores() if s.path in _persistent}
            if failing:
                return _json(503, {"status": "fail", "checked": "on_persistent_failure (opt-in)",
                                   "persistent_failure": sorted(failing)})
        return _json(200, {"status": "ok", "checked": "the process answers; database health never fails liveness"
                                                     + (" (except after on_persistent_failure: opted in)"
                                                        if self.fail_liveness else "")})

    def readyz(self) -> Response:
        from corestore_plugins import _observe

        failing: dict[str, list[str]] = {}
        checked = []
        for store in self.stores():
            if not self.is_critical(store):
                continue
            checked.append(store.path)
            reasons = []
            state = _observe.breaker_state(store)
            if state in ("open", "isolated"):
                reasons.append(f"circuit breaker {state}")
            if _observe.quarantined(store):
                reasons.append("quarantined")
            report = store.health(probe=False)
            if report.status is HealthStatus.DOWN:
                reasons.append("health DOWN")
            if reasons:
                failing[store.path] = reasons
        body = {"status": "fail" if failing else "ok", "critical": checked, "failing": failing,
                "checked": "critical databases: breaker open/isolated, quarantined, health DOWN (no database I/O)"}
        return _json(503 if failing else 200, body)

    def startupz(self) -> Response:
        open_paths = {s.path for s in self.stores()}
        missing = [p for p in self.expect if p not in open_paths]
        body = {"status": "fail" if missing else "ok", "expected": list(self.expect), "not_open": missing,
                "checked": "every expected store is open in this process"}
        return _json(503 if missing else 200, body)

    def healthz(self) -> Response:
        reports: dict[str, Any] = {}
        worst = HealthStatus.UNKNOWN
        for store in self.stores():
            report: HealthReport = store.health(probe=False)
            reports[store.path] = report.to_dict()
            worst = max(worst, report.status, key=_rank)
        body = {"status": worst.value, "databases": reports,
                "checked": "store.health(probe=False) of every store open in this process"}
        return _json(503 if worst is HealthStatus.DOWN else 200, body)

    def metrics(self) -> Response:
        try:
            from . import prometheus
        except ImportError as err:
            return 404, "text/plain; charset=utf-8", f"/metrics needs prometheus_client: {err}\n".encode()
        body, content_type = prometheus.render()
        return 200, content_type, body

    def handle(self, path: str) -> Response:
        """The response for ``path`` (404 for anything else, naming the endpoints)."""
        route: dict[str, Callable[[], Response]] = {
            "/livez": self.livez, "/readyz": self.readyz, "/startupz": self.startupz,
            "/healthz": self.healthz, "/metrics": self.metrics,
        }
        fn = route.get(path.rstrip("/") or "/")
        if fn is None:
            return 404, "text/plain; charset=utf-8", f"not found; endpoints: {', '.join(PATHS)}\n".encode()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - a probe answers, it does not crash the server
            logger.exception("health endpoint %s failed", path)
            return 500, "text/plain; charset=utf-8", f"{path} failed: {type(err).__name__}: {err}\n".encode()


_ORDER = {HealthStatus.UNKNOWN: 0, HealthStatus.UP: 1, HealthStatus.DEGRADED: 2, HealthStatus.DOWN: 3}


def _rank(status: HealthStatus) -> int:
    return _ORDER[status]


def _json(status: int, body: Any) -> Response:
    return status, "application/json", (json.dumps(body, sort_keys=True, default=str) + "\n").encode()


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


def make_wsgi_app(endpoints: HealthEndpoints | None = None, **kwargs: Any) -> Callable[..., Iterable[bytes]]:
    """A WSGI application serving the endpoints (``PATH_INFO`` relative to where it is mounted)."""
    endpoints = endpoints or HealthEndpoints(**kwargs)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"GET only\n"
        else:
            status, ctype, body = endpoints.handle(environ.get("PATH_INFO") or "/")
        start_response(f"{status} {_REASONS.get(status, '')}", [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                                                ("Cache-Control", "no-store")])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return app


def make_asgi_app(endpoints: HealthEndpoints | None = None, **kwargs: Any) -> Callable[..., Any]:
    """An ASGI 3 application serving the endpoints (the path relative to ``root_path``); the
    checks run in a worker thread (``asyncio.to_thread``), never blocking the event loop.
    Answers ``lifespan`` events so it also runs on its own under uvicorn."""
    endpoints = endpoints or HealthEndpoints(**kwargs)

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"GET only\n"
        else:
            status, ctype, body = await asyncio.to_thread(endpoints.handle, path)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app
