"""Issue 16, items 4-9, through the public API and the real ``corestore`` console script:
accounting never swallows rows for a table it cannot write (4); ``health`` and ``doctor`` resolve
bound names and work offline for every profile (5); profiles built in code and ``open(enable=,
disable=, settings=)`` (6); readable settings errors for third-party plugins (7); the CLI paper
cuts (8); a WAL database in a read-only directory (9). Items 1-3: test_hook_contract.py and
test_check_agreement.py."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import ConfigError, HealthStatus, Profile

from helpers import child_env

WAL = {"busy_timeout": 2000, "journal_mode": "wal", "synchronous": "normal"}


def console(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """The real ``corestore`` console script of this environment."""
    env = dict(env or child_env())
    env.pop("CORESTORE_CONFIG", None)
    env.pop("CORESTORE_PLUGINS", None)
    return subprocess.run([str(Path(sys.executable).parent / "corestore"), *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120, env=env, cwd=cwd)


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def usage_schema(store: corestore.Store) -> None:
    store.database.execute_sql("CREATE TABLE usage (id INTEGER PRIMARY KEY, tokens INTEGER NOT NULL, ts REAL)")


# -- 4. accounting: no silently lost rows -----------------------------------------------------------
def test_a_misspelled_table_is_refused_counted_and_degrades_health(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "a.db"), profile="minimal", enable=["accounting"], setup=usage_schema)
    acc = store.plugin("accounting")
    try:
        results = [acc.submit("usgae", {"tokens": i}) for i in range(1000)]
        assert acc.flush(10)
        wait_for(lambda: acc.submit("usgae", {"tokens": -1}) is False, "the writer to confirm 'usgae' is missing")
        assert acc.flush(10)
        st = acc.stats()
        accepted_early = sum(results)  # submitted before the writer first read the schema
        assert st["rejected_tables"] == {"usgae": st["rejected"]} and st["rejected"] >= 1000 - accepted_early
        assert st["dead_lettered"] == st["accepted"] and st["written"] == 0  # nothing claimed written
        component = store.health().components["accounting"]
        assert component.status is HealthStatus.DEGRADED and "'usgae'" in component.summary, component.summary
        assert component.details["rejected_tables"] == st["rejected_tables"]
        # the right table still works; acknowledging clears the component
        assert acc.submit("usage", {"tokens": 7}) and acc.flush(10)
        assert store.database.execute_sql("SELECT tokens FROM usage").fetchall() == [(7,)]
        assert acc.acknowledge_unknown_tables() == {"usgae": st["rejected"]}
        if st["dead_lettered"]:
            assert store.health().components["accounting"].status is HealthStatus.DEGRADED  # dead letters still count
            assert acc.acknowledge_dead_letters() == st["dead_lettered"]
        assert store.health().components["accounting"].status is HealthStatus.UP
    finally:
        store.close()


def test_on_unknown_table_raise_is_opt_in(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "a.db"), profile="minimal", enable=["accounting"], setup=usage_schema,
                           settings={"accounting": {"on_unknown_table": "raise"}})
    acc = store.plugin("accounting")
    try:
        acc.submit("usage", {"tokens": 1})
        assert acc.flush(10)

        def refused() -> bool:
            try:
                acc.submit("usgae", {"tokens": 1})
            except ConfigError as err:
                assert "has no table 'usgae'" in str(err) and "usage" in str(err)
                return True
            return False

        wait_for(refused, "submit() to raise for 'usgae'")
        assert acc.stats()["rejected_tables"]["usgae"] >= 1
    finally:
        store.close()


def test_a_table_created_after_open_is_accepted(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "a.db"), profile="minimal", enable=["accounting"], setup=usage_schema)
    acc = store.plugin("accounting")
    try:
        assert acc.submit("usage", {"tokens": 1}) and acc.flush(10)
        store.database.execute_sql("CREATE TABLE late (x INTEGER)")
        assert acc.submit("late", {"x": 1}) and acc.flush(10)
        assert store.database.execute_sql("SELECT x FROM late").fetchall() == [(1,)]
        assert acc.stats()["dead_lettered"] == 0
    finally:
        store.close()


def test_any_dead_letter_degrades_health_until_acknowledged(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "a.db"), profile="minimal", enable=["accounting"], setup=usage_schema)
    acc = store.plugin("accounting")
    try:
        assert acc.submit("usage", {"tokens": None})  # NOT NULL: the database refuses it
        assert acc.flush(10)  # settled: the row is in the dead-letter file
        component = store.health().components["accounting"]
        assert component.status is HealthStatus.DEGRADED and "1 row(s) dead-lettered" in component.summary
        assert [d.table for d in acc.dead_letters()] == ["usage"]
        assert acc.acknowledge_dead_letters() == 1
        assert store.health().components["accounting"].status is HealthStatus.UP
    finally:
        store.close()


# -- 5. health and doctor NAME, offline, for every profile ---------------------------------------------
@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A config binding 'main' to a profile that enables accounting; the service ran and stopped."""
    cfg = tmp_path / "corestore.toml"
    cfg.write_text('[profiles.main]\nextends = "default"\nenable = ["accounting"]\n\n'
                   '[databases.main]\npath = "data/main.db"\nprofile = "main"\n')
    (tmp_path / "data").mkdir()
    store = corestore.open("main", config=cfg, setup=usage_schema)
    store.close()
    return cfg


