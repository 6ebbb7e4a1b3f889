"""The pytest plugin (fixtures, marker, parameter, skips) and the documentation that uses it.

Behaviour that only shows across tests (teardown) or with another environment (a missing
compiler, ``CORESTORE_REQUIRE_FAILPOINT``) runs in an inner pytest session in a subprocess, with
the plugin loaded explicitly and entry-point autoloading off, exactly as a user's run would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import corestore

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
PAGE = SITE / "testing-faults.md"


def run_inner_pytest(tmp_path: Path, *files: Path, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Run pytest on ``files`` in a subprocess; return {test name: (outcome, message)}."""
    report = tmp_path / "inner-report.xml"
    (tmp_path / "inner-pytest.ini").write_text("[pytest]\n")
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), str(ROOT / "contrib")]
        + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else [])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "corestore_contrib.pytest_plugin",
         "-c", str(tmp_path / "inner-pytest.ini"), "--rootdir", str(tmp_path), "-W", "error::pytest.PytestUnknownMarkWarning",
         f"--junitxml={report}", *map(str, files)],
        capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=120,
    )
    assert report.exists(), f"inner pytest did not run:\n{proc.stdout}\n{proc.stderr}"
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = tag, (node.get("message") or "") + (node.text or "")
        outcomes[case.get("name", "?")] = (outcome, message)
    return outcomes


# -- tmp_store's profile -------------------------------------------------------------------


def test_tmp_store_defaults_to_the_minimal_profile(tmp_store: corestore.Store, tmp_path: Path) -> None:
    assert tmp_store.profile.name == "minimal"
    assert tmp_store.profile.driver == "sqlite3" and tmp_store.profile.plugins == ()
    assert tmp_store.path == str(tmp_path / "store.db")
    tmp_store.database.execute_sql("CREATE TABLE t (x)")
    assert (tmp_path / "store.db").exists()


@pytest.mark.corestore_profile("minimal", pragmas={"journal_mode": "wal", "wal_autocheckpoint": 50}, path="sub.db")
def test_marker_fields_override_and_pragmas_merge(tmp_store: corestore.Store, tmp_path: Path) -> None:
    assert dict(tmp_store.profile.pragmas) == {"busy_timeout": 5000, "journal_mode": "wal", "wal_autocheckpoint": 50}
    assert tmp_store.path == str(tmp_path / "sub.db")
    assert tmp_store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert tmp_store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 50


@pytest.mark.parametrize(
    ("tmp_store", "name", "journal_mode"),
    [
        ("minimal", "minimal", "delete"),
        ({"pragmas": {"journal_mode": "wal"}}, "minimal", "wal"),
        (corestore.Profile(name="custom", pragmas={"busy_timeout": 100, "journal_mode": "truncate"}), "custom", "truncate"),
    ],
    indirect=["tmp_store"],
)
def test_indirect_parameter_selects_the_profile(tmp_store: corestore.Store, name: str, journal_mode: str) -> None:
    assert tmp_store.profile.name == name
    assert tmp_store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == journal_mode


@pytest.mark.corestore_profile(failpoint=True)
def test_failpoint_marker_runs_the_store_over_the_vfs(tmp_store: corestore.Store, failpoint: object) -> None:
    assert (tmp_store.profile.driver, tmp_store.profile.vfs) == ("apsw", failpoint.name)
    tmp_store.database.execute_sql("CREATE TABLE t (x)")
    assert failpoint.counters.total("seen", file="main") > 0  # every I/O of the store went through it


def test_build_profile_resolves_names_from_a_config(tmp_path: Path) -> None:
    from corestore_contrib.pytest_plugin import build_profile

    config = tmp_path / "corestore.toml"
    config.write_text('[profiles.ingest]\nextends = "minimal"\n[profiles.ingest.pragmas]\nsynchronous = "normal"\n')
    profile = build_profile("ingest", {"config": str(config), "pragmas": {"journal_mode": "wal"}}, tmp_path=tmp_path)
    assert profile.name == "ingest" and profile.path == str(tmp_path / "store.db")
    assert dict(profile.pragmas) == {"busy_timeout": 5000, "synchronous": "normal", "journal_mode": "wal"}
    assert build_profile("minimal", {}, tmp_path=tmp_path, failpoint_name="fp").vfs == "fp"


