"""Connections are never closed while a thread uses them (issue 15, item 1).

A connection closed by ``close()``/``invalidate()`` from another thread in the middle of a
statement crashed the process (SIGSEGV: the stdlib driver is not safe against a concurrent close).
The post-commit checks ran after the connection's record was released; they now run before. The
stress (``python -m corestore_contrib.stress``) runs in a child process with a time limit, so a
crash or a hang fails the test instead of the suite.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import Profile, hookimpl

from helpers import child_env, run_python


class InvalidateDuringCheck:
    """A post-commit check that has another thread call ``store.invalidate()`` (and waits for it
    to return) before it runs its own statement on the connection it was given."""

    name = "t_invalidate_during_check"
    seen: list[str] = []

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> None:
        other = threading.Thread(target=store.invalidate)
        other.start()
        other.join(10)
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            self.seen.append(f"ok {mode}")
        except Exception as err:  # noqa: BLE001 - recorded: the test asserts there is none
            self.seen.append(f"{type(err).__name__}: {err}")


def test_post_commit_checks_run_on_a_connection_no_other_thread_closes(
        tmp_path: Path, install_plugins: Callable[..., Path]) -> None:
    install_plugins(t_invalidate_during_check="test_concurrency:InvalidateDuringCheck")
    InvalidateDuringCheck.seen.clear()
    store = corestore.open(Profile(path=str(tmp_path / "c.db"), plugins=("t_invalidate_during_check",),
                                   pragmas={"journal_mode": "wal"}))
    store.database.execute_sql("CREATE TABLE t (x)")  # autocommit: checked too
    with store.transaction():
        store.database.execute_sql("INSERT INTO t VALUES (1)")
    store.run(lambda: store.database.execute_sql("INSERT INTO t VALUES (2)"))
    # Before the fix the record was released first: invalidate() closed the connection under
    # the check ("Cannot operate on a closed database", or a crash mid-statement).
    assert InvalidateDuringCheck.seen == ["ok wal"] * 3
    # ... and the connection the check used was closed when released: the next one is fresh
    assert store.stats()["reopens"] == 3
    assert store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 2
    store.close()


def test_autocommit_read_cursor_survives_invalidate_from_another_thread(db_path: str) -> None:
    store = corestore.open(db_path)
    store.database.execute_sql("CREATE TABLE t (x)")
    with store.transaction():
        for i in range(5000):
            store.database.execute_sql("INSERT INTO t VALUES (?)", (i,))
    started, invalidated = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def reader() -> None:
        try:
            cursor = store.database.execute_sql("SELECT x FROM t ORDER BY x")
            first = cursor.fetchone()
            started.set()
            assert invalidated.wait(10)
            out["rows"] = [first, *cursor.fetchall()]
        except Exception as err:  # noqa: BLE001 - reported to the test thread
            out["error"] = repr(err)
            started.set()

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(10)
    busy = store.invalidate()  # the reader's cursor is live: its connection is spared, doomed
    invalidated.set()
    t.join(10)
    assert "error" not in out, out
    assert len(out["rows"]) == 5000 and busy == 1
    store.close()


EIGHT_WRITERS_AND_INVALIDATE = """
import sys, threading, time
import corestore
store = corestore.open(sys.argv[1])  # the default profile (wal_invariants checks after each COMMIT)
store.database.execute_sql("CREATE TABLE t (x)")
stop = time.monotonic() + float(sys.argv[2])
done, errors = [], []
def writer():
    while time.monotonic() < stop:
        try:
            with store.transaction():
                store.database.execute_sql("INSERT INTO t VALUES (1)")
            done.append(1)
        except corestore.StoreError as err:
            errors.append(repr(err))
def invalidator():
    while time.monotonic() < stop:
        store.invalidate()
        time.sleep(0.001)
threads = [threading.Thread(target=writer) for _ in range(8)] + [threading.Thread(target=invalidator)]
for t in threads: t.start()
for t in threads: t.join()
count = store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]
store.close()
print(len(done), count, len(errors))
"""


def test_eight_writers_and_invalidate_every_millisecond_do_not_crash(db_path: str) -> None:
    # Before the fix: SIGSEGV within about a second (3/3 runs). A child process: a crash is
    # an exit status here, a hang a timeout.
    proc = run_python(EIGHT_WRITERS_AND_INVALIDATE, db_path, "3", timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode} ({_signal_name(proc.returncode)}):\n{proc.stderr[-3000:]}"
    done, count, errors = map(int, proc.stdout.split())
    assert errors == 0 and done == count and done > 100


def _signal_name(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else "no signal"


def test_stress_threads_commit_read_invalidate_close_in_bounded_time(tmp_path: Path) -> None:
    """The CI run of the soak (``python -m corestore_contrib.stress``): 8 writers, 2 readers, an
    invalidate() every millisecond, open/close of extra references, and the store closed under
    the writers each round; afterwards exactly the committed rows are in the file."""
    path = tmp_path / "stress.db"
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "corestore_contrib.stress",
                               "--seconds", "8", "--round-s", "1", str(path)],
                              capture_output=True, text=True, timeout=60, env=child_env())
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the stress hung (no exit within 60 s): {(err.stderr or b'')[-3000:]!r}")
    assert proc.returncode == 0, f"exit {proc.returncode} ({_signal_name(proc.returncode)}): {proc.stdout}\n{proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and not summary["lost"] and summary["unexpected_total"] == 0, summary
    assert summary["committed"] == summary["rows"] > 0 and summary["rounds"] >= 5
    counts = summary["counts"]
    # the race was exercised: hundreds of invalidations under the writers (about 8 000 on an idle
    # machine; 774 were measured with a load average of 15 on 2 cores, so the floor is not a rate)
    assert counts["invalidations"] > 300 and counts["reads"] > 100 and counts["reopens"] > 100
    assert time.monotonic() - started < 60
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