def test_health_name_works_offline_for_a_profile_with_accounting(service: Path) -> None:
    out = console("--config", str(service), "--json", "health", "main")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "up" and data["exit_code"] == 0 and data["profile"] == "main"
    assert data["not_checked"] == ["accounting"]
    assert data["components"]["accounting"]["status"] == "unknown"
    assert "not checked" in data["components"]["accounting"]["summary"]
    text = console("--config", str(service), "health", "main")
    assert text.returncode == 0 and "not checked (a read-only report cannot know): accounting" in text.stdout


def test_doctor_resolves_a_bound_name(service: Path) -> None:
    out = console("--config", str(service), "--json", "doctor", "main")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["path"] == str(service.parent / "data" / "main.db")


@pytest.mark.parametrize("command", ["health", "doctor"])
def test_unknown_names_exit_64_with_json(service: Path, command: str) -> None:
    out = console("--config", str(service), "--json", command, "mian")
    assert out.returncode == 64
    data = json.loads(out.stdout)  # valid JSON even for a usage error
    assert data["exit_code"] == 64 and "'mian' is not bound in [databases] (bound: main)" in data["error"]


# -- 6. profiles in code -------------------------------------------------------------------------------
def test_a_profile_built_in_code_is_not_called_default(tmp_path: Path) -> None:
    store = corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("accounting",)))
    try:
        assert store.profile.name == "custom" and store.health().profile == "custom"
        assert store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "delete"  # no default pragmas
    finally:
        store.close()


def test_open_composes_on_the_default_in_code(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "a.db"), enable=["accounting"], disable=["circuit_breaker"],
                           settings={"health": {"probe_interval_s": 2.5}, "accounting": {"batch_size": 10}})
    try:
        assert store.profile.name == "default"
        from corestore.profiles import _MITIGATE_BY_DEFAULT, WAL_RESET_MITIGATION

        mitigation = WAL_RESET_MITIGATION if _MITIGATE_BY_DEFAULT else ()  # issue 20: the default's mitigation
        assert store.profile.plugins == ("wal_guard", "wal_invariants", "health") + mitigation + ("accounting",)
        assert store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"  # the default's pragmas
        assert store.plugin("accounting").settings.batch_size == 10 and store.probe_interval_s == 2.5
        assert "corestore.open(enable=['accounting']" in store.profile.origin
    finally:
        store.close()
    named = corestore.open(str(tmp_path / "b.db"), profile="minimal", enable=["health"])
    try:
        assert named.profile.name == "minimal" and named.profile.plugins == ("health",)
    finally:
        named.close()
    with pytest.raises(ConfigError, match=r"settings.acounting: no installed plugin is called 'acounting'"):
        corestore.open(str(tmp_path / "c.db"), settings={"acounting": {"batch_size": 1}})
    with pytest.raises(ConfigError, match="take a list of plugin names"):
        corestore.open(str(tmp_path / "c.db"), enable="accounting")


# -- 7. readable settings errors from third-party plugins --------------------------------------------------
EXAMPLE = Path(__file__).resolve().parent.parent / "site" / "examples" / "acme_policy"


def test_the_guide_example_gives_readable_settings_errors(tmp_path: Path, install_plugins, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    site = install_plugins("acme-policy", acme_fault_budget="acme_policy:FaultBudget")
    try:
        for value, message in (('"3"', "max_faults = '3' must be an integer >= 1"),
                               ("0", "max_faults = 0 must be an integer >= 1")):
            cfg = tmp_path / "corestore.toml"
            cfg.write_text(f'[databases.app]\npath = "app.db"\nenable = ["acme_fault_budget"]\n'
                           f'[databases.app.settings.acme_fault_budget]\nmax_faults = {value}\n')
            with pytest.raises(ConfigError) as info:
                corestore.open("app", config=cfg)
            assert str(info.value).endswith(f"settings.acme_fault_budget: {message}"), str(info.value)
            assert "Attribute(" not in str(info.value)
            env = child_env()
            env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE), env["PYTHONPATH"]])
            out = console("--config", str(cfg), "profiles", "--check", env=env)
            assert out.returncode == 64 and message in out.stderr and "Attribute(" not in out.stderr, out.stderr
    finally:
        sys.modules.pop("acme_policy", None)
        corestore.registry.clear_cache("acme_fault_budget")


