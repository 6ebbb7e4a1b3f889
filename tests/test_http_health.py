"""Probe-aware HTTP health on real servers: the WSGI app under wsgiref and the ASGI app under
uvicorn, on 127.0.0.1 with an ephemeral port, asked with a real HTTP client (urllib); the
breaker opens through real faults (the failpoint VFS); /metrics parses with prometheus_client's
text parser; multiprocess mode with two real worker processes; ``corestore serve-health``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import corestore
from corestore import Profile

prometheus_client = pytest.importorskip("prometheus_client", reason="needs prometheus_client (the test extra)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from corestore_contrib import http_health  # noqa: E402
from corestore_contrib.prometheus import METRICS  # noqa: E402

from helpers import child_env  # noqa: E402

PRAGMAS = {"busy_timeout": 200, "journal_mode": "wal", "synchronous": "normal"}
DEADLINE_S = 15.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_server() -> Iterator[Callable[[Any], str]]:
    servers: list[Any] = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture
def asgi_server() -> Iterator[Callable[[Any], str]]:
    uvicorn = pytest.importorskip("uvicorn", reason="needs uvicorn (the test extra)")
    servers: list[Any] = []

    def start(app: Any) -> str:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_for(lambda: server.started, "uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


def open_critical(tmp_path: Path, failpoint: Any, **settings: Any) -> corestore.Store:
    store = corestore.open(Profile(
        path=str(tmp_path / "crit.db"), plugins=("circuit_breaker", "health", "prometheus", "probes"),
        driver="apsw", vfs=failpoint.name, pragmas=PRAGMAS,
        settings={"circuit_breaker": {"failure_threshold": 2, "cooldown_s": 0.3}, "probes": {"critical": True},
                  **settings}))
    store.database.execute_sql("create table t(x)")
    return store


def write(store: corestore.Store) -> None:
    with store.transaction():
        store.database.execute_sql("insert into t values (1)")


def readiness_cycle(base: str, store: corestore.Store, failpoint: Any) -> None:
    """/readyz 200 -> 503 while the breaker is open (real IOERR) -> 200 after recovery; /livez 200 throughout."""
    assert get(base + "/readyz")[0] == 200
    assert get(base + "/livez")[0] == 200
    with failpoint.armed(op="write", file="wal", code="IOERR_WRITE"):
        for _ in range(2):
            with pytest.raises(corestore.FatalError):
                write(store)
    status, body = get(base + "/readyz")
    assert status == 503, body
    assert json.loads(body)["failing"][store.path] == ["circuit breaker open", "health DOWN"]
    assert get(base + "/livez")[0] == 200  # an unhealthy database never fails liveness
    # recovery: after the cooldown the next write is the half-open probe; it succeeds and closes it
    wait_for(lambda: store.plugin("circuit_breaker").breaker.retry_after() == 0, "the breaker's cooldown")
    write(store)
    wait_for(lambda: get(base + "/readyz")[0] == 200, "/readyz back to 200")
    assert get(base + "/livez")[0] == 200


def test_wsgi_readiness_follows_a_critical_breaker(tmp_path: Path, failpoint: Any, wsgi_server: Any) -> None:
    store = open_critical(tmp_path, failpoint)
    base = wsgi_server(http_health.make_wsgi_app(expect=[store]))
    readiness_cycle(base, store, failpoint)
    status, body = get(base + "/healthz")
    assert status == 200 and store.path in json.loads(body)["databases"]
    assert get(base + "/nope")[0] == 404
    assert store.plugin("probes").stats()["critical"] is True
    assert store.plugin("prometheus").stats() == {"database": store.path, "refresh_s": 1.0, "attached": True,
                                                  "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))}
    store.close()
    assert store.plugin("prometheus").stats()["attached"] is False


def test_asgi_under_uvicorn_readiness_and_metrics(tmp_path: Path, failpoint: Any, asgi_server: Any) -> None:
    store = open_critical(tmp_path, failpoint)
    base = asgi_server(http_health.make_asgi_app(expect=[store]))
    readiness_cycle(base, store, failpoint)
    status, body = get(base + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    # prometheus_client's parser names counter families without _total
    exported = {name.removesuffix("_total") for name in METRICS if name != "corestore_accounting_queue_depth"
                and "accounting" not in name and "quarantined" not in name}
    assert exported <= set(families), exported - set(families)
    opened = [s for s in families["corestore_breaker_transitions"].samples
              if s.labels.get("database") == store.path and s.labels.get("state") == "open" and s.name.endswith("_total")]
    assert opened and opened[0].value >= 1
    errors = [s for s in families["corestore_operation_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels.get("error_type") == "SQLITE_IOERR_WRITE"]
    assert errors and errors[0].value == 2
    store.close()


def test_a_non_critical_database_never_fails_readiness(tmp_path: Path, failpoint: Any, wsgi_server: Any) -> None:
    store = open_critical(tmp_path, failpoint, probes={"critical": False})
    base = wsgi_server(http_health.make_wsgi_app())
    store.plugin("circuit_breaker").isolate("operator")
    assert get(base + "/readyz")[0] == 200
    # ... unless the application names it critical
    base2 = wsgi_server(http_health.make_wsgi_app(critical=[store.path]))
    assert get(base2 + "/readyz")[0] == 503
    store.plugin("circuit_breaker").reset()
    assert get(base2 + "/readyz")[0] == 200
    store.close()


def test_startup_waits_for_the_expected_stores(tmp_path: Path, wsgi_server: Any) -> None:
    path = str(tmp_path / "later.db")
    base = wsgi_server(http_health.make_wsgi_app(expect=[path]))
    status, body = get(base + "/startupz")
    assert status == 503 and json.loads(body)["not_open"] == [os.path.realpath(path)]
    store = corestore.open(Profile(path=path, pragmas=PRAGMAS))
    assert get(base + "/startupz")[0] == 200
    store.close()
    assert get(base + "/startupz")[0] == 503


def test_liveness_opt_in_after_on_persistent_failure(tmp_path: Path, wsgi_server: Any) -> None:
    store = corestore.open(Profile(path=str(tmp_path / "p.db"), plugins=("probes",), pragmas=PRAGMAS))
    plain = wsgi_server(http_health.make_wsgi_app())
    opted = wsgi_server(http_health.make_wsgi_app(fail_liveness_on_persistent_failure=True))
    assert get(opted + "/livez")[0] == 200
    probes = store.plugin("probes")
    assert probes.stats() == {"critical": False, "persistent_failure_age_s": None}
    # the hook fired through the store's own hook caller: the fault paths that lead to it
    # (accounting's escalation, quarantine's first trip) are tested with those plugins
    store.hooks.on_persistent_failure(store, store.health(probe=False))
    assert get(opted + "/livez")[0] == 503
    assert get(plain + "/livez")[0] == 200  # not opted in: liveness never fails for a database
    age = probes.stats()["persistent_failure_age_s"]
    assert age is not None and 0 <= age < 30
    store.close()
    assert get(opted + "/livez")[0] == 200  # the store is gone: nothing to restart for


WORKER = r"""
import os, sys, corestore
from corestore import Profile
path, n = sys.argv[1], int(sys.argv[2])
store = corestore.open(Profile(path=path, plugins=("circuit_breaker", "prometheus"),
                               pragmas={"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal"}))
