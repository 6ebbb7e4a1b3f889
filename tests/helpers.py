"""Helpers shared by the test modules: child interpreters, a lock holder in another process,
the root-only marker. Import it as a module (``from helpers import child_env``); fixtures live in
``conftest.py`` and in the project's pytest plugin (``corestore_contrib.pytest_plugin``)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["ROOT", "TESTS", "child_env", "drop_file_capabilities", "run_python", "Holder", "root_only"]

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


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
    PR_CAPBSET_DROP = 24  # noqa: N806 - the C constant's name
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
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def root_only() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop capabilities or mount a tmpfs)")


def fork_report(child: Callable[[], Any], *, timeout_s: float = 30.0) -> Any:
    """``os.fork()``; the child runs ``child()`` and sends its JSON-able result back through a
    pipe, then leaves with ``os._exit`` (never back into pytest). The parent waits at most
    ``timeout_s`` for the report (a hang in the child, e.g. in a fork hook, fails the test) and
    reaps the child, killing it if it is still there. Returns the child's result."""
    import json
    import select
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(child()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout_s
    data = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                pytest.fail(f"the forked child reported nothing within {timeout_s:g} s (a hang in on_fork_child?)")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return json.loads(data)
