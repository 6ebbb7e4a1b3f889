"""accounting and a crash: a child process submits and flushes in a loop and is SIGKILLed in the
middle of it. Every row whose ``flush()`` returned True must be in the database, once, and the
file must pass ``PRAGMA integrity_check``."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import child_env

CHILD = textwrap.dedent(
    """
    import sys, attrs, corestore
    from corestore.profiles import resolve_profile

    path = sys.argv[1]
    profile = resolve_profile("default", config=None, path=path)  # WAL, synchronous=FULL
    profile = attrs.evolve(profile, plugins=profile.plugins + ("accounting",),
                           settings={"accounting": {"batch_size": 150, "max_latency_ms": 2}})
    store = corestore.open(profile, setup=lambda s: s.database.execute_sql(
        "CREATE TABLE usage (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, n INTEGER NOT NULL)"))
    acc = store.plugin("accounting")
    k = 0
    while True:
        for n in range(100):
            assert acc.submit("usage", {"k": k, "n": n})
        if acc.flush(30):
            sys.stdout.write(f"{k}\\n")
            sys.stdout.flush()
        k += 1
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("run", range(3))
def test_rows_whose_flush_returned_true_survive_sigkill(tmp_path: Path, run: int) -> None:
    path = tmp_path / "crash.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=child_env())
    flushed: list[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while len(flushed) < 20 + 10 * run:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"the child stopped early: {child.wait()} {child.stderr.read() if child.stderr else ''}")
            flushed.append(int(line))
            assert time.monotonic() < deadline, "the child is too slow"
        time.sleep(random.uniform(0.0, 0.02))  # land anywhere in submit / batch / commit / flush
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        flushed += [int(x) for x in rest.split()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    conn = sqlite3.connect(str(path))  # no other connection to this file in this process
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counts = dict(conn.execute("SELECT k, count(*) FROM usage GROUP BY k").fetchall())
        duplicates = conn.execute("SELECT count(*) FROM (SELECT k, n FROM usage GROUP BY k, n HAVING count(*) > 1)").fetchone()[0]
    finally:
        conn.close()
    assert duplicates == 0
    missing = [k for k in flushed if counts.get(k) != 100]
    assert not missing, f"flush() returned True for k={missing[:5]} but their rows are not all in the database"
    assert flushed == sorted(flushed) and len(flushed) >= 20