# -- teardown and skips (inner session) ----------------------------------------------------

INNER = '''
import apsw
import attrs
import corestore
import pytest

seen = {}


@pytest.mark.corestore_profile(failpoint=True)
def test_leaves_a_fault_and_stores_open(tmp_store, failpoint):
    seen["vfs"] = failpoint.name
    seen["store"] = tmp_store
    seen["extra"] = corestore.open(attrs.evolve(tmp_store.profile, name="extra"))  # never closed here
    seen["fault"] = failpoint.arm(op="write", file="wal")
    assert seen["vfs"] in apsw.vfs_names()


def test_teardown_healed_closed_and_unregistered():
    assert seen["vfs"] not in apsw.vfs_names()
    assert seen["store"].closed and seen["extra"].closed
    assert seen["fault"].healed_by == "heal"


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CORESTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")


def test_preload_without_a_compiler_skips(no_compiler, monkeypatch, request):
    monkeypatch.delenv("CORESTORE_REQUIRE_FAILPOINT", raising=False)
    request.getfixturevalue("preload_failpoint")


def test_preload_without_a_compiler_fails_when_required(no_compiler, monkeypatch, request):
    monkeypatch.setenv("CORESTORE_REQUIRE_FAILPOINT", "1")
    request.getfixturevalue("preload_failpoint")
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the compiler checks run on Linux only")
def test_fixture_teardown_and_skip_reasons(tmp_path: Path) -> None:
    pytest.importorskip("apsw")
    inner = tmp_path / "test_inner_plugin.py"
    inner.write_text(textwrap.dedent(INNER))
    outcomes = run_inner_pytest(tmp_path, inner)
    assert outcomes["test_leaves_a_fault_and_stores_open"][0] == "passed", outcomes
    assert outcomes["test_teardown_healed_closed_and_unregistered"][0] == "passed", outcomes
    outcome, message = outcomes["test_preload_without_a_compiler_skips"]
    assert outcome == "skipped" and "$CC is set to '/nonexistent/bin/cc'" in message
    outcome, message = outcomes["test_preload_without_a_compiler_fails_when_required"]
    assert outcome == "failure" and "CORESTORE_REQUIRE_FAILPOINT" in message and "$CC" in message


# -- the documentation ---------------------------------------------------------------------


def test_docs_include_every_failpoint_snippet() -> None:
    text = PAGE.read_text()
    included = re.findall(r'^--8<-- "(snippets/[^"]+)"$', text, flags=re.M)
    assert included, "the page includes no snippet"
    for rel in included:
        assert (SITE / rel).is_file(), f"{PAGE.name} includes missing {rel}"
    shipped = {f"snippets/{p.name}" for p in (SITE / "snippets").glob("failpoint_*.py")}
    assert shipped == set(included)
    wedge = (SITE / "snippets" / "failpoint_wedge.py").read_text().strip().splitlines()
    body = [line for line in wedge if line.strip() and not line.startswith(("import", "from"))]
    assert len(body) <= 20  # "a dozen lines" (plus the def and the with)


def test_docs_snippets_run(tmp_path: Path) -> None:
    pytest.importorskip("apsw")
    snippets = sorted((SITE / "snippets").glob("failpoint_*.py"))
    outcomes = run_inner_pytest(tmp_path, *snippets)
    assert len(outcomes) == len(snippets) >= 4
    for name, (outcome, message) in outcomes.items():
        # only the preload snippet may skip, and only where the platform really lacks Linux or cc
        skip_ok = name == "test_fsync_failure_at_commit_is_reported_as_uncertain" and not sys.platform.startswith("linux")
        assert outcome == "passed" or (skip_ok and outcome == "skipped"), (name, outcome, message)
