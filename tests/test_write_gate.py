"""write_gate: FIFO, bounded write admission across threads and processes (issue 19).

Everything that waits on a lock runs in a child process with a time limit (a hang fails the test
instead of hanging the suite). Real files, real processes, real SIGKILL; the only fault injection
is the preload failpoint (an fsync that fails at COMMIT)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import corestore
from corestore import BusyError, ConfigError, HealthStatus, Profile
from corestore_plugins import _write_gate_ticket as ticket_gate
from corestore_plugins.write_gate import WriteGate

from helpers import child_env, run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based children (Linux)")

CTX = multiprocessing.get_context("fork")
PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000}
LIMIT_S = 60.0


def _profile(path: str | Path, **settings: Any) -> Profile:
    return Profile(path=str(path), plugins=("wal_guard", "write_gate"), pragmas=PRAGMAS,
                   settings={"write_gate": settings} if settings else {})


def _make_db(path: str | Path) -> str:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who TEXT, n INTEGER)")
    conn.close()
    return str(path)


def _start(target: Callable[..., Any], *args: Any) -> Any:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _join(*procs: Any, timeout: float = LIMIT_S) -> None:
    """Join every child within ``timeout``; a child still alive is killed and fails the test."""
    deadline = time.monotonic() + timeout
    hung = []
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            hung.append(proc.pid)
            proc.kill()
            proc.join(5)
    assert not hung, f"children {hung} did not finish within {timeout} s (a hang)"
    for proc in procs:
        assert proc.exitcode in (0, -signal.SIGKILL), f"child {proc.pid} exited with {proc.exitcode}"


def _get(queue: Any, what: str, timeout: float = 30.0) -> Any:
    try:
        return queue.get(timeout=timeout)
    except Exception as err:  # queue.Empty
        raise AssertionError(f"no {what} within {timeout} s") from err


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def _next_ticket(db: str) -> int:
    """The gate's ticket counter, read from the shared table (no lock: an observer's view)."""
    with open(db + ticket_gate.GATE_SUFFIX, "rb") as f:
        return int.from_bytes(f.read(16)[8:16], "little")


# -- children ------------------------------------------------------------------------------------
def _hold_gate(db: str, ready: Any, release: Any, out: Any, with_txn: bool) -> None:
    """Take the gate (and, with ``with_txn``, SQLite's write lock too) and keep it until told."""
    gate = ticket_gate.Gate(db)
    outcome = gate.acquire(10.0)
    conn = None
    if with_txn:
        conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (who, n) VALUES ('holder', 0)")
    ready.put((os.getpid(), outcome.value))
    release.wait(LIMIT_S)
    if conn is not None:
        conn.execute("COMMIT")
    gate.release()
    out.put(("holder", time.monotonic()))


def _queue_and_record(db: str, name: str, out: Any, timeout: float) -> None:
    """Queue for the gate; once in, append ``name`` to the order file and report the time."""
    gate = ticket_gate.Gate(db)
    outcome = gate.acquire(timeout)
    got = time.monotonic()
    if outcome.held:
        with open(db + ".order", "a") as f:
            f.write(name + "\n")
        gate.release()
    out.put((name, got, outcome.value))


def test_fifo_order_across_processes(tmp_path: Path) -> None:
    db = _make_db(tmp_path / "fifo.db")
    ready, out, release = CTX.Queue(), CTX.Queue(), CTX.Event()
    holder = _start(_hold_gate, db, ready, release, out, False)
    assert _get(ready, "the holder")[1] == "held"
    base = _next_ticket(db)
    waiters = []
    names = [f"w{i}" for i in range(6)]
    for i, name in enumerate(names):  # queue them one by one, each visibly in the queue before the next
        waiters.append(_start(_queue_and_record, db, name, out, 30.0))
        _wait_for(lambda: _next_ticket(db) == base + i + 1, f"{name} to take its ticket")
    release.set()
    results = [_get(out, "a result") for _ in range(len(names) + 1)]
    _join(holder, *waiters)
    assert all(r[2] == "waited" for r in results if r[0] != "holder"), results
    assert Path(db + ".order").read_text().split() == names  # acquired in the order they queued


def test_sigkilled_holder_releases_at_once(tmp_path: Path) -> None:
    """A holder killed while holding the gate (and SQLite's write lock) does not block the queue
    beyond the kernel's release of its locks; a waiter killed in the queue is skipped."""
    db = _make_db(tmp_path / "kill.db")
    ready, out, release = CTX.Queue(), CTX.Queue(), CTX.Event()
    holder = _start(_hold_gate, db, ready, release, out, True)
    pid, outcome = _get(ready, "the holder")
    assert outcome == "held"
    base = _next_ticket(db)
    doomed = _start(_queue_and_record, db, "doomed", out, 30.0)  # will be killed while waiting
    _wait_for(lambda: _next_ticket(db) == base + 1, "the doomed waiter to queue")
    survivor = _start(_queue_and_record, db, "survivor", out, 30.0)
    _wait_for(lambda: _next_ticket(db) == base + 2, "the survivor to queue")
    doomed.kill()
    doomed.join(10)
    time.sleep(0.05)  # the survivor must still wait: the holder is alive
    assert out.empty(), "a waiter got in while the holder was alive"
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    name, got, outcome = _get(out, "the survivor after the kill")
    _join(holder, doomed, survivor)
    assert (name, outcome) == ("survivor", "waited")
    assert got - killed_at < 1.0, f"the survivor got the gate {got - killed_at:.3f} s after the kill"
    store = corestore.open(_profile(db))  # the database is fine: the killed transaction rolled back
    assert store.database.execute_sql("SELECT count(*) FROM t WHERE who = 'holder'").fetchone()[0] == 0
    assert store.database.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"


def _gated_writer(db: str, name: str, n: int, start: Any, out: Any) -> None:
    try:
        store = corestore.open(_profile(db))
        ex = store.database.execute_sql
        start.wait(LIMIT_S)
        for i in range(n):
            store.run(lambda i=i: ex("INSERT INTO t (who, n) VALUES (?, ?)", (name, i)))
        out.put((name, store.plugin("write_gate").stats()["gated"], None))
        store.close()
    except BaseException as err:
        out.put((name, 0, repr(err)))


def _raw_writer(db: str, n: int, start: Any, out: Any) -> None:
    try:
        conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        start.wait(LIMIT_S)
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (who, n) VALUES ('raw', ?)", (i,))
            conn.execute("COMMIT")
        conn.close()
        out.put(("raw", n, None))
    except BaseException as err:
        out.put(("raw", 0, repr(err)))


def test_raw_sqlite3_writer_interleaved_with_gated_writers(tmp_path: Path) -> None:
    """Writers outside corestore only meet SQLite's lock: nothing is lost, nobody hangs."""
    db = _make_db(tmp_path / "mixed.db")
    start, out = CTX.Event(), CTX.Queue()
    n = 150
    procs = [_start(_gated_writer, db, f"g{i}", n, start, out) for i in range(4)]
    procs += [_start(_raw_writer, db, n, start, out) for _ in range(2)]
    time.sleep(0.3)  # let them open (the barrier is the event)
    start.set()
    results = [_get(out, "a writer's result", timeout=LIMIT_S) for _ in procs]
    _join(*procs)
    assert [r for r in results if r[2]] == []
    assert sum(r[1] for r in results if r[0].startswith("g")) == 4 * n  # every gated write held the gate
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 6 * n
    assert conn.execute("SELECT count(DISTINCT who || ':' || n) FROM t").fetchone()[0] == 5 * n  # raw rows repeat who
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def _hold_store_txn(db: str, ready: Any, seconds: float) -> None:
    store = corestore.open(_profile(db))
    with store.transaction():
        store.database.execute_sql("INSERT INTO t (who, n) VALUES ('long', 1)")
        ready.put(os.getpid())
        time.sleep(seconds)
    store.close()


def _deadline_child(db: str, out: Any) -> None:
    store = corestore.open(_profile(db))
    calls = []
    started = time.monotonic()
    try:
        store.run(lambda: calls.append(store.database.execute_sql("INSERT INTO t (who, n) VALUES ('late', 1)")),
                  deadline_s=0.4)
        out.put(("no error", time.monotonic() - started, len(calls), None))
    except BusyError as err:
        out.put(("BusyError", time.monotonic() - started, len(calls), err.committed))
    stats = store.plugin("write_gate").stats()
    out.put((stats["timeouts"], stats["gated"]))
    store.close()


def test_deadline_shorter_than_the_queue_ends_in_busy_error_on_time(tmp_path: Path) -> None:
    db = _make_db(tmp_path / "deadline.db")
    ready, out = CTX.Queue(), CTX.Queue()
    holder = _start(_hold_store_txn, db, ready, 3.0)
    _get(ready, "the long transaction")
    child = _start(_deadline_child, db, out)
    outcome, elapsed, calls, committed = _get(out, "the deadline child's result")
    timeouts, gated = _get(out, "the deadline child's stats")
    _join(child, holder)
    assert outcome == "BusyError" and committed is False and calls == 0
    assert 0.35 <= elapsed < 1.0, f"BusyError after {elapsed:.3f} s for a 0.4 s deadline (busy_timeout 5 s)"
    assert timeouts >= 1 and gated == 0


def _commit_fails(path: str) -> dict:
    """fsync fails at COMMIT under the gate: the unit is not retried, and the gate is free again."""
    from corestore_contrib.failpoint import PreloadFailpoint

    profile = Profile(path=path, plugins=("write_gate",), retry={"fatal_attempts": 3},
                      pragmas={"journal_mode": "wal", "synchronous": "full", "busy_timeout": 1000})
    store = corestore.open(profile)
    store.database.execute_sql("create table t(id integer primary key, x)")
    disk = PreloadFailpoint.from_env(database=path)
    calls = []
    out: dict = {}
    disk.arm(op="fsync", file="wal", errno="EIO")
    try:
        store.run(lambda: calls.append(store.database.execute_sql("insert into t(x) values ('once')")))
    except corestore.FatalError as err:
        out.update(raised=err.classification.name, committed=err.committed)
    disk.heal()
    gate = store.plugin("write_gate").gate
    out["calls"] = len(calls)
    out["retries"] = store.stats()["retries"]
    out["held_after"] = gate.held_by_this_thread()
    seen: list = []

    def other() -> None:
        started = time.monotonic()
        outcome = gate.acquire(2.0)
        seen.extend([outcome.value, time.monotonic() - started])

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    out["other_thread"] = seen
    store.close()
    return out


def test_no_write_is_retried_after_commit_was_issued(preload_failpoint, tmp_path: Path) -> None:
    child = preload_failpoint.run(_commit_fails, args=[str(tmp_path / "commit.db")])
    out = child.check().result
    assert out["raised"] == "SQLITE_IOERR_FSYNC" and out["committed"] is None
    assert out["calls"] == 1 and out["retries"] == 0  # fatal_attempts=3, but COMMIT was issued
    assert out["held_after"] is False  # released after the failure (a kept place at most: 0.2 ms)
    outcome, waited = out["other_thread"]
    assert outcome in ("held", "waited") and waited < 0.5, out["other_thread"]


# -- in one process (each in a child interpreter with a time limit) -----------------------------------
def test_nesting_reentrancy_and_checkpoint_under_held(tmp_path: Path) -> None:
    """Savepoints never re-take the gate; a thread that holds it (``held()``) runs checkpoints and
    transactions inside without waiting for itself; another thread waits for its turn."""
    db = _make_db(tmp_path / "nest.db")
    code = """
        import sys, threading, time, corestore
        from corestore import Profile
        p = Profile(path=sys.argv[1], plugins=("wal_guard", "write_gate"),
                    pragmas={"journal_mode": "wal", "busy_timeout": 5000})
        s = corestore.open(p)
        wg = s.plugin("write_gate")
        with s.transaction():
            s.database.execute_sql("insert into t (who, n) values ('outer', 1)")
            with s.transaction():            # a savepoint
                with s.database.atomic():    # and another
                    s.database.execute_sql("insert into t (who, n) values ('inner', 2)")
        st = wg.stats()
        assert (st["gated"], st["reentered"]) == (1, 0), st
        other = []
        with wg.held(1.0) as held:
            assert held
            print("checkpoint", s.checkpoint("TRUNCATE"))
            s.run(lambda: s.database.execute_sql("insert into t (who, n) values ('in-held', 3)"))
            def writer():
                s.database.execute_sql("select 1")  # opens this thread's connection (a read: not gated)
                s.run(lambda: s.database.execute_sql("insert into t (who, n) values ('thread', 4)"))
                other.append(time.monotonic())
            t = threading.Thread(target=writer)
            t.start()
            time.sleep(0.2)
            assert not other, "another thread got in while this one held the gate"
            released = time.monotonic()
        t.join(10)
        assert other and other[0] >= released
        st = wg.stats()
        assert st["reentered"] == 2 and st["waited"] == 1, st   # checkpoint + run inside held(); the thread waited
        print("rows", s.database.execute_sql("select count(*) from t").fetchone()[0])
    """
    proc = run_python(code, db, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rows 4" in proc.stdout


@pytest.mark.parametrize("mode", ["linux", "portable"])
def test_threads_and_processes_share_one_queue(tmp_path: Path, mode: str) -> None:
    """3 processes × 4 threads × 40 writes: no BUSY, every write gated, nothing lost. On Linux
    threads queue individually (open-file-description locks, futex waits); the portable path
    (POSIX record locks, helper-thread waits: macOS) queues one thread per process at a time."""
    db = _make_db(tmp_path / "threads.db")
    env = child_env(**({"CORESTORE_GATE_NO_FUTEX": "1", "CORESTORE_GATE_POSIX_LOCKS": "1"} if mode == "portable" else {}))
    code = """
        import sys, threading, corestore
        from corestore import Profile
        p = Profile(path=sys.argv[1], plugins=("write_gate",), pragmas={"journal_mode": "wal", "busy_timeout": 5000})
        s = corestore.open(p)
        def work(k):
            s.database.execute_sql("select 1")   # opens this thread's connection
            for i in range(40):
                s.run(lambda: s.database.execute_sql("insert into t (who, n) values (?, ?)", (f"t{k}", i)))
        ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        [t.start() for t in ts]; [t.join(50) for t in ts]
        st = s.plugin("write_gate").stats()
        print("gated", st["gated"], "busy", s.stats()["busy_waits"], "timeouts", st["timeouts"])
    """
    children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), db],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(3)]
    outs = []
    for child in children:
        try:
            outs.append(child.communicate(timeout=LIMIT_S))
        except subprocess.TimeoutExpired as err:
            for c in children:
                c.kill()
            raise AssertionError("a writer process hung") from err
        assert child.returncode == 0, outs[-1]
    for stdout, _ in outs:
        assert "gated 160 busy 0 timeouts 0" in stdout, stdout
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3 * 160
    conn.close()


