"""`corestore health NAME|PATH` through the real entry point (``python -m corestore.cli``): the
snapshot of a running process, the read-only fallback, exit codes and the ``--json`` schema."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import child_env

CLI = [sys.executable, "-m", "corestore.cli"]

CONFIG = """
[profiles.monitored]
plugins = ["health", "t_h_flap"]
[profiles.monitored.pragmas]
journal_mode = "wal"
busy_timeout = 2000
[profiles.monitored.settings.health]
snapshot_path = "app.health.json"

[profiles.plain]
plugins = ["health"]
[profiles.plain.pragmas]
journal_mode = "wal"

[databases.app]
path = "app.db"
profile = "monitored"
"""


@pytest.fixture
def env(tmp_path: Path, install_plugins) -> dict[str, str]:
    """A config in tmp_path and the test plugins installed for child processes too."""
    site = install_plugins(t_h_flap="test_health:Flapper")
    (tmp_path / "corestore.toml").write_text(CONFIG)
    environment = child_env()
    environment["PYTHONPATH"] = os.pathsep.join([str(site), environment["PYTHONPATH"]])
    environment.pop("CORESTORE_CONFIG", None)
    return environment


def cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


def health_json(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    proc = cli(tmp_path, env, "health", *args, "--json")
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


APP = """
    import sys
    import corestore
    from corestore import HealthStatus
    store = corestore.open("app", config="corestore.toml")
    store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (x)")
    store.health()
    health = store.plugin("health")
    for line in sys.stdin:
        command = line.strip()
        if command == "close":
            store.close()
            print("closed", flush=True)
            continue
        store.plugin("t_h_flap").status = HealthStatus[command]
        store.health()
        assert health.flush()
        print("ok", flush=True)
"""


class App:
    """The application: a separate process with the store open, driven over stdin."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(APP)], cwd=tmp_path, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() in ("ok", "closed")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def app(tmp_path: Path, env: dict[str, str]) -> Iterator[App]:
    running = App(tmp_path, env)
    yield running
    if running.proc.poll() is None:
        running.kill()


def test_reads_the_snapshot_of_a_running_process(tmp_path: Path, env: dict[str, str], app: App) -> None:
    for status, code in (("UP", 0), ("DEGRADED", 1), ("DOWN", 2)):
        app.send(status)
        rc, data = health_json(tmp_path, env, "app")
        assert rc == code and data["exit_code"] == code and data["status"] == status.lower()
        assert data["source"]["kind"] == "snapshot" and data["source"]["pid"] == app.proc.pid
        assert data["source"]["snapshot_path"] == str(tmp_path / "app.health.json")
        assert data["components"]["t_h_flap"]["status"] == status.lower()
        assert data["database"] == str(tmp_path / "app.db") and data["profile"] == "monitored"
    human = cli(tmp_path, env, "health", "app")
    assert human.returncode == 2
    lines = human.stdout.splitlines()
    assert lines[0] == f"corestore health: {tmp_path / 'app.db'} (profile monitored)"
    assert f"written by pid {app.proc.pid}" in lines[1]
    assert lines[2].split() == ["COMPONENT", "STATUS", "SUMMARY"]
    assert any(ln.split()[:2] == ["t_h_flap", "DOWN"] for ln in lines)
    assert lines[-1] == "status: DOWN (exit 2)"


def test_a_dead_writer_falls_back_to_a_read_only_check(tmp_path: Path, env: dict[str, str], app: App) -> None:
    app.send("DOWN")
    snapshot = (tmp_path / "app.health.json").read_bytes()
    app.kill()  # the application died; its snapshot still says DOWN
    rc, data = health_json(tmp_path, env, "app")
    assert rc == 0 and data["source"]["kind"] == "live"
    assert "no longer running" in data["source"]["snapshot_skipped"]
    assert data["components"]["database"]["summary"] == "probe ok"
    assert (tmp_path / "app.health.json").read_bytes() == snapshot  # the CLI never writes the snapshot


def test_a_closed_store_falls_back_to_a_read_only_check(tmp_path: Path, env: dict[str, str], app: App) -> None:
    app.send("DEGRADED")
    app.send("close")
    rc, data = health_json(tmp_path, env, "app")
    assert rc == 0 and data["source"]["kind"] == "live"
    assert "closed the store" in data["source"]["snapshot_skipped"]


def test_live_check_of_a_path_and_the_json_schema(tmp_path: Path, env: dict[str, str]) -> None:
    db = tmp_path / "data.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    rc, data = health_json(tmp_path, env, str(db), "--profile", "plain")
    assert rc == 0
    assert set(data) == {"status", "database", "profile", "checked_at", "components", "source", "not_checked", "exit_code"}
    assert data["status"] == "up" and data["profile"] == "plain" and data["source"] == {"kind": "live"}
    assert list(data["components"]) == ["database", "health", "sqlite_version"]
    for component in data["components"].values():
        assert set(component) == {"status", "summary", "details"}
        assert component["status"] in ("unknown", "up", "degraded", "down")
    assert data["components"]["database"]["details"]["path"] == str(db)
    # the global --json before the command gives the same document
    again = subprocess.run([*CLI, "--json", "health", str(db), "--profile", "plain"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 0 and set(json.loads(again.stdout)) == set(data)


def test_read_only_check_never_switches_the_journal_mode(tmp_path: Path, env: dict[str, str]) -> None:
    db = tmp_path / "legacy.db"
    conn = sqlite3.connect(db)  # a rollback-journal file; the profile asks for WAL
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    for profile in ("plain", "default"):
        proc = cli(tmp_path, env, "health", str(db), "--profile", profile, "--json")
        assert proc.returncode in (0, 2), proc.stderr
        json.loads(proc.stdout)
        assert db.read_bytes() == before
        assert before[18:20] == b"\x01\x01"  # still a rollback journal


def test_missing_database_is_down_and_not_created(tmp_path: Path, env: dict[str, str]) -> None:
    rc, data = health_json(tmp_path, env, str(tmp_path / "gone.db"), "--profile", "plain")
    assert rc == 2 and data["status"] == "down"
    assert "does not exist" in data["components"]["database"]["summary"]
    assert not (tmp_path / "gone.db").exists()


def test_usage_and_config_errors_exit_64(tmp_path: Path, env: dict[str, str]) -> None:
    unbound = cli(tmp_path, env, "health", "orders")
    assert unbound.returncode == 64 and "'orders' is not bound in [databases]" in unbound.stderr
    assert cli(tmp_path, env, "health", str(tmp_path)).returncode == 64  # a directory
    assert cli(tmp_path, env, "health", ":memory:").returncode == 64
    assert cli(tmp_path, env, "health", "x.db", "--profile", "nope").returncode == 64
    assert cli(tmp_path, env, "health").returncode == 64
    (tmp_path / "bad.toml").write_text("[profiles.x]\ncolour = 'red'\n")
    bad = cli(tmp_path, env, "--config", "bad.toml", "health", "x.db")
    assert bad.returncode == 64 and "unknown key 'colour'" in bad.stderr
