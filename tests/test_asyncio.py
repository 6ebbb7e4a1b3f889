"""The asyncio front door (issue 23): ``store.arun``, ``aopen``/``aclose``/``ahealth``, accounting's
``aflush``, with a real event loop, real files and real processes.

Every scenario runs in a child interpreter under a time limit (``run_scenario``): a hang in a
lock, a worker thread or the event loop fails the test instead of hanging the suite. Outcomes of
cancelled units are verified from a second, plain ``sqlite3`` connection.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import corestore
from corestore.aio import DEFAULT_QUEUE, DEFAULT_THREADS

from helpers import ROOT, child_env, run_python

SNIPPET = ROOT / "site" / "snippets" / "asyncio_starlette.py"


def run_scenario(name: str, path: Path, timeout: float = 60, driver: str = "sqlite3") -> dict:
    """Run ``asyncio.run(<name>(path))`` of this module in a child (stores on ``driver``);
    return what it returned."""
    proc = run_python(f"""
        import asyncio, json, sys
        import test_asyncio
        out = asyncio.run(asyncio.wait_for(test_asyncio.{name}(sys.argv[1]), {timeout - 10}))
        print("RESULT", json.dumps(out))
    """, str(path), timeout=timeout, env=child_env(CORESTORE_TEST_DRIVER=driver))
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def count(path: str, sql: str = "SELECT count(*) FROM t") -> int:
    """What a second connection (not the store's) sees."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def open_store(path: str, **sizes: int) -> corestore.Store:
    driver = os.environ.get("CORESTORE_TEST_DRIVER", "sqlite3")
    store = await corestore.aopen(corestore.Profile(path=path, driver=driver,
                                                    pragmas={"journal_mode": "wal", "busy_timeout": 5000}), **sizes)
    await store.arun(lambda: store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
    return store


def insert(store: corestore.Store, x: int) -> None:
    store.database.execute_sql("INSERT INTO t VALUES (?)", (x,))


async def until(cond, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


# -- scenarios (run in a child) ----------------------------------------------------------------------
async def scenario_200_under_lock(path: str) -> dict:
    from helpers import Holder

    store = await open_store(path)
    loop = asyncio.get_running_loop()
    late: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            t0 = loop.time()
            await asyncio.sleep(0.001)
            late.append(loop.time() - t0 - 0.001)

    holder = Holder(path)  # another process holds the write lock ...
    loop.call_later(2.0, holder.release)  # ... for 2 s (released from the loop: a blocking wait of ~ms)
    tick = asyncio.ensure_future(ticker())
    started = time.monotonic()
    results = await asyncio.gather(*[store.arun(lambda i=i: insert(store, i) or i) for i in range(200)])
    elapsed = time.monotonic() - started
    stop = True
    await tick
    late.sort()
    stats = store.stats()["asyncio"]
    await store.aclose()
    return {"results": results, "elapsed": elapsed, "p99_ms": late[int(len(late) * 0.99)] * 1000,
            "ticks": len(late), "stats": stats}


async def scenario_cancel_queued(path: str) -> dict:
    store = await open_store(path, threads=1, queue=4)
    gate = threading.Event()
    first = asyncio.ensure_future(store.arun(lambda: gate.wait(10) and insert(store, 1)))
    await until(lambda: store.stats()["asyncio"]["admitted"] == 1 and store.stats()["asyncio"]["workers"] == 1,
                "the first unit to occupy the only worker")
    second = asyncio.ensure_future(store.arun(lambda: insert(store, 2)))
    await until(lambda: store.stats()["asyncio"]["admitted"] == 2, "the second unit to be queued")
    second.cancel()
    await asyncio.sleep(0)
    gate.set()
    await first
    try:
        await second
        raise AssertionError("the cancelled unit returned")
    except asyncio.CancelledError as err:
        message = str(err)
    stats = store.stats()["asyncio"]
    await store.aclose()
    return {"message": message, "stats": stats}


async def scenario_cancel_between_statements(path: str) -> dict:
    store = await open_store(path)
    inside, proceed = threading.Event(), threading.Event()

    def unit() -> None:
        insert(store, 1)
        inside.set()
        proceed.wait(10)  # the caller is cancelled here, between two statements
        insert(store, 2)
        insert(store, 3)

    task = asyncio.ensure_future(store.arun(unit))
    await until(inside.is_set, "the unit to run its first statement")
    task.cancel()
    await asyncio.sleep(0)
    proceed.set()
    try:
        await task
        raise AssertionError("the cancelled unit returned")
    except asyncio.CancelledError as err:
        message = str(err)
    stats = store.stats()["asyncio"]
    await store.aclose()
    return {"message": message, "stats": stats}


async def scenario_cancel_swallowed_by_the_unit(path: str) -> dict:
    store = await open_store(path)
    inside, proceed = threading.Event(), threading.Event()

    def unit() -> str:
        insert(store, 1)
        inside.set()
        proceed.wait(10)
        try:
            insert(store, 2)
        except Exception:  # noqa: BLE001 - the unit swallows the cancellation on purpose
            return "swallowed"
        return "not cancelled"

    task = asyncio.ensure_future(store.arun(unit))
    await until(inside.is_set, "the unit to run its first statement")
    task.cancel()
    await asyncio.sleep(0)
    proceed.set()
    try:
        await task
        raise AssertionError("the cancelled unit returned")
    except asyncio.CancelledError as err:
        message = str(err)
    await store.aclose()
    return {"message": message}


async def scenario_cancel_interrupts_statement(path: str) -> dict:
    store = await open_store(path)
    inside = threading.Event()
    slow = ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 500000000) "
            "SELECT count(*) FROM c")

    def unit() -> None:
        insert(store, 1)
        inside.set()
        store.database.execute_sql(slow).fetchone()  # minutes long unless interrupted

    task = asyncio.ensure_future(store.arun(unit))
    await until(inside.is_set, "the unit to start its long statement")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    try:
        await task
        raise AssertionError("the cancelled unit returned")
    except asyncio.CancelledError as err:
        message = str(err)
    took = time.monotonic() - started
    # the interrupted connection is reusable: the next unit on the same worker commits
    await store.arun(lambda: insert(store, 9))
    stats = store.stats()
    await store.aclose()
    return {"message": message, "took": took, "stats": stats["asyncio"], "faults": stats["faults"]}


async def scenario_cancel_with_a_pending_cursor(path: str) -> dict:
    store = await open_store(path)
    await store.arun(lambda: [insert(store, i) for i in range(10, 20)])
    inside = threading.Event()
    slow = ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 500000000) "
            "SELECT count(*) FROM c")

    def unit() -> None:
        insert(store, 100)
        pending = store.database.execute_sql("SELECT x FROM t")
        pending.fetchone()  # a statement left pending: sqlite3_interrupt's flag would outlive the abort
        inside.set()
        store.database.execute_sql(slow).fetchone()

    task = asyncio.ensure_future(store.arun(unit))
    await until(inside.is_set, "the unit to start its long statement")
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
        raise AssertionError("the cancelled unit returned")
    except asyncio.CancelledError as err:
        message = str(err)
    # the write lock is free: the ROLLBACK was not aborted with the statement
    other = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    await store.arun(lambda: insert(store, 9))
    await store.aclose()
    return {"message": message}