def _linger_then_idle(db: str, ready: Any, go: Any, out: Any) -> None:
    gate = ticket_gate.Gate(db)
    assert gate.acquire(5.0, turn_s=1.0).value == "held"
    ready.put("held")
    go.wait(LIMIT_S)
    gate.release(linger_s=0.05)  # keeps its place for 50 ms (a waiter is queued), then goes idle
    out.put(("released", time.monotonic()))
    time.sleep(1.0)
    outcome = gate.acquire(5.0, turn_s=1.0)  # taken over meanwhile: queues afresh, never resumes
    out.put(("again", outcome.value))
    gate.release()


def test_a_kept_place_is_taken_over_when_its_linger_ends(tmp_path: Path) -> None:
    db = _make_db(tmp_path / "linger.db")
    ready, out, go = CTX.Queue(), CTX.Queue(), CTX.Event()
    first = _start(_linger_then_idle, db, ready, go, out)
    _get(ready, "the first holder")
    base = _next_ticket(db)
    waiter = _start(_queue_and_record, db, "waiter", out, 10.0)
    _wait_for(lambda: _next_ticket(db) == base + 1, "the waiter to queue")
    go.set()
    results = dict((r[0], r[1:]) for r in (_get(out, "results") for _ in range(3)))
    _join(first, waiter)
    released = results["released"][0]
    got, outcome = results["waiter"]
    assert outcome == "waited"
    assert 0.03 <= got - released < 0.5, f"taken over {got - released:.3f} s after the release (linger 50 ms)"
    assert results["again"] == ("held",)


