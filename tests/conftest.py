"""Shared fixtures: temporary databases, a fresh event log per test and test plugins installed
through real entry points (a ``.dist-info`` directory on ``sys.path``, as pip would leave it).

Helpers that are not fixtures (child interpreters, a lock holder) are in ``helpers.py``; nothing
imports from this file. The store fixtures users get (``tmp_store``, ``failpoint``,
``preload_failpoint``, the ``corestore_profile`` marker) come from the project's pytest plugin,
loaded once here.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import corestore
from corestore import registry
from corestore_contrib.pytest_plugin import build_profile

if TYPE_CHECKING:
    from plugin_fixtures import EventLog

# The plugin reaches users through the pytest11 entry point (an installed corestore); a checkout
# without it, or a run with plugin autoloading off, loads it here.
if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or "corestore_contrib.pytest_plugin" not in {
    ep.value for ep in metadata.entry_points(group="pytest11")
}:
    pytest_plugins = ["corestore_contrib.pytest_plugin"]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections work in a schema of this test's own (dropped after).
    Skips when no server answers (fails under CORESTORE_REQUIRE_POSTGRES=1); see tests/pgserver.py."""
    from pgserver import private_schema

    with private_schema() as url:
        yield url


@pytest.fixture(autouse=True)
def _close_leftover_stores() -> Iterator[None]:
    """Every test starts and ends with no store open in this process."""
    yield
    from corestore.store import open_stores

    for store in open_stores():
        while not store.closed:
            store.close()


@pytest.fixture(autouse=True)
def events() -> Iterator[EventLog]:
    """A fresh log of the hook calls the test plugins see during this test."""
    # imported here, not at the top: importing the test plugins with conftest shifts when the
    # cyclic GC runs, and test_hooks.py::test_hook_on_fatal on peewee 3.17 depends on that (a
    # closed store's statements, kept alive by exception tracebacks in reference cycles, keep
    # SQLite's handle open until collected; its final close then checkpoints the WAL)
    import plugin_fixtures

    log = plugin_fixtures.EventLog()
    previous = plugin_fixtures.activate(log)
    yield log
    plugin_fixtures.activate(previous)


@pytest.fixture
def install_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Install entry points in the ``corestore`` group as a real ``.dist-info`` on ``sys.path``.

    ``install_plugins(name="module:Class", ...)``; modules are looked up on ``sys.path`` (the
    tests directory is on it, so ``plugin_fixtures:Recorder`` works).
    """
    counter = {"n": 0}
    installed: list[str] = []

    def install(dist: str = "corestore-test-plugins", **entry_points: str) -> Path:
        counter["n"] += 1
        site = tmp_path / f"site{counter['n']}"
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = ["[corestore]"] + [f"{name} = {target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(site))
        registry.refresh_entry_points(*entry_points)
        installed.extend(entry_points)
        return site

    yield install
    registry.clear_cache(*installed)  # the entry points leave sys.path with this test


@pytest.fixture
def minimal(db_path: str, tmp_path: Path) -> Iterator[corestore.Store]:
    """``tmp_store``'s profile family on ``db_path``: the built-in ``minimal`` profile with WAL +
    NORMAL (for speed), built by the pytest plugin's ``build_profile``."""
    profile = build_profile("minimal", {"path": db_path, "pragmas": {"journal_mode": "wal", "synchronous": "normal"}},
                            tmp_path=tmp_path)
    store = corestore.open(profile)
    yield store
    while not store.closed:
        store.close()


def root_only() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop capabilities or mount a tmpfs)")