async def scenario_cancel_at_commit(path: str) -> dict:
    store = await open_store(path, threads=1)
    at_commit, proceed = threading.Event(), threading.Event()

    def trace(sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            at_commit.set()
            proceed.wait(10)  # the caller is cancelled while COMMIT is being issued

    def unit() -> None:
        store.database.connection().set_trace_callback(trace)
        insert(store, 1)

    task = asyncio.ensure_future(store.arun(unit))
    await until(at_commit.is_set, "the unit to reach COMMIT")
    task.cancel()
    for _ in range(3):
        await asyncio.sleep(0)  # the task runs its cancellation (interrupt is refused now)
    proceed.set()
    try:
        await task
        raise AssertionError("the cancelled unit returned")
    except asyncio.CancelledError as err:
        message = str(err)
    await store.arun(lambda: store.database.connection().set_trace_callback(None))
    stats = store.stats()["asyncio"]
    await store.aclose()
    return {"message": message, "stats": stats}


async def scenario_backpressure(path: str) -> dict:
    store = await open_store(path, threads=2, queue=3)
    release = threading.Event()
    before = threading.active_count()
    tasks = [asyncio.ensure_future(store.arun(lambda i=i: release.wait(10) and insert(store, i) or i))
             for i in range(20)]
    await until(lambda: store.stats()["asyncio"]["waiting"] == 15, "15 units to wait for a slot")
    full = store.stats()["asyncio"]
    threads_full = threading.active_count() - before
    started = time.monotonic()
    try:
        await store.arun(lambda: insert(store, 99), deadline_s=0.3)
        raise AssertionError("a unit was admitted past the bound")
    except corestore.BusyError as err:
        busy = {"message": str(err), "after": time.monotonic() - started}
    # cancelled while waiting for a slot: never admitted, never runs
    waiting = tasks[-1]
    waiting.cancel()
    release.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    stats = store.stats()["asyncio"]
    await store.aclose()
    return {"full": full, "threads_full": threads_full, "busy": busy, "stats": stats,
            "results": [r if isinstance(r, int) else type(r).__name__ for r in done]}


async def scenario_deadline_in_queue(path: str) -> dict:
    store = await open_store(path, threads=1, queue=2)
    release = threading.Event()
    first = asyncio.ensure_future(store.arun(lambda: release.wait(10)))
    await until(lambda: store.stats()["asyncio"]["workers"] == 1, "the worker to take the first unit")
    late = asyncio.ensure_future(store.arun(lambda: insert(store, 5), deadline_s=0.2))
    await asyncio.sleep(0.4)  # the deadline passes while the unit waits for the only worker
    release.set()
    await first
    try:
        await late
        raise AssertionError("a unit ran past its deadline")
    except corestore.BusyError as err:
        message = str(err)
    await store.aclose()
    return {"message": message}


async def scenario_lifecycle(path: str) -> dict:
    profile = corestore.Profile(path=path, plugins=("accounting",), pragmas={"journal_mode": "wal"})
    store = await corestore.aopen(profile, threads=2, queue=8)
    await store.arun(lambda: store.database.execute_sql("CREATE TABLE IF NOT EXISTS usage (n INTEGER)"))
    acc = store.plugin("accounting")
    for n in range(50):
        assert acc.submit("usage", {"n": n})
    flushed = await acc.aflush(5.0)
    rows = count(path, "SELECT count(*) FROM usage")
    report = await store.ahealth()
    try:
        await corestore.aopen(profile, threads=3)  # the same store (cached): its sizes are set
        conflict = ""
    except corestore.ConfigError as err:
        conflict = str(err)
    await store.aclose()
    try:
        await store.arun(lambda: None)
        after_close = ""
    except corestore.StoreClosedError as err:
        after_close = str(err)
    return {"flushed": flushed, "rows": rows, "health": report.status.name, "conflict": conflict,
            "after_close": after_close, "workers_alive": sum(t.name.startswith("corestore-aio") and t.is_alive()
                                                              for t in threading.enumerate())}


# -- tests -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_200_concurrent_arun_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    out = run_scenario("scenario_200_under_lock", tmp_path / "a.db")
    assert sorted(out["results"]) == list(range(200))
    assert out["elapsed"] >= 1.9, "the units did not wait for the other process's lock"
    # a loop blocked by a unit waiting for the lock would be ~2000 ms late; a free loop on a loaded
    # 2-core machine was measured up to ~60 ms late (scheduling, not corestore): 250 ms separates them
    assert out["p99_ms"] < 250, f"event loop lateness p99 {out['p99_ms']:.2f} ms over {out['ticks']} ticks"
    assert out["stats"]["threads"] == DEFAULT_THREADS and out["stats"]["queue"] == DEFAULT_QUEUE
    assert out["stats"]["workers"] <= DEFAULT_THREADS
    assert count(str(tmp_path / "a.db")) == 200


def test_cancelled_before_start_never_runs(tmp_path: Path) -> None:
    out = run_scenario("scenario_cancel_queued", tmp_path / "a.db")
    assert "outcome not_started" in out["message"]
    assert out["stats"]["cancelled_not_started"] == 1
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x = 2") == 0
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x = 1") == 1


def test_cancelled_while_running_stops_before_the_next_statement(tmp_path: Path) -> None:
    out = run_scenario("scenario_cancel_between_statements", tmp_path / "a.db")
    assert "outcome not_committed" in out["message"]
    assert out["stats"]["cancelled_not_committed"] == 1
    assert count(str(tmp_path / "a.db")) == 0  # the first statement's row was rolled back too


def test_a_unit_that_swallows_the_cancellation_is_still_not_committed(tmp_path: Path) -> None:
    out = run_scenario("scenario_cancel_swallowed_by_the_unit", tmp_path / "a.db")
    assert "outcome not_committed" in out["message"]  # the last check, before COMMIT, stopped it
    assert count(str(tmp_path / "a.db")) == 0


@pytest.mark.parametrize("driver", ["sqlite3", "apsw"])
def test_cancel_interrupts_the_running_statement(tmp_path: Path, driver: str) -> None:
    out = run_scenario("scenario_cancel_interrupts_statement", tmp_path / "a.db", driver=driver)
    assert "outcome not_committed" in out["message"]
    assert out["took"] < 5, "the long statement was not interrupted"
    assert out["faults"] == 0, "a cancellation is not a storage fault"
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x = 1") == 0
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x = 9") == 1


@pytest.mark.parametrize("driver", ["sqlite3", "apsw"])
def test_cancel_with_a_pending_cursor_rolls_back_and_frees_the_lock(tmp_path: Path, driver: str) -> None:
    out = run_scenario("scenario_cancel_with_a_pending_cursor", tmp_path / "a.db", driver=driver)
    assert "outcome not_committed" in out["message"]
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x = 100") == 0
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x = 9") == 1


def test_cancelled_at_commit_finishes_and_says_committed(tmp_path: Path) -> None:
    out = run_scenario("scenario_cancel_at_commit", tmp_path / "a.db")
    assert "outcome committed" in out["message"]
    assert out["stats"]["cancelled_committed"] == 1
    assert count(str(tmp_path / "a.db")) == 1


def test_backpressure_bounds_threads_and_queue(tmp_path: Path) -> None:
    out = run_scenario("scenario_backpressure", tmp_path / "a.db")
    assert out["full"]["workers"] == 2 and out["full"]["admitted"] == 5 and out["full"]["waiting"] == 15
    assert out["threads_full"] <= 2
    assert "executor is full (2 threads, 3 queued)" in out["busy"]["message"]
    assert 0.25 <= out["busy"]["after"] < 2
    assert out["stats"]["rejected_busy"] == 1
    assert out["results"][-1] == "CancelledError" and out["results"][:19] == list(range(19))
    assert count(str(tmp_path / "a.db")) == 19  # the cancelled waiter and the rejected unit never ran


def test_deadline_passed_in_the_queue_never_runs(tmp_path: Path) -> None:
    out = run_scenario("scenario_deadline_in_queue", tmp_path / "a.db")
    assert "waited for a worker past its deadline; it never ran" in out["message"]
    assert count(str(tmp_path / "a.db")) == 0


def test_aopen_aflush_ahealth_aclose(tmp_path: Path) -> None:
    out = run_scenario("scenario_lifecycle", tmp_path / "a.db")
    assert out["flushed"] is True and out["rows"] == 50
    assert out["health"] == "UP"
    assert "already runs with threads=2, queue=8" in out["conflict"]
    assert "closed" in out["after_close"]
    assert out["workers_alive"] == 0


def test_stats_before_any_async_call(tmp_path: Path) -> None:
    with corestore.open(str(tmp_path / "a.db")) as store:
        stats = store.stats()["asyncio"]
    assert stats["calls"] == 0 and stats["threads"] == DEFAULT_THREADS and stats["queue"] == DEFAULT_QUEUE


def test_executor_sizes_are_validated(tmp_path: Path) -> None:
    async def main() -> None:
        await corestore.aopen(str(tmp_path / "a.db"), threads=0)

    with pytest.raises(corestore.ConfigError, match="threads = 0 must be an integer >= 1"):
        asyncio.run(asyncio.wait_for(main(), 30))
    assert not [s for s in corestore.store.open_stores() if s.path == str(tmp_path / "a.db")]


@pytest.mark.slow
def test_starlette_snippet_with_a_real_server(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen([sys.executable, str(SNIPPET)], cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on"), (line, proc.stderr.read() if proc.poll() is not None else "")
        base = f"http://127.0.0.1:{int(line.split()[-1])}"
        ids = []
        for i in range(5):
            req = urllib.request.Request(f"{base}/notes", data=json.dumps({"text": f"note {i}"}).encode(),
                                         method="POST", headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 201
                ids.append(json.loads(resp.read())["id"])
        with urllib.request.urlopen(f"{base}/notes/{ids[2]}", timeout=10) as resp:
            assert json.loads(resp.read()) == {"id": ids[2], "text": "note 2"}
        with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "UP"}
        for probe in ("livez", "readyz", "startupz"):  # corestore_contrib.http_health, mounted
            with urllib.request.urlopen(f"{base}/probes/{probe}", timeout=10) as resp:
                assert resp.status == 200, probe
    finally:
        proc.send_signal(signal.SIGINT)  # graceful: the lifespan flushes accounting and closes the store
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    db = str(tmp_path / "notes.db")
    assert count(db, "SELECT count(*) FROM note") == 5
    assert count(db, "SELECT count(*) FROM usage") == 5  # aflush at shutdown made every usage row durable


def test_arun_in_a_forked_child_gets_its_own_executor(tmp_path: Path) -> None:
    proc = run_python("""
        import asyncio, os, sys, corestore
        path = sys.argv[1]

        async def setup():
            s = await corestore.aopen(corestore.Profile(path=path, pragmas={"journal_mode": "wal"}))
            await s.arun(lambda: s.database.execute_sql("CREATE TABLE t (x INTEGER)"))
            return s

        s = asyncio.run(setup())
        parent_executor = s._aio
        pid = os.fork()
        if pid == 0:  # the parent's worker threads do not exist here: a new executor, new workers
            async def child():
                await s.arun(lambda: s.database.execute_sql("INSERT INTO t VALUES (1)"))
                return s._aio is not parent_executor and s.stats()["asyncio"]["calls"] == 1
            ok = asyncio.run(asyncio.wait_for(child(), 20))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status

        async def parent():
            await s.arun(lambda: s.database.execute_sql("INSERT INTO t VALUES (2)"))
            await s.aclose()
        asyncio.run(parent())
        print("parent ok", parent_executor.stats()["calls"])
    """, str(tmp_path / "a.db"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "parent ok 2" in proc.stdout
    assert count(str(tmp_path / "a.db"), "SELECT count(*) FROM t WHERE x IN (1, 2)") == 2  # child's and parent's