def _solo_turn_then_keep_writing(db: str, ready: Any, out: Any) -> None:
    """Take the gate with nobody waiting (a whole turn_s of 30 s), then keep writing: release
    with a linger and resume, until the turn is handed on."""
    gate = ticket_gate.Gate(db)
    assert gate.acquire(5.0, turn_s=30.0, round_s=0.05).value == "held"
    ready.put("held")
    deadline = time.monotonic() + LIMIT_S
    resumed = 0
    while time.monotonic() < deadline:
        gate.release(linger_s=0.01)
        outcome = gate.acquire(20.0, turn_s=30.0, round_s=0.05)
        if outcome.value != "resumed":
            out.put(("writer", time.monotonic(), outcome.value, resumed))
            gate.release()
            return
        resumed += 1
        time.sleep(0.001)  # a transaction's worth of work between two writes
    out.put(("writer", time.monotonic(), "never handed on", resumed))
    gate.release()


def test_a_turn_begun_alone_is_cut_to_its_share_of_a_round_once_others_queue(tmp_path: Path) -> None:
    # A writer that found the gate free got a whole turn_s (30 s here). Once another writer
    # queues, its turn is cut to round_s / (writers waiting) = 50 ms from then, so the newcomer
    # gets in within about that, not after the 30 s turn (the writer that came first must not
    # run a whole turn ahead of the queue: the early finishers of a contention run).
    db = _make_db(tmp_path / "solo.db")
    ready, out = CTX.Queue(), CTX.Queue()
    writer = _start(_solo_turn_then_keep_writing, db, ready, out)
    _get(ready, "the first writer's turn")
    base = _next_ticket(db)
    queued_at = time.monotonic()
    newcomer = _start(_queue_and_record, db, "newcomer", out, 20.0)
    results = {r[0]: r[1:] for r in (_get(out, "results") for _ in range(2))}
    _join(writer, newcomer)
    got, outcome = results["newcomer"]
    assert outcome == "waited"
    assert _next_ticket(db) >= base + 1
    assert got - queued_at < 2.0, f"the newcomer waited {got - queued_at:.2f} s behind a 30 s solo turn"
    assert results["writer"][1] == "waited", results["writer"]  # it queued afresh, behind the newcomer
    assert results["writer"][2] > 0  # it did resume within its (cut) turn before handing on


