"""Shared fixtures: temporary databases, subprocess helpers and test plugins installed through
real entry points (a ``.dist-info`` directory on ``sys.path``, as pip would leave it)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest

import corestore
from corestore import registry

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


@pytest.fixture(autouse=True)
def _close_leftover_stores() -> Iterator[None]:
    """Every test starts and ends with no store open in this process."""
    yield
    from corestore.store import open_stores

    for store in open_stores():
        while not store.closed:
            store.close()


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that can import corestore, its plugins and the tests."""
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "contrib"), str(TESTS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def drop_file_capabilities() -> None:
    """``preexec_fn``: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the
    bounding set, so the exec'd child (still root) obeys file permissions like any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP = 24
    for cap in (1, 2, 3):  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_python(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
               drop_caps: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``); with ``drop_caps``
    the child runs without the file-permission capabilities (root bypasses permissions)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout, env=env or child_env(),
        preexec_fn=drop_file_capabilities if drop_caps else None,
    )


class Holder:
    """Another process holding ``BEGIN IMMEDIATE`` on a file until released."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
             "c.execute('begin immediate'); print('held', flush=True); sys.stdin.readline(); c.execute('commit')",
             path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def install_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install entry points in the ``corestore`` group as a real ``.dist-info`` on ``sys.path``.

    ``install_plugins(name="module:Class", ...)``; modules are looked up on ``sys.path`` (the
    tests directory is on it, so ``plugin_fixtures:Recorder`` works).
    """
    counter = {"n": 0}

    def install(dist: str = "corestore-test-plugins", **entry_points: str) -> Path:
        counter["n"] += 1
        site = tmp_path / f"site{counter['n']}"
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = ["[corestore]"] + [f"{name} = {target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        for name in entry_points:
            registry._class_cache.pop(name, None)
        return site

    yield install
    for name in list(registry._class_cache):
        if registry._class_cache[name].__module__ in ("plugin_fixtures",) or name.startswith("t_"):
            registry._class_cache.pop(name, None)


@pytest.fixture
def minimal(db_path: str) -> Iterator[corestore.Store]:
    """A store on a fresh file with the ``minimal`` profile (WAL + NORMAL for speed)."""
    profile = corestore.Profile(path=db_path, name="minimal",
                                pragmas={"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal"})
    store = corestore.open(profile)
    yield store
    while not store.closed:
        store.close()


def root_only() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop capabilities or mount a tmpfs)")
