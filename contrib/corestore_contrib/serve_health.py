"""``corestore serve-health``: a standalone HTTP health server for databases another process
uses, added through the ``corestore.cli`` entry-point group (``serve-health =
"corestore_contrib.serve_health:register"``; the core never imports ``corestore_contrib``).

It reports what is observable from *outside* the application's process: each database's health
snapshot when its profile writes one (``[settings.health] snapshot_path``), read in this process
with :func:`corestore.sidecar_formats.read_snapshot` while its writer is alive and has not closed
the store; else a read-only check (``corestore health NAME --json`` in a child process, bounded
in time). Live breaker and
accounting state exist only inside the application: mount :mod:`corestore_contrib.http_health`
there for those. Every response says so.

* ``/livez``: 200 while this server runs.
* ``/readyz``: 503 when a database named with ``--critical`` reports DOWN (or cannot be checked).
* ``/startupz``: 503 until every database file exists.
* ``/healthz``: the reports as JSON (503 when one is DOWN).
* ``/metrics``: ``corestore_health_status{database}`` (0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN) in the
  Prometheus text format.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from corestore.cli import add_command, config_path
from corestore.health import HealthStatus
from corestore.sidecar_formats import read_snapshot

__all__ = ["OutsideView", "main", "register"]

logger = logging.getLogger(__name__)

OBSERVED_FROM = ("outside the application process: health snapshots and read-only checks; live breaker, "
                 "accounting and quarantine state need corestore_contrib.http_health inside the application")
_VALUES = {"unknown": 0, "up": 1, "degraded": 2, "down": 3}


class OutsideView:
    """Reports for ``targets`` (names bound in the config, or paths), cached for ``cache_s``."""

    def __init__(self, targets: list[str], *, critical: list[str], config: str | None, cache_s: float = 2.0,
                 timeout_s: float = 20.0) -> None:
        self.targets = targets
        self.critical = critical
        self.config = config
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None

    def _check(self, target: str) -> dict[str, Any]:
        snapshot = self._live_snapshot(target)
        if snapshot is not None:
            return snapshot
        cmd = [sys.executable, "-c", "import sys; from corestore.cli import main; sys.exit(main())", "health", target, "--json"]
        if self.config:
            cmd[4:4] = ["--config", self.config]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "unknown", "error": f"`corestore health {target}` took more than {self.timeout_s:g} s"}
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {"status": "unknown", "error": (done.stderr or done.stdout).strip()[-500:]}

    def reports(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cache is not None and now - self._cache[0] < self.cache_s:
                return self._cache[1]
            data = {t: self._check(t) for t in self.targets}
            self._cache = (now, data)
            return data

    def handle(self, path: str) -> tuple[int, str, bytes]:
        path = path.rstrip("/") or "/"
        if path == "/livez":
            return _json(200, {"status": "ok", "observed_from": OBSERVED_FROM})
        if path == "/startupz":
            missing = [t for t in self.targets if not os.path.exists(self._path_of(t))]
            return _json(503 if missing else 200, {"status": "fail" if missing else "ok", "missing": missing,
                                                   "observed_from": OBSERVED_FROM})
        if path in ("/readyz", "/healthz", "/metrics"):
            reports = self.reports()
            if path == "/metrics":
                lines = ["# HELP corestore_health_status Aggregate health seen from outside: 0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN",
                         "# TYPE corestore_health_status gauge"]
                for target, report in reports.items():
                    name = report.get("database") or target
                    lines.append(f'corestore_health_status{{database="{_escape(name)}"}} {_VALUES.get(report.get("status"), 0)}')
                return 200, "text/plain; version=0.0.4; charset=utf-8", ("\n".join(lines) + "\n").encode()
            if path == "/readyz":
                failing = {t: reports[t].get("status") for t in self.critical
                           if t in reports and reports[t].get("status") in ("down", "unknown")}
                return _json(503 if failing else 200, {"status": "fail" if failing else "ok", "critical": self.critical,
                                                       "failing": failing, "observed_from": OBSERVED_FROM})
            down = any(r.get("status") == "down" for r in reports.values())
            return _json(503 if down else 200, {"databases": reports, "observed_from": OBSERVED_FROM})
        return 404, "text/plain; charset=utf-8", b"not found; endpoints: /livez /readyz /startupz /healthz /metrics\n"

    def _path_of(self, target: str) -> str:
        try:
            from corestore.profiles import load_config

            cfg = load_config(self.config)
            if cfg is not None and target in cfg.databases:
                binding = cfg.databases[target]
                base = os.path.dirname(os.path.abspath(self.config or "."))
                return os.path.join(base, os.path.expanduser(binding.path))
        except Exception:  # noqa: BLE001 - a bad config shows in /healthz
            pass
        return target

    def _live_snapshot(self, target: str) -> dict[str, Any] | None:
        """The target's health snapshot (read through :func:`corestore.sidecar_formats.read_snapshot`)
        when its profile writes one and the writer still speaks for the store; None otherwise
        (then the child check decides, and says why)."""
        try:
            from corestore.profiles import load_config, resolve_profile
            from corestore_plugins.health import snapshot_path_for

            cfg = load_config(self.config)
            binding = cfg.databases.get(target) if cfg is not None else None
            name = binding.profile if binding is not None else "default"
            profile = resolve_profile(name, config=cfg, path=self._path_of(target), binding=binding)
            path = snapshot_path_for(profile)
            if path is None:
                return None
            data = read_snapshot(path)
        except Exception as err:  # noqa: BLE001 - no usable snapshot: the read-only check reports
            logger.debug("serve-health: no snapshot for %s: %s", target, err)
            return None
        meta = data.pop("snapshot")
        if meta.get("closed") or (meta.get("host") == socket.gethostname() and not _pid_alive(meta.get("pid"))):
            return None
        data["source"] = {"kind": "snapshot", "snapshot_path": path, "pid": meta.get("pid"),
                          "host": meta.get("host"), "written_at": meta.get("written_at")}
        return data


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _json(status: int, body: Any) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(body, sort_keys=True, default=str) + "\n").encode()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        logger.info("%s %s", self.address_string(), format % args)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="NAME|PATH",
                   help="databases to report (default: every name bound in the config's [databases])")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; a kubelet probe needs the pod's address, e.g. 0.0.0.0)")
    p.add_argument("--port", type=int, default=8079, help="port (default 8079; 0: any free port)")
    p.add_argument("--critical", action="append", default=[], metavar="NAME|PATH",
                   help="a database whose DOWN fails /readyz (repeatable)")
    p.add_argument("--cache-s", type=float, default=2.0, help="seconds a check is reused (default 2)")


def main(args: argparse.Namespace) -> int:
    config = config_path(args)
    targets = list(args.targets)
    if not targets and config:
        from corestore.profiles import load_config

        cfg = load_config(config)
        targets = sorted(cfg.databases) if cfg else []
    if not targets:
        from corestore.errors import ConfigError

        raise ConfigError("serve-health: name at least one database (NAME|PATH) or bind some in the config's [databases]")
    view = OutsideView(targets, critical=list(args.critical), config=config, cache_s=args.cache_s)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, ctype, body = view.handle(environ.get("PATH_INFO") or "/")
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
        start_response(f"{status} {reason}", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    server: WSGIServer = make_server(args.host, args.port, app, handler_class=_QuietHandler)
    host, port = server.server_address[:2]
    print(f"corestore serve-health: http://{host}:{port}/ (livez readyz startupz healthz metrics) for "
          f"{', '.join(targets)}; reports what is observable from {OBSERVED_FROM}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return int(HealthStatus.UP.exit_code)


HELP = "serve /livez /readyz /startupz /healthz /metrics over HTTP for databases used by another process"


def register(subparsers: Any) -> None:
    """The ``corestore.cli`` entry point: add ``corestore serve-health``."""
    add_command(subparsers, "serve-health", HELP, _args, main)