def _slow_liveness() -> None:
    """Make the waiters' liveness fallback 5 s instead of 5 ms (in this forked child only), so
    that a waiter that got the gate only through it stands out from one woken in time."""
    from corestore_plugins import _write_gate_wait

    _write_gate_wait.LIVENESS_S = 5.0  # type: ignore[misc]


def _admitted_then_stop_writing(db: str, out: Any, stop: Any) -> None:
    """Queue; once admitted write once (a 10 ms turn, a 1 ms linger) and stop writing, keeping
    the place (alive, its byte locked), like a worker whose last transaction that was."""
    _slow_liveness()
    gate = ticket_gate.Gate(db)
    outcome = gate.acquire(20.0, turn_s=0.01, round_s=0.0)
    gate.release(linger_s=0.001)
    out.put(("stopped", time.monotonic(), outcome.value))
    stop.wait(LIMIT_S)


def _queue_slow_liveness(db: str, name: str, out: Any, timeout: float) -> None:
    _slow_liveness()
    _queue_and_record(db, name, out, timeout)


def test_a_waiter_behind_a_writer_that_stops_is_woken_in_time(tmp_path: Path) -> None:
    # The third in line goes to sleep while the second still waits (no `until` to wake at yet).
    # When the second is admitted it wakes the third, which then sleeps only to the end of the
    # second's turn (10 ms) and takes over the place the second kept after its last write. Before,
    # the third slept to its liveness check (5 ms in production: 5 ms per writer that stopped,
    # stacked at the end of a contention run; 5 s here, so that a miss cannot pass unseen).
    if ticket_gate._FUTEX is None:
        pytest.skip("turns and kept places need futex waits")
    db = _make_db(tmp_path / "stops.db")
    ready, out, release, stop = CTX.Queue(), CTX.Queue(), CTX.Event(), CTX.Event()
    holder = _start(_hold_gate, db, ready, release, out, False)
    _get(ready, "the holder")
    base = _next_ticket(db)
    second = _start(_admitted_then_stop_writing, db, out, stop)
    _wait_for(lambda: _next_ticket(db) == base + 1, "the second to queue")
    third = _start(_queue_slow_liveness, db, "third", out, 20.0)
    _wait_for(lambda: _next_ticket(db) == base + 2, "the third to queue")
    release.set()
    results = {r[0]: r[1:] for r in (_get(out, "results") for _ in range(3))}
    stop.set()
    _join(holder, second, third)
    stopped, outcome = results["stopped"]
    assert outcome == "waited"
    got, outcome = results["third"]
    assert outcome == "waited"
    assert got - stopped < 2.0, f"the third got the gate {got - stopped:.2f} s after the second stopped writing"