store.database.execute_sql("create table if not exists t(x unique)")
for i in range(n):
    with store.transaction():
        store.database.execute_sql("insert or ignore into t values (?)", (f"{os.getpid()}-{i}",))
try:
    store.database.execute_sql("insert into t values (?)", (f"{os.getpid()}-0",))
except corestore.ConstraintError:
    pass
from corestore_contrib.prometheus import render
body, _ = render()
print(body.decode().count("corestore_operation_duration_seconds_count"), flush=True)
store.close()
"""


def test_multiprocess_mode_with_two_worker_processes(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = child_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    db = str(tmp_path / "mp.db")
    corestore.open(Profile(path=db, pragmas=PRAGMAS)).close()  # create it (WAL) before the workers race
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, db, "25"], env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=60)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert all(int(o.strip()) >= 1 for o in outs)  # render() in a worker merged the files
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    counts = {(s.labels["operation"], s.labels["error_type"]): s.value
              for s in families["corestore_operation_duration_seconds"].samples if s.name.endswith("_count")
              and s.labels["database"] == os.path.realpath(db)}
    assert counts[("write", "")] == 2 * (25 + 1)  # both workers' transactions (+ each one's CREATE), summed
    assert counts[("write", "SQLITE_CONSTRAINT_UNIQUE")] == 2
    states = [s for s in families["corestore_breaker_state"].samples if s.labels["state"] == "closed"]
    assert states and states[0].value == 1  # livemax over the two workers
    assert "corestore_wal_bytes" in families and "corestore_sqlite_version_info" in families


def test_serve_health_reports_from_outside(tmp_path: Path) -> None:
    db = str(tmp_path / "outside.db")
    store = corestore.open(Profile(path=db, pragmas=PRAGMAS))
    store.database.execute_sql("create table t(x)")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from corestore.cli import main; sys.exit(main())",
                             "serve-health", "--port", "0", "--critical", db, db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        line = proc.stdout.readline()
        assert "observable from outside the application process" in line, (line, proc.stderr.read() if proc.poll() else "")
        base = line.split()[2].rstrip("/")
        assert get(base + "/livez")[0] == 200
        assert get(base + "/startupz")[0] == 200
        status, body = get(base + "/healthz")
        assert status == 200 and json.loads(body)["databases"][db]["status"] in ("up", "unknown")
        assert get(base + "/readyz")[0] == 200
        status, body = get(base + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["corestore_health_status"].samples[0].value in (0, 1)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
        store.close()


def test_the_core_cli_does_not_import_contrib() -> None:
    for module in Path(corestore.__file__).parent.rglob("*.py"):
        assert "corestore_contrib" not in module.read_text(), module
    from corestore.cli import CLI_ENTRY_POINT_GROUP, COMMANDS, build_parser

    parser = build_parser()  # adds the commands of the entry-point group
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert CLI_ENTRY_POINT_GROUP == "corestore.cli" and "serve-health" in sub.choices
    assert "serve-health" not in COMMANDS  # an entry point's register(subparsers), not a core command


def test_serve_health_reads_the_snapshot_then_checks_read_only(tmp_path: Path) -> None:
    """serve-health reads a live snapshot in its own process (corestore.sidecar_formats); once the
    writer closed the store, the snapshot no longer speaks for it and a read-only check does."""
    from corestore_contrib.serve_health import OutsideView

    config = tmp_path / "corestore.toml"
    config.write_text('[databases.app]\npath = "app.db"\n[databases.app.settings.health]\n'
                      'snapshot_path = "app.health.json"\n')
    store = corestore.open("app", config=str(config))
    try:
        store.database.execute_sql("create table t(x)")
        store.health()
        assert store.plugin("health").flush()
        view = OutsideView(["app"], critical=["app"], config=str(config), cache_s=0, timeout_s=60)
        status, _ctype, body = view.handle("/healthz")
        report = json.loads(body)["databases"]["app"]
        assert status == 200 and report["status"] == "up"
        assert report["source"] == {"kind": "snapshot", "snapshot_path": str(tmp_path / "app.health.json"),
                                    "pid": os.getpid(), "host": report["source"]["host"],
                                    "written_at": report["source"]["written_at"]}
        assert view.handle("/readyz")[0] == 200
    finally:
        store.close()
    status, _ctype, body = view.handle("/healthz")  # closed: the child's read-only check answers
    report = json.loads(body)["databases"]["app"]
    assert report["source"]["kind"] == "live" and "closed the store" in report["source"]["snapshot_skipped"]
    assert status == 200 and report["status"] in ("up", "degraded")
