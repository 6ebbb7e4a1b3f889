"""Fork safety (issue 15, item 2), with real ``os.fork()``, real files and third processes.

The rule: a child may use a database only if its process had no SQLite connection open to that
file at the moment of ``fork()``. Before a fork the store closes its idle connections (bounded
wait for busy ones); a file still open at the fork is refused in the child at once with a
``FatalError`` naming the fork and what to do. Every child runs under a time limit: a hang is
killed and fails the test.
"""
from __future__ import annotations

import json
import logging
import os
import select
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
from corestore import FatalError, Profile, forking

from helpers import child_env

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"),
                                reason="fork() and /proc/locks (Linux)")

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who TEXT)"


def schema(store: corestore.Store) -> None:
    store.database.execute_sql(SCHEMA)


def insert(store: corestore.Store, who: str) -> None:
    store.run(lambda: store.database.execute_sql("INSERT INTO t (who) VALUES (?)", (who,)))


def count(path: str) -> int:
    """What a fresh reader in this process (plain sqlite3, closed at once) sees."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


class Forked:
    """A child made by ``os.fork()`` running ``body(channel)``; JSON lines both ways through
    pipes; every wait in the parent has a deadline and a child that overstays is killed."""

    def __init__(self, body: Callable[[Forked], Any]) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self._buffer = b""
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            os.close(self._to_child)
            os.close(self._from_child)
            self._in, self._out = to_child_r, from_child_w
            status = 0
            try:
                result: Any = {"ok": True, "value": body(self)}
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                result = {"ok": False, "type": type(err).__name__, "message": str(err)}
            try:
                self.send({"result": result})
            except BaseException:  # noqa: BLE001
                status = 3
            os._exit(status)
        self.pid = pid
        os.close(to_child_r)
        os.close(from_child_w)
        self._in, self._out = self._from_child, self._to_child

    # both sides
    def send(self, message: Any) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self._out, data):]

    def recv(self, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([self._in], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                self.kill()
                pytest.fail(f"the forked child {getattr(self, 'pid', '?')} sent nothing within {timeout:g} s (a hang)")
            chunk = os.read(self._in, 65536)
            if not chunk:
                raise EOFError("the other side closed the pipe")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # parent side
    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        message = self.recv(timeout)
        assert "result" in message, message
        self.wait(timeout)
        return message["result"]

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self._in)
                os.close(self._out)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        self.kill()
        pytest.fail(f"the forked child {self.pid} did not exit within {timeout:g} s")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def posix_locks_of(pid: int, *paths: str) -> list[str]:
    """``/proc/locks`` lines of ``pid`` on ``paths``, as a third process (``cat``) sees them."""
    inodes = {os.stat(p).st_ino for p in paths if os.path.exists(p)}
    text = subprocess.run(["cat", "/proc/locks"], capture_output=True, text=True, timeout=10, check=True).stdout
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields:  # a blocked waiter: "1: -> POSIX ..."
            fields.remove("->")
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[4] == str(pid) and int(fields[5].rsplit(":", 1)[1]) in inodes:
            found.append(line)
    return found


def third_process_opens_and_closes(path: str) -> None:
    """Another process connects, reads and closes: the last connection of a WAL database
    checkpoints and deletes ``-wal`` when it believes nobody else has the file open."""
    code = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('select count(*) from t').fetchone(); c.close()"
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=30, env=child_env())


# -- the rule holds: an idle parent's child uses the file with locks of its own ------------------
def test_child_holds_its_own_locks_and_loses_no_committed_row(db_path: str) -> None:
    store = corestore.open(db_path, setup=schema)
    insert(store, "parent")
    insert(store, "parent")  # idle now: no thread inside SQLite

    def child(ch: Forked) -> int:
        insert(store, "child")  # the inherited store: a fresh connection, refused if it must be
        ch.send("committed")
        assert ch.recv() == "go"
        for _ in range(5):
            insert(store, "child")
        with store.read():
            seen = store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]
        store.close()
        return seen

    forked = Forked(child)
    assert forked.recv() == "committed"
    # a third process sees the child's own POSIX locks (before the fix: none; the child
    # believed the parent's locks were its own)
    locks = posix_locks_of(forked.pid, db_path, db_path + "-shm")
    assert locks, "the child holds no POSIX lock on the database or its -shm"
    store.close()  # the parent lets go of the file ...
    third_process_opens_and_closes(db_path)  # ... and a third process opens and closes it
    forked.send("go")
    result = forked.result()
    assert result == {"ok": True, "value": 8}, result
    assert count(db_path) == 8  # before the fix: 2 (the child's commits went into a deleted -wal)
    check = sqlite3.connect(db_path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def test_master_opens_at_import_then_forks_workers(db_path: str) -> None:
    """gunicorn ``preload_app``: the master opens the store (setup, a first write) and forks
    idle workers; each uses the inherited store and a store it opens itself."""
    master = corestore.open(db_path, setup=schema)
    insert(master, "master")

    def worker(ch: Forked) -> int:
        for _ in range(10):
            insert(master, f"worker-{os.getpid()}")
        mine = corestore.open(db_path)  # the cache was emptied at fork: a store of this process
        for _ in range(10):
            insert(mine, f"worker-{os.getpid()}")
        mine.close()
        master.close()
        return os.getpid()

    workers = [Forked(worker) for _ in range(3)]
    insert(master, "master")  # the master goes on while they work
    results = [w.result(60) for w in workers]
    assert all(r["ok"] for r in results), results
    assert count(db_path) == 2 + 3 * 20
    with master.read():
        rows = master.database.execute_sql("SELECT who, count(*) FROM t GROUP BY who").fetchall()
    assert {who: n for who, n in rows} == {"master": 2, **{f"worker-{r['value']}": 20 for r in results}}
    master.close()


def test_accounting_writer_connection_is_closed_at_fork(tmp_path: Path) -> None:
    """The accounting writer's connection is a store connection like any other: idle between
    batches, it is closed before the fork and the child may use the file (with an empty queue)."""
    path = str(tmp_path / "acc.db")

    def usage(store: corestore.Store) -> None:
        store.database.execute_sql("CREATE TABLE usage (id INTEGER PRIMARY KEY, n INTEGER)")

    store = corestore.open(Profile(path=path, plugins=("accounting",), pragmas={"journal_mode": "wal"}), setup=usage)
    acc = store.plugin("accounting")
    for i in range(100):
        acc.submit("usage", {"n": i})
    assert acc.flush(10)
    assert store.stats()["connections"] >= 2  # this thread's and the writer's

    def child(ch: Forked) -> dict[str, Any]:
        child_acc = store.plugin("accounting")
        pending = child_acc.stats()["pending"]
        for i in range(100, 110):
            child_acc.submit("usage", {"n": i})
        flushed = child_acc.flush(10)
        store.close()
        return {"pending_at_start": pending, "flushed": flushed}

    result = Forked(child).result(60)
    assert result == {"ok": True, "value": {"pending_at_start": 0, "flushed": True}}, result
    acc.submit("usage", {"n": 999})
    assert acc.flush(10)
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM usage").fetchone()[0] == 111
    conn.close()


# -- a file still open at fork is refused, promptly ----------------------------------------------
def test_file_open_in_the_forking_threads_transaction_is_refused_in_the_child(db_path: str, tmp_path: Path) -> None:
    store = corestore.open(db_path, setup=schema)
    other = str(tmp_path / "other.db")

    def child(ch: Forked) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, attempt in (("inherited", lambda: insert(store, "child")),
                               ("reopened", lambda: corestore.open(db_path))):
            started = time.monotonic()
            try:
                attempt()
                out[label] = "worked"
            except corestore.StoreError as err:
                out[label] = {"type": type(err).__name__, "message": str(err),
                              "kind": err.classification.kind.name if err.classification else None,
                              "seconds": time.monotonic() - started}
        fresh = corestore.open(other, setup=schema)  # a file the parent never opened: fine
        insert(fresh, "child")
        fresh.close()
        out["other"] = count(other)
        return out

    with store.transaction():
        store.database.execute_sql("INSERT INTO t (who) VALUES ('parent')")
        result = Forked(child).result()
    assert result["ok"], result
    value = result["value"]
    for label in ("inherited", "reopened"):
        refused = value[label]
        assert refused["type"] == "FatalError" and refused["kind"] == "ENVIRONMENT", refused
        assert refused["seconds"] < 1.0  # at once: no BusyError after busy_timeout, no hang
        message = refused["message"]
        assert db_path in message and "fork" in message and "inside a transaction" in message
        assert "spawn" in message and "fork before opening" in message
    assert value["other"] == 1
    assert count(db_path) == 1  # the parent's transaction committed normally
    store.close()


def test_another_thread_inside_sqlite_at_fork_refuses_every_database_in_the_child(
        db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(forking, "FORK_WAIT_S", 0.3)
    store = corestore.open(db_path, setup=schema)
    inside, finish = threading.Event(), threading.Event()

    def long_transaction() -> None:
        with store.transaction():
            store.database.execute_sql("INSERT INTO t (who) VALUES ('thread')")
            inside.set()
            finish.wait(30)

    t = threading.Thread(target=long_transaction)
    t.start()
    assert inside.wait(10)

    def child(ch: Forked) -> list[str]:
        messages = []
        for attempt in (lambda: insert(store, "child"), lambda: corestore.open(str(tmp_path / "other.db"))):
            try:
                attempt()
                messages.append("worked")
            except FatalError as err:
                messages.append(str(err))
        return messages

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="corestore.forking"):
        forked = Forked(child)
    waited = time.monotonic() - started
    result = forked.result()
    finish.set()
    t.join(10)
    assert result["ok"], result
    inherited, other = result["value"]
    assert "the parent still had a connection to it open at fork()" in inherited
    assert "another thread was using" in other and "no database is opened here" in other
    assert 0.3 <= waited < 5  # the fork waited for the busy connection, with a bound
    assert any("still in use by another thread at fork()" in r.getMessage() for r in caplog.records)
    assert count(db_path) == 1  # the thread's transaction committed in the parent
    store.close()


def test_sixteen_writing_threads_at_fork_child_errs_promptly_or_works(db_path: str) -> None:
    """16 threads commit as fast as they can while the main thread forks (4 times). The child
    either works (it reads at once; it writes once the parent's writers paused, so that a wait
    for the write lock is not mistaken for a fork problem) or is refused at once; before the
    fix it hung in ``sqlite3.connect`` for more than 20 s or raised BusyError after 10 s."""
    store = corestore.open(db_path, setup=schema)

    def child(ch: Forked) -> dict[str, Any]:
        started = time.monotonic()
        try:
            with store.read():
                store.database.execute_sql("SELECT count(*) FROM t").fetchone()
        except corestore.StoreError as err:
            return {"outcome": type(err).__name__, "message": str(err), "seconds": time.monotonic() - started}
        ch.send({"read_s": time.monotonic() - started})
        assert ch.recv() == "write"
        insert(store, "child")
        return {"outcome": "worked", "seconds": time.monotonic() - started}

    outcomes = []
    for _ in range(4):
        stop = threading.Event()
        committed: list[int] = []

        def writer() -> None:
            while not stop.is_set():
                try:
                    insert(store, "thread")
                    committed.append(1)
                except corestore.BusyError:
                    pass

        threads = [threading.Thread(target=writer) for _ in range(16)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 10
            while len(committed) < 20 and time.monotonic() < deadline:  # writers in full swing
                time.sleep(0.01)
            forked = Forked(child)
            first = forked.recv(30)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        if "read_s" in first:
            assert first["read_s"] < 5, first  # a fresh connection of its own: no hang
            forked.send("write")
        else:
            assert "result" in first, first
        result = forked.result(60) if "read_s" in first else first["result"]
        if "read_s" not in first:
            forked.wait(30)
        assert result["ok"], result
        outcomes.append(result["value"])
    worked = 0
    for value in outcomes:
        assert value["seconds"] < 30, value
        if value["outcome"] == "worked":
            worked += 1
        else:
            assert value["outcome"] == "FatalError" and "fork" in value["message"], value
            assert value["seconds"] < 1, value  # refused at once
    with store.read():
        assert store.database.execute_sql("SELECT count(*) FROM t WHERE who = 'child'").fetchone()[0] == worked
    check = sqlite3.connect(db_path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    store.close()


def test_memory_store_is_refused_in_the_child() -> None:
    store = corestore.open(":memory:", profile="minimal")
    store.database.execute_sql(SCHEMA)

    def child(ch: Forked) -> dict[str, Any]:
        try:
            store.database.execute_sql("SELECT count(*) FROM t").fetchone()
            inherited = "worked"
        except FatalError as err:
            inherited = str(err)
        fresh = corestore.open(":memory:", profile="minimal")  # a new one of its own is fine
        fresh.database.execute_sql(SCHEMA)
        fresh.close()
        return {"inherited": inherited}

    result = Forked(child).result()
    assert result["ok"], result
    assert ":memory: database lives in the process that created it" in result["value"]["inherited"]
    assert store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 0  # the parent's works
    store.close()


def test_apsw_store_follows_the_same_rule(db_path: str) -> None:
    pytest.importorskip("apsw")
    store = corestore.open(Profile(path=db_path, driver="apsw", pragmas={"journal_mode": "wal"}), setup=schema)
    insert(store, "parent")

    def child(ch: Forked) -> dict[str, Any]:
        insert(store, "child")
        locks = ch.send("locks?") or ch.recv()
        store.close()
        return locks

    forked = Forked(child)
    assert forked.recv() == "locks?"
    assert posix_locks_of(forked.pid, db_path, db_path + "-shm")
    forked.send("seen")
    assert forked.result() == {"ok": True, "value": "seen"}

    with store.transaction():
        insert_in_txn = Forked(lambda ch: insert(store, "child"))
        refused = insert_in_txn.result()
    assert refused["ok"] is False and refused["type"] == "FatalError" and "fork" in refused["message"]
    assert count(db_path) == 2
    store.close()


# -- issue 20's plugins in a forked child --------------------------------------------------------
def test_write_gate_and_governor_start_afresh_in_a_forked_child(db_path: str) -> None:
    store = corestore.open(db_path, setup=schema, enable=["write_gate", "checkpoint_governor"])
    for who in ("parent", "parent2"):
        insert(store, who)
    plugin = store.plugin("write_gate")
    gate = plugin.gate
    assert gate is not None and gate.snapshot()["available"]
    gated_in_parent = plugin.stats()["gated"]

    def child(ch: Forked) -> dict[str, Any]:
        before = gate.snapshot()  # on_fork_child dropped the parent's descriptors and mapping
        for i in range(3):
            insert(store, f"child{i}")  # the store was idle at fork(): the child may use it
        after = gate.snapshot()
        gated = store.plugin("write_gate").stats()["gated"]
        store.close()
        return {"before": before["available"], "after": after["available"], "gated": gated}

    result = Forked(child).result()
    assert result["ok"], result
    value = result["value"]
    assert value["before"] is False and value["after"] is True, value
    assert value["gated"] > gated_in_parent, value  # the child's writes went through its own gate
    insert(store, "parent3")  # the parent's gate still works after the fork
    assert count(db_path) == 6
    store.close()