@pytest.mark.parametrize("locks", ["ofd", "posix"])
def test_helper_thread_waits_without_futex(tmp_path: Path, locks: str) -> None:
    """Where futex is not available (macOS) the wait blocks on the predecessor's byte in a helper
    thread, and where open-file-description locks are not (macOS) POSIX record locks serve, one
    thread per process: a deadline and a killed holder behave the same."""
    db = _make_db(tmp_path / "helper.db")
    code = """
        import os, sys, time, signal, multiprocessing as mp
        from corestore_plugins import _write_gate_ticket as T
        assert T._FUTEX is None
        db = sys.argv[1]
        open(db, "a").close()
        ctx = mp.get_context("fork")
        def hold(q, ev):
            g = T.Gate(db); assert g.acquire(5).value == "held"; q.put(os.getpid()); ev.wait(30); g.release()
        def wait(q, name, timeout):
            g = T.Gate(db); t = time.monotonic(); o = g.acquire(timeout); q.put((name, o.value, time.monotonic() - t))
            if o.held: g.release()
        q, ev = ctx.Queue(), ctx.Event()
        h = ctx.Process(target=hold, args=(q, ev)); h.start(); pid = q.get(timeout=10)
        short = ctx.Process(target=wait, args=(q, "short", 0.3)); short.start()
        print("short", q.get(timeout=10))
        w = ctx.Process(target=wait, args=(q, "w", 10)); w.start()
        time.sleep(0.2)
        t = time.monotonic(); os.kill(pid, signal.SIGKILL)
        name, outcome, _ = q.get(timeout=10)
        print("after kill", name, outcome, round(time.monotonic() - t, 3))
        for p in (h, short, w): p.join(10)
    """
    extra = {"CORESTORE_GATE_NO_FUTEX": "1"}
    if locks == "posix":
        extra["CORESTORE_GATE_POSIX_LOCKS"] = "1"
    proc = run_python(code, db + locks, timeout=60, env=child_env(**extra))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    name, outcome, waited = eval(lines[0].split(" ", 1)[1])  # noqa: S307 - our own child's output
    assert (name, outcome) == ("short", "timeout") and 0.25 <= waited < 1.0
    name, outcome, after = lines[1].split()[2:]
    assert (name, outcome) == ("w", "waited") and float(after) < 0.5