# -- 8. CLI paper cuts --------------------------------------------------------------------------------------
def test_version() -> None:
    out = console("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"corestore {corestore.__version__}"


def test_a_closed_pipe_is_not_a_traceback() -> None:
    proc = subprocess.Popen([str(Path(sys.executable).parent / "corestore"), "plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env())
    proc.stdout.close()  # `corestore plugins | head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_demo_argument_errors_and_cleanup(tmp_path: Path) -> None:
    out = console("demo", "--threads", "0")
    assert out.returncode == 64
    assert out.stderr.strip() == "corestore demo: --threads must be >= 1 and --seconds > 0 (got --threads 0 --seconds 2)"
    env = child_env(TMPDIR=str(tmp_path))
    out = console("--json", "demo", "--threads", "1", "--seconds", "0.2", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kept"] is False and Path(data["database"]).parent.parent == tmp_path
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone


def test_an_unknown_plugin_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = child_env()
    out = console("profiles", "--check", env={**env})
    assert out.returncode == 0, out.stderr
    env["CORESTORE_PLUGINS"] = "acounting"
    out = subprocess.run([str(Path(sys.executable).parent / "corestore"), "profiles", "--check"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 64
    assert "CORESTORE_PLUGINS (environment variable): unknown plugin 'acounting'" in out.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORESTORE_PLUGINS", "acounting")
        with pytest.raises(corestore.PluginError, match=r"CORESTORE_PLUGINS \(environment variable\): unknown plugin"):
            corestore.open(str(tmp_path / "a.db"))


def test_snapshot_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    cfg = tmp_path / "corestore.toml"
    cfg.write_text('[databases.app]\npath = "data/app.db"\n[databases.app.settings.health]\n'
                   'snapshot_path = "run/app-health.json"\n')
    store = corestore.open("app", config=cfg)
    try:
        assert store.plugin("health").snapshot_file == str(tmp_path / "run" / "app-health.json")
    finally:
        store.close()
    in_code = corestore.open(str(tmp_path / "data" / "b.db"), settings={"health": {"snapshot_path": "b.json"}})
    try:  # a profile built in code has no config file: relative to the database's directory
        assert in_code.plugin("health").snapshot_file == str(tmp_path / "data" / "b.json")
    finally:
        in_code.close()


# -- 9. a WAL database in a read-only directory ------------------------------------------------------------
AS_NOBODY = r"""
import json, os, sys
import corestore, corestore.doctor, corestore.readonly, corestore.store
from corestore import registry
for name in ("wal_guard", "wal_invariants", "circuit_breaker", "health"):
    registry.load_plugin_class(name)  # import everything first: nobody cannot read root's interpreter
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
path = sys.argv[1]
out = {}
try:
    store = corestore.open(corestore.Profile(path=path, read_only=True, plugins=("wal_guard",), name="reader"))
    out["rows"] = store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]
    store.close()
except corestore.StoreError as err:
    out["error"] = str(err)
diag = corestore.doctor.diagnose(path)
out["doctor"] = {"status": diag.status.name, "permissions": diag.finding("permissions").message}
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_read_only_wal_database_in_a_read_only_directory() -> None:
    top = Path(tempfile.mkdtemp(prefix="corestore-rodir-"))  # not under pytest's 0700 tmp: nobody must reach it
    try:
        top.chmod(0o755)
        directory = top / "db"
        directory.mkdir()
        path = directory / "a.db"
        writer = subprocess.run([sys.executable, "-c", (
            "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=wal'); "
            "c.execute('CREATE TABLE t (x)'); c.execute('INSERT INTO t VALUES (1)'); c.commit(); "
            "c.execute('INSERT INTO t VALUES (2)'); c.commit(); os._exit(0)"), str(path)], timeout=60)
        assert writer.returncode == 0
        assert (directory / "a.db-wal").exists() and (directory / "a.db-shm").exists()  # the writer left them
        for f in directory.iterdir():
            f.chmod(0o644)
        directory.chmod(0o755)  # root's: not writable by nobody

        def as_nobody() -> dict[str, Any]:
            run = subprocess.run([sys.executable, "-c", AS_NOBODY, str(path)], capture_output=True, text=True,
                                 timeout=60, env=child_env(PYTHONDONTWRITEBYTECODE="1"))
            assert run.returncode == 0, run.stderr
            return json.loads(run.stdout)

        # -wal and -shm exist: the read-only profile opens it and sees the rows still in the -wal
        seen = as_nobody()
        assert seen.get("rows") == 2, seen
        assert "fails" not in seen["doctor"]["permissions"], seen  # (DEGRADED only for the leftover -wal)

        # without them (a clean stop removed them), SQLite would have to create them: refused,
        # saying what to change; never immutable=1 (it would ignore a -wal)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        refused = as_nobody()
        assert "rows" not in refused, refused
        error = refused["error"]
        assert f"a WAL database in a directory this process cannot write ({directory}" in error
        assert f"make {directory} writable by this user" in error and "PRAGMA journal_mode=DELETE" in error
        assert "never opens with immutable=1" in error
        assert refused["doctor"]["status"] == "DEGRADED"
        assert "a read-only open (corestore health, a read-only profile) fails" in refused["doctor"]["permissions"]
    finally:
        shutil.rmtree(top, ignore_errors=True)
