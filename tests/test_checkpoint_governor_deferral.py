"""checkpoint_governor under write contention (issue 19): a due checkpoint is deferred while
writers queue at the write gate, lands once the writes pause, and runs anyway past its ceiling.

Real processes hold and queue at the gate (forked children, each bounded by a time limit and
killed if it outlives it); the WAL is grown by a plain ``sqlite3`` connection outside corestore
(automatic checkpoints off), which does not take the gate, so the queue stays as the test built it.
Every wait is bounded and names what it waited for."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import ConfigError, Profile, registry
from corestore_contrib.failpoint import integrity_check
from corestore_contrib.waiting import wait_until
from corestore_plugins import _write_gate_ticket as ticket_gate

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based children (Linux)"),
    pytest.mark.skipif("write_gate" not in registry.discover(), reason="needs the write_gate plugin"),
]

CTX = multiprocessing.get_context("fork")
PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000}
TARGET = 64 * 1024
LIMIT_S = 60.0


def _hold_gate(db: str, ready: Any, release: Any) -> None:
    """Take the gate (not SQLite's lock) and keep it until ``release`` is set."""
    gate = ticket_gate.Gate(db)
    outcome = gate.acquire(10.0)
    ready.put(outcome.value)
    release.wait(LIMIT_S)
    gate.release()


def _queue_and_write(db: str, out: Any) -> None:
    """Queue at the gate; once in, commit one row with plain sqlite3, report when the commit
    ended (``time.monotonic_ns``: one clock for every process) and release."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    gate = ticket_gate.Gate(db)
    outcome = gate.acquire(LIMIT_S)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (body) VALUES (x'01')")
    conn.execute("COMMIT")
    ended = time.monotonic_ns()
    if outcome.held:
        gate.release()
    conn.close()
    out.put((outcome.value, ended))


class Queue:
    """One child holding the gate and one queued behind it (a writer waiting for its turn)."""

    def __init__(self, db: str) -> None:
        self.ready, self.out, self.release = CTX.Queue(), CTX.Queue(), CTX.Event()
        self.holder = CTX.Process(target=_hold_gate, args=(db, self.ready, self.release), daemon=True)
        self.holder.start()
        # (waited: it took over the place the store's first write kept)
        assert self._get(self.ready, "the holder to take the gate") in ("held", "waited")
        self.writer = CTX.Process(target=_queue_and_write, args=(db, self.out), daemon=True)
        self.writer.start()

    @staticmethod
    def _get(queue: Any, what: str, timeout: float = 30.0) -> Any:
        try:
            return queue.get(timeout=timeout)
        except Exception as err:  # queue.Empty
            raise AssertionError(f"waited {timeout} s for {what}") from err

    def drain(self) -> int:
        """Let the holder go: the queued writer commits; return when its commit ended (ns)."""
        self.release.set()
        outcome, ended = self._get(self.out, "the queued writer's commit")
        assert outcome == "waited"
        return int(ended)

    def close(self) -> None:
        self.release.set()
        hung = []
        for proc in (self.holder, self.writer):
            proc.join(LIMIT_S)
            if proc.is_alive():
                hung.append(proc.pid)
                proc.kill()
                proc.join(5)
        assert not hung, f"children {hung} did not finish within {LIMIT_S} s (a hang)"
        for proc in (self.holder, self.writer):
            assert proc.exitcode in (0, -signal.SIGKILL), f"child {proc.pid} exited with {proc.exitcode}"


def _store(path: Path, **governor: Any) -> corestore.Store:
    settings = {"target_wal_bytes": TARGET, "interval_s": 0.05, "check_every": 10**6, "gate_timeout_s": 20.0}
    settings.update(governor)
    store = corestore.open(Profile(path=str(path), plugins=("wal_guard", "write_gate", "checkpoint_governor"),
                                   pragmas=PRAGMAS, settings={"checkpoint_governor": settings}))
    store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    return store


@pytest.fixture
def grow_wal() -> Iterator[Any]:
    """``grow(path, nbytes)``: commit about ``nbytes`` into the WAL from a plain sqlite3
    connection (no gate, automatic checkpoints off; kept open to the end of the test)."""
    conns: list[sqlite3.Connection] = []

    def grow(path: Path, nbytes: int) -> int:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=10)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conns.append(conn)
        for _ in range(max(1, nbytes // 50_000)):
            conn.execute("INSERT INTO t (body) VALUES (randomblob(50000))")
        return os.stat(str(path) + "-wal").st_size

    yield grow
    for conn in conns:
        conn.close()


def _checkpoints(store: corestore.Store) -> list[dict[str, Any]]:
    return [h for h in store.plugin("checkpoint_governor").history() if h["result"] is not None]


def test_a_checkpoint_waits_while_a_writer_queues_and_lands_when_the_writes_pause(tmp_path: Path,
                                                                                   grow_wal: Any) -> None:
    path = tmp_path / "defer.db"
    store = _store(path, defer_wal_factor=1000.0, defer_max_s=60.0)
    queue = None
    try:
        gov, gate = store.plugin("checkpoint_governor"), store.plugin("write_gate")
        queue = Queue(str(path))
        wait_until(lambda: gate.queued() == 1, "the writer to queue behind the holder")
        assert grow_wal(path, 300_000) > TARGET
        # the governor's rounds (its thread, started by the pacer) find the writer queued: deferred
        stats = wait_until(lambda: (st := gov.stats())["deferred"] >= 3 and st, "three deferred rounds")
        assert stats["checkpoints"] == 0 and stats["deferring_s"] is not None
        assert gate.queued() == 1  # the governor did not join the queue (it would be a second waiter)
        health = store.health().components["checkpoint_governor"]
        assert "deferred" in health.summary and health.status is corestore.HealthStatus.UP
        committed = queue.drain()
        done = wait_until(lambda: _checkpoints(store), "the deferred checkpoint once the writes paused")
        first = done[0]
        assert first["forced"] is None and first["deferred_s"] >= 0.1, first
        assert first["start_ns"] > committed  # it waited for the queued writer's commit
        assert first["gate_held"]
        stats = gov.stats()
        assert stats["breaches"] == 0 and stats["forced"] == 0 and stats["deferring_s"] is None
        wait_until(lambda: os.stat(str(path) + "-wal").st_size <= TARGET, "the WAL to return under the target")
    finally:
        if queue is not None:
            queue.close()
        store.close()
    assert integrity_check(path) == "ok"


@pytest.mark.parametrize("ceiling", ["wal", "time"])
def test_past_its_ceiling_a_checkpoint_runs_although_writers_queue(tmp_path: Path, grow_wal: Any,
                                                                    ceiling: str) -> None:
    path = tmp_path / f"ceiling-{ceiling}.db"
    settings = {"defer_wal_factor": 2.0, "defer_max_s": 60.0} if ceiling == "wal" else \
        {"defer_wal_factor": 1000.0, "defer_max_s": 0.3}
    store = _store(path, **settings)
    queue = None
    try:
        gov, gate = store.plugin("checkpoint_governor"), store.plugin("write_gate")
        queue = Queue(str(path))
        wait_until(lambda: gate.queued() == 1, "the writer to queue behind the holder")
        wal = grow_wal(path, 300_000)
        assert (wal >= 2 * TARGET) if ceiling == "wal" else (TARGET < wal < 1000 * TARGET)
        started = time.monotonic()
        # past the ceiling the governor joins the queue (a second waiter) although a writer waits
        wait_until(lambda: gate.queued() == 2, "the governor to join the queue past the ceiling")
        stats = gov.stats()
        if ceiling == "wal":
            assert stats["deferred"] == 0, stats  # the WAL was past the ceiling at the first round
        else:
            assert stats["deferred"] >= 1 and time.monotonic() - started >= 0.25, stats
        queue.drain()
        done = wait_until(lambda: _checkpoints(store), "the forced checkpoint")
        assert done[0]["forced"] == ceiling, done[0]
        assert done[0]["writer_lock_held"] or not gov.affected
        assert gov.stats()["forced"] == 1 and gov.stats()["breaches"] == 0
    finally:
        if queue is not None:
            queue.close()
        store.close()


def test_deferral_can_be_turned_off_and_settings_are_validated(tmp_path: Path, grow_wal: Any) -> None:
    path = tmp_path / "off.db"
    store = _store(path, defer_max_s=0.0)
    queue = None
    try:
        gate = store.plugin("write_gate")
        queue = Queue(str(path))
        wait_until(lambda: gate.queued() == 1, "the writer to queue behind the holder")
        grow_wal(path, 300_000)
        wait_until(lambda: gate.queued() == 2, "the governor to queue at once (deferral off)")
        assert store.plugin("checkpoint_governor").stats()["deferred"] == 0
        queue.drain()
        done = wait_until(lambda: _checkpoints(store), "the checkpoint")
        assert done[0]["deferred_s"] is None and done[0]["forced"] is None
    finally:
        if queue is not None:
            queue.close()
        store.close()
    for bad in ({"defer_wal_factor": 0.5}, {"defer_max_s": -1.0}, {"defer_wal_factor": "4"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            corestore.open(Profile(path=str(tmp_path / "bad.db"), plugins=("checkpoint_governor",),
                                   settings={"checkpoint_governor": bad}))


def test_a_crashed_waiter_is_not_counted_as_queued(tmp_path: Path) -> None:
    """A waiter killed in the queue leaves its entry WAITING: queued() leaves it out (its pid is
    gone), so a dead process cannot defer checkpoints up to the ceiling."""
    path = tmp_path / "dead.db"
    store = _store(path)
    queue = None
    try:
        gate = store.plugin("write_gate")
        queue = Queue(str(path))
        wait_until(lambda: gate.queued() == 1, "the writer to queue behind the holder")
        queue.writer.kill()
        queue.writer.join(10)
        wait_until(lambda: gate.queued() == 0, "the killed waiter to be left out")
    finally:
        if queue is not None:
            queue.release.set()
            queue.holder.join(LIMIT_S)
            assert not queue.holder.is_alive(), "the holder did not finish (a hang)"
        store.close()