# -- permissions, sidecar, plugin surface --------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as nobody")
def test_read_only_user_cannot_hold_the_gate(tmp_path: Path) -> None:
    """A user who can read the database but not write it cannot open the sidecar for writing,
    so it can neither take the gate nor block it (every lock is a write lock)."""
    shared = Path(tempfile.mkdtemp(prefix="corestore-gate-ro-", dir="/tmp"))  # tmp_path's parents are 0700
    shared.chmod(0o755)
    db = _make_db(shared / "ro.db")
    os.chmod(db, 0o644)
    root_gate = ticket_gate.Gate(db)
    assert root_gate.acquire(1.0).value == "held"  # creates the sidecar with the database's mode
    root_gate.release()
    assert stat.S_IMODE(os.stat(db + ticket_gate.GATE_SUFFIX).st_mode) & 0o022 == 0
    code = """
        import errno, fcntl, os, struct, sys
        from corestore_plugins import _write_gate_ticket as T   # imported first: the stdlib may be root's
        os.setgid(65534); os.setuid(65534)
        db = sys.argv[1]
        g = T.Gate(db)
        print("outcome", g.acquire(0.5).value)
        fd = os.open(db + T.GATE_SUFFIX, os.O_RDONLY)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, T._META, 1, 0))
            print("lock taken")
        except OSError as err:
            print("lock refused", errno.errorcode[err.errno])
    """
    proc = run_python(code, db, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outcome unavailable" in proc.stdout and "lock refused EBADF" in proc.stdout
    assert root_gate.acquire(1.0).value == "held"  # nothing left behind by the attempt
    root_gate.release()
    for suffix in ("", ticket_gate.GATE_SUFFIX, "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    shared.rmdir()


def test_sidecar_is_no_more_permissive_than_the_database_and_refuses_symlinks(tmp_path: Path) -> None:
    db = _make_db(tmp_path / "perm.db")
    os.chmod(db, 0o600)
    gate = ticket_gate.Gate(db)
    assert gate.acquire(1.0).value == "held"
    gate.release()
    assert stat.S_IMODE(os.stat(db + ticket_gate.GATE_SUFFIX).st_mode) & 0o077 == 0
    other = _make_db(tmp_path / "other.db")
    target = tmp_path / "victim"
    target.write_text("precious")
    os.symlink(target, other + ticket_gate.GATE_SUFFIX)
    planted = ticket_gate.Gate(other)
    assert planted.acquire(1.0).value == "unavailable"
    assert "cannot open" in planted.snapshot()["unavailable"]
    assert target.read_text() == "precious"


def test_settings_are_validated(tmp_path: Path) -> None:
    assert WriteGate.Settings().timeout_s is None
    for bad in ({"timeout_s": -1}, {"checkpoints": 1}, {"busy_sleep_s": 0}, {"turn_s": "x"}, {"nope": 1}):
        with pytest.raises(ConfigError) as info:
            corestore.open(_profile(_make_db(tmp_path / "s.db"), **bad))
        assert next(iter(bad)) in str(info.value)


def test_plugin_through_entry_points_stats_and_health(tmp_path: Path) -> None:
    """The plugin is found through the real ``corestore`` entry point group (no test hook)."""
    from corestore.registry import discover

    assert discover()["write_gate"].value == "corestore_plugins.write_gate:WriteGate"
    db = _make_db(tmp_path / "ep.db")
    store = corestore.open(_profile(db))
    wg = store.plugin("write_gate")
    assert isinstance(wg, WriteGate) and store.plugin(WriteGate) is wg
    for _ in range(3):
        store.run(lambda: store.database.execute_sql("INSERT INTO t (who, n) VALUES ('x', 1)"))
    store.database.execute_sql("INSERT INTO t (who, n) VALUES ('autocommit', 1)")
    with store.read():
        store.database.execute_sql("SELECT count(*) FROM t").fetchone()
    stats = wg.stats()
    assert stats["gated"] == 4 and stats["immediate"] + stats["resumed"] == 4 and stats["timeouts"] == 0
    assert stats["resumed"] >= 1  # one writer keeps its place between back-to-back writes
    assert stats["gate"]["available"] and stats["gate"]["path"] == db + ticket_gate.GATE_SUFFIX
    component = store.health().components["write_gate"]
    assert component.status is HealthStatus.UP and "4 writes admitted" in component.summary
    store.close()
    ro = corestore.open(attrs.evolve(_profile(db), read_only=True))
    assert ro.plugin("write_gate").gate is None
    assert "not used" in ro.health().components["write_gate"].summary


def test_apsw_fair_busy_handler(tmp_path: Path) -> None:
    """apsw with ``apsw_busy_handler``: a writer outside corestore holds SQLite's lock; the store's
    writer retries on short fixed sleeps and gets in right after the release, or ends in
    BusyError at its busy timeout."""
    pytest.importorskip("apsw")
    db = _make_db(tmp_path / "apsw.db")
    code = """
        import sqlite3, subprocess, sys, time, corestore
        from corestore import Profile, BusyError
        db = sys.argv[1]
        p = Profile(path=db, driver="apsw", plugins=("write_gate",),
                    pragmas={"journal_mode": "wal", "busy_timeout": 400},
                    settings={"write_gate": {"apsw_busy_handler": True, "busy_sleep_s": 0.002}})
        s = corestore.open(p)
        holder = subprocess.Popen([sys.executable, "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('begin immediate');"
            "print('held', flush=True); time.sleep(float(sys.argv[2])); c.execute('commit')", db, "0.25"],
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        with s.transaction():
            s.database.execute_sql("insert into t (who, n) values ('apsw', 1)")
        print("waited", round(time.monotonic() - t, 3))
        holder.wait(10)
        holder = subprocess.Popen([sys.executable, "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('begin immediate');"
            "print('held', flush=True); time.sleep(float(sys.argv[2])); c.execute('commit')", db, "2"],
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        try:
            with s.transaction():
                s.database.execute_sql("insert into t (who, n) values ('apsw', 2)")
        except BusyError:
            print("busy", round(time.monotonic() - t, 3))
        holder.wait(10)
    """
    proc = run_python(code, db, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    waited = float(proc.stdout.split("waited ")[1].split()[0])
    busy = float(proc.stdout.split("busy ")[1].split()[0])
    assert waited < 0.25 + 0.25, f"got in {waited:.3f} s after a 0.25 s hold"
    assert 0.35 <= busy < 0.9, f"BusyError after {busy:.3f} s for a 400 ms busy timeout"


def test_site_snippet_runs(tmp_path: Path) -> None:
    """The plugin page's example (site/snippets/write_gate_held.py) runs and holds the gate."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "site" / "snippets" /
                                               "write_gate_held.py")],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gate held: True checkpoint: (0, 0, 0)" in proc.stdout
    assert "3 writes admitted" in proc.stdout  # CREATE TABLE and the two inserts


def test_fair_busy_handler_sleeps_a_fixed_step_to_its_deadline() -> None:
    """The handler itself (no lock needed): every call sleeps ``sleep_s`` (not SQLite's growing
    1 ... 100 ms), it gives up at ``timeout_s`` after the first BUSY, and an operation's deadline
    (``deadline_of``) ends it sooner."""
    from corestore_plugins.write_gate import fair_busy_handler

    handler = fair_busy_handler(0.2, 0.005)
    started = time.monotonic()
    calls = 0
    while handler(calls):
        calls += 1
        assert calls < 1000
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.6 and calls >= 8, (elapsed, calls)  # ~40 sleeps of 5 ms (fewer on a loaded machine)
    soon = time.monotonic() + 0.05
    handler = fair_busy_handler(5.0, 0.005, lambda: soon)
    started = time.monotonic()
    calls = 0
    while handler(calls):
        calls += 1
    assert time.monotonic() - started < 0.5 and calls >= 3


def test_a_lone_writer_resumes_its_place_and_counts_survive_ended_threads(tmp_path: Path) -> None:
    """The fast path (issue 19, second round): a lone writer's writes after the first resume its
    kept place (no wait, no new ticket), and the ``resumed`` counts, kept per thread without a
    lock, are all in ``stats()``, including those of threads that have ended since."""
    db = _make_db(tmp_path / "fast.db")
    store = corestore.open(_profile(db))
    wg = store.plugin("write_gate")
    gate = wg.gate
    assert gate is not None

    def write(n: int) -> None:
        for i in range(n):
            store.run(lambda i=i: store.database.execute_sql("INSERT INTO t (who, n) VALUES (?, ?)",
                                                           (threading.current_thread().name, i)))

    write(1)  # the first gated write takes a ticket (or resumes a place kept since the open)
    first_ticket = gate.snapshot()["next_ticket"]
    before = wg.stats()
    write(20)
    assert gate.snapshot()["next_ticket"] == first_ticket  # every one resumed the kept place: no new ticket
    stats = wg.stats()
    assert stats["resumed"] - before["resumed"] == 20 and stats["gated"] - before["gated"] == 20, stats
    assert stats["waited"] == 0 and stats["timeouts"] == 0, stats

    threads = [threading.Thread(target=write, args=(6,), name=f"w{k}") for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT_S)
        assert not t.is_alive(), "a writer thread did not finish"
    write(1)  # a new thread state after the others ended folds their counts in; nothing is lost
    late = threading.Thread(target=write, args=(2,), name="late")
    late.start()
    late.join(LIMIT_S)
    stats = wg.stats()
    # 20 + 3 threads × 5 gated writes (each thread's first opens its connection, ungated) + 1 + 1
    assert stats["gated"] - before["gated"] == 20 + 3 * 5 + 1 + 1, stats
    assert stats["ungated_first"] - before["ungated_first"] == 3 + 1, stats
    assert stats["resumed"] >= before["resumed"] + 20  # the ended threads' resumes are added, never lost
    count = store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]
    assert count == 1 + 20 + 3 * 6 + 1 + 2
    store.close()


# -- issue 19, third round: the byte held for the whole turn, descriptors closed with the last store ----
def _gate_fds(db: str) -> list[str]:
    """This process's open descriptors on ``db``'s gate sidecar (from /proc)."""
    target = os.path.realpath(db + ticket_gate.GATE_SUFFIX)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                found.append(fd)
        except OSError:
            pass
    return found


def test_the_last_store_to_close_closes_the_gate_descriptors(tmp_path: Path) -> None:
    """The sidecar's descriptors (the pool, every thread's kept place) stay open while a store
    uses the gate and are closed with the last one; a store opened afterwards gets a new gate.
    A place kept by another (still running) thread is ended at the close too."""
    db = _make_db(tmp_path / "fds.db")
    first = corestore.open(_profile(db))
    second = corestore.open(attrs.evolve(_profile(db), settings={"write_gate": {"turn_s": 0.01}}))  # another store, same file
    gate = first.plugin("write_gate").gate
    assert gate is not None and second.plugin("write_gate").gate is gate
    for store in (first, second):
        store.run(lambda s=store: s.database.execute_sql("INSERT INTO t (who, n) VALUES ('x', 1)"))
    parked = threading.Event()
    done = threading.Event()

    def keeper() -> None:  # writes, keeps its place, and stays alive without writing again
        for _ in range(2):
            first.run(lambda: first.database.execute_sql("INSERT INTO t (who, n) VALUES ('thread', 1)"))
        parked.set()
        done.wait(LIMIT_S)

    t = threading.Thread(target=keeper)
    t.start()
    assert parked.wait(LIMIT_S)
    assert len(_gate_fds(db)) >= 2  # the main thread's and the keeper's places
    first.close()
    assert _gate_fds(db), "closed while another store still uses the gate"
    second.run(lambda: second.database.execute_sql("INSERT INTO t (who, n) VALUES ('y', 1)"))
    second.close()
    assert _gate_fds(db) == [], "the gate's descriptors outlived the last store using the file"
    assert gate.snapshot()["available"] is True and "next_ticket" not in gate.snapshot()  # unmapped
    done.set()
    t.join(LIMIT_S)
    again = corestore.open(_profile(db))
    assert again.plugin("write_gate").gate is not gate  # a new gate for the file
    again.run(lambda: again.database.execute_sql("INSERT INTO t (who, n) VALUES ('z', 1)"))
    assert again.plugin("write_gate").stats()["gated"] == 1
    again.close()
    assert _gate_fds(db) == []
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 6
    conn.close()


def _keep_then(db: str, ready: Any, go: Any, out: Any, in_txn_s: float) -> None:
    """Take the gate with a turn, keep the place; then (on ``go``) either run one long transaction
    of ``in_txn_s`` seconds through the plugin's fast path, or (0) stay idle for 1 s and write again."""
    store = corestore.open(_profile(db, turn_s=0.05, round_s=0.05, linger_s=0.02))
    ex = store.database.execute_sql
    store.run(lambda: ex("INSERT INTO t (who, n) VALUES ('first', 0)"))  # opens this thread's connection (ungated)
    store.run(lambda: ex("INSERT INTO t (who, n) VALUES ('first', 1)"))  # takes a ticket, keeps the place
    ready.put(store.plugin("write_gate").gate.snapshot()["next_ticket"])
    go.wait(LIMIT_S)
    if in_txn_s:
        with store.transaction():  # resumes the kept place (busy) and outlasts the turn
            ex("INSERT INTO t (who, n) VALUES ('first', 2)")
            time.sleep(in_txn_s)
            out.put(("first-commits", time.monotonic()))
    else:
        time.sleep(1.0)
        store.run(lambda: ex("INSERT INTO t (who, n) VALUES ('first', 3)"))
    stats = store.plugin("write_gate").stats()
    out.put(("first-stats", stats["resumed"], stats["waited"] + stats["immediate"], stats["gate"]["places_lost"]))
    store.close()


def test_a_holder_inside_its_transaction_is_never_taken_over(tmp_path: Path) -> None:
    """A kept place whose owner has resumed it (busy) is not taken over when its turn ends, however
    long the transaction: the waiter gets in only after the COMMIT."""
    db = _make_db(tmp_path / "busy.db")
    ready, out, go = CTX.Queue(), CTX.Queue(), CTX.Event()
    first = _start(_keep_then, db, ready, go, out, 0.4)
    base = _get(ready, "the first writer")
    go.set()
    time.sleep(0.1)  # the first writer is inside its long transaction (its turn of 50 ms is over)
    waiter = _start(_queue_and_record, db, "waiter", out, 10.0)
    _wait_for(lambda: _next_ticket(db) == base + 1, "the waiter to queue")
    results = {r[0]: r[1:] for r in (_get(out, "results") for _ in range(3))}
    _join(first, waiter)
    got, outcome = results["waiter"]
    assert outcome == "waited"
    assert got >= results["first-commits"][0], "the waiter got in while the holder was inside its transaction"
    resumed, _queued, lost = results["first-stats"]
    assert resumed >= 1 and lost == 0, results


def test_an_idle_kept_place_is_taken_over_and_its_owner_queues_afresh(tmp_path: Path) -> None:
    """A writer that keeps its place and stops writing is taken over once its linger has passed
    (without a system call on its side: its byte stays locked); when it writes again it finds
    its place taken, queues afresh and is admitted behind the taker."""
    db = _make_db(tmp_path / "idle.db")
    ready, out, go = CTX.Queue(), CTX.Queue(), CTX.Event()
    first = _start(_keep_then, db, ready, go, out, 0.0)
    base = _get(ready, "the first writer")
    go.set()
    started = time.monotonic()
    waiter = _start(_queue_and_record, db, "waiter", out, 10.0)
    _wait_for(lambda: _next_ticket(db) == base + 1, "the waiter to queue")
    results = {r[0]: r[1:] for r in (_get(out, "results") for _ in range(2))}
    _join(first, waiter)
    got, outcome = results["waiter"]
    assert outcome == "waited" and got - started < 0.5, results  # well before the owner's next write (1 s)
    resumed, queued, lost = results["first-stats"]
    assert lost == 1 and queued >= 2, results  # its place was taken: it queued again for its last write
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM t WHERE who = 'first'").fetchone()[0] == 3
    conn.close()


def test_a_resumed_write_makes_no_gate_system_call(tmp_path: Path) -> None:
    """Within a turn a lone writer's writes resume its kept place from memory: no fcntl call per
    write (only when a turn is renewed), so the gate's kernel cost is per turn, not per write."""
    db = _make_db(tmp_path / "sys.db")
    store = corestore.open(_profile(db, turn_s=60.0, round_s=60.0))
    ex = store.database.execute_sql
    for i in range(3):
        store.run(lambda i=i: ex("INSERT INTO t (who, n) VALUES ('warm', ?)", (i,)))
    import fcntl as fcntl_module

    calls: list[Any] = []
    real = fcntl_module.fcntl

    def counting(*args: Any) -> Any:  # a counting wrapper around the real call (no fake: it still locks)
        calls.append(args[1])
        return real(*args)

    fcntl_module.fcntl = counting  # type: ignore[assignment]
    try:
        for i in range(50):
            store.run(lambda i=i: ex("INSERT INTO t (who, n) VALUES ('w', ?)", (i,)))
    finally:
        fcntl_module.fcntl = real  # type: ignore[assignment]
    assert calls == [], calls
    stats = store.plugin("write_gate").stats()
    assert stats["resumed"] >= 50 and stats["waited"] == 0, stats
    store.close()


def test_contention_rows_run_alone_from_the_command_line(tmp_path: Path) -> None:
    """``python -m benchmarks.bench_multiprocess`` runs just the ``contention.*`` rows (the quiet
    window's command), with write_gate settings for the gated side; a tiny shape as a smoke run."""
    out = tmp_path / "rows.json"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_multiprocess", "--pairs", "7", "--shape", "2x5",
                           "--gate", "turn_s=0.001,round_s=0.01", "--json", str(out)],
                          cwd=root, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    rows = json.loads(out.read_text())
    assert {r["name"] for r in rows} >= {"contention.normal.2x5.wall_s", "contention.normal.2x5.max_ms",
                                         "contention.normal.2x5.spread"}
    assert rows[0]["corestore_retries"] == 0 and "gate_admissions_median" in rows[0]
    assert "turn_s" in proc.stdout
    # the checkpoint governor's settings reach the gated side too (the default profile carries it)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_multiprocess", "--pairs", "7", "--shape", "2x5",
                           "--governor", "defer_max_s=0", "--json", str(out)],
                          cwd=root, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "governor settings {'defer_max_s': 0}" in proc.stdout
    rows = json.loads(out.read_text())
    assert rows[0]["corestore_retries"] == 0


def test_trace_contention_runs_from_the_command_line(tmp_path: Path) -> None:
    """``python -m benchmarks.trace_contention`` (the fourth round's traces): a tiny shape, two
    alternated variants, every transaction traced; a smoke run (it prints, it asserts no time)."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.trace_contention", "--shape", "3x10", "--samples", "1",
                           "--variant", "a=turn_s=0.001", "--variant", "b=turn_s=0.005,governor.defer_max_s=0"],
                          cwd=root, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("[a] wall ") for line in lines) == 1
    assert sum(line.startswith("[b] wall ") for line in lines) == 1
    assert any(line.startswith("median [b] over 1:") for line in lines)
