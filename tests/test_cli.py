"""The CLI through its real entry point: ``demo``, ``plugins``, ``profiles [--check]``, ``--json``
and the exit codes (0 UP, 64 usage or config error)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import child_env


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = child_env()
    env.pop("CORESTORE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "corestore.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def test_demo_writes_accounts_and_reports_up(tmp_path: Path) -> None:
    out = cli("--json", "demo", "--dir", str(tmp_path), "--threads", "3", "--seconds", "0.5")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["writes"] > 0 and data["rows"] == data["writes"] and data["errors"] == {}
    from corestore.profiles import _MITIGATE_BY_DEFAULT, WAL_RESET_MITIGATION

    mitigation = list(WAL_RESET_MITIGATION) if _MITIGATE_BY_DEFAULT else []  # issue 20: the default's mitigation
    assert data["profile"] == ["wal_guard", "wal_invariants", "circuit_breaker", "health"] + mitigation + ["accounting"]
    acc = data["accounting"]
    assert acc["pending"] == 0 and acc["written"] == acc["accepted"] == data["accounted_rows"]
    assert data["health"]["status"] == "up"
    assert set(data["health"]["components"]) >= {"database", "wal_guard", "circuit_breaker", "accounting"}
    assert os.path.exists(tmp_path / "demo.db")


def test_demo_human_output(tmp_path: Path) -> None:
    out = cli("demo", "--dir", str(tmp_path), "--threads", "1", "--seconds", "0.2")
    assert out.returncode == 0, out.stderr
    assert "committed by 1 threads" in out.stdout and "health     UP" in out.stdout


def test_profiles_check_and_config_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[profiles.ingest]\nextends = "default"\nenable = ["accounting"]\n'
                    '[profiles.ingest.settings.accounting]\nqueue_size = 10\n'
                    '[databases.events]\npath = "events.db"\nprofile = "ingest"\n')
    out = cli("--json", "--config", str(good), "profiles", "--check")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    names = {p["name"]: p for p in data["profiles"]}
    assert names["ingest"]["check"] == "ok" and "accounting" in names["ingest"]["plugins"]
    assert data["databases"]["events"]["path"] == str(tmp_path / "events.db")

    bad = tmp_path / "bad.toml"
    bad.write_text('[profiles.ingest]\nextends = "default"\nenable = ["accounting"]\n'
                   '[profiles.ingest.settings.accounting]\nqueue_sise = 10\n')
    out = cli("--config", str(bad), "profiles", "--check")
    assert out.returncode == 64
    assert str(bad) in out.stderr and "unknown key 'queue_sise'" in out.stderr and "queue_size" in out.stderr


def test_cli_reads_corestore_toml_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "corestore.toml").write_text('[profiles.local]\nplugins = []\n')
    out = cli("--json", "profiles", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"] == str(tmp_path / "corestore.toml")


def test_usage_errors_exit_64() -> None:
    assert cli().returncode == 64
    assert cli("no-such-command").returncode == 64
    out = cli("demo", "--threads", "0")
    assert out.returncode == 64 and "--threads must be >= 1" in out.stderr
