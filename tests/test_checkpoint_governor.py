"""checkpoint_governor (issue 20): WAL target, starving readers, no-checkpoint mode, and the
WAL-reset mitigation under the write gate."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import HealthStatus, registry
from corestore.sqlitebugs import affecting
from corestore_contrib.failpoint import integrity_check
from corestore_contrib.waiting import wait_until
from corestore_plugins._wal_readers import wal_readers

from helpers import child_env

MiB = 1024 * 1024
STDLIB_AFFECTED = bool(affecting("sqlite3"))
HAS_WRITE_GATE = "write_gate" in registry.discover()


def _governed(path: Path, **settings: object) -> corestore.Store:
    base = {"target_wal_bytes": MiB, "interval_s": 0.05, "check_every": 5}
    base.update(settings)
    return corestore.open(str(path), enable=["checkpoint_governor"], settings={"checkpoint_governor": base})


class Reader:
    """Another process holding a read transaction (a WAL snapshot) until told to end it."""

    def __init__(self, path: Path) -> None:
        code = ("import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('begin'); "
                "c.execute('select count(*) from item').fetchall(); print('reading', flush=True); "
                "sys.stdin.readline(); c.execute('commit'); print('ended', flush=True); sys.stdin.readline()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "reading"

    def end_transaction(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ended"  # the connection stays open

    def close(self) -> None:
        try:
            self.proc.communicate("\n", timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _commit_mb(store: corestore.Store, rows: int = 300, size: int = 100_000) -> None:
    for _ in range(rows):
        with store.transaction():
            store.database.execute_sql(f"INSERT INTO item (body) VALUES (randomblob({size}))")


def test_starving_reader_is_reported_and_the_wal_returns_under_target(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = _governed(path)
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    reader = Reader(path)
    try:
        _commit_mb(store)  # ~30 MB while the reader holds its snapshot
        wal = os.stat(str(path) + "-wal").st_size
        assert wal > 20 * MiB
        governor = store.plugin("checkpoint_governor")
        component = wait_until(lambda: (c := store.health().components["checkpoint_governor"]).details[
            "starving_readers"] and c, "the governor to report the starving reader")
        assert component.status is HealthStatus.DEGRADED
        readers = component.details["starving_readers"]
        mine = [r for r in readers if r["pid"] == reader.proc.pid]  # (a health probe of ours may show too)
        assert mine and mine[0]["process"]  # /proc/PID/comm of the reader
        assert mine[0]["held_s"] >= 0
        assert "starved by reader" in component.summary and str(reader.proc.pid) in component.summary
        assert governor.stats()["checkpoints"] == 0  # no blocking checkpoint against the reader
        reader.end_transaction()
        started = time.monotonic()
        wait_until(lambda: os.stat(str(path) + "-wal").st_size <= MiB, "the WAL to return under the target",
                   timeout_s=10)
        assert time.monotonic() - started < 10
        stats = wait_until(lambda: (st := governor.stats())["completed"] >= 1 and st,
                           "the governor to record its checkpoint")  # recorded just after it returns
        assert stats["starving_readers"] == []
        assert store.health().components["checkpoint_governor"].status is HealthStatus.UP
    finally:
        reader.close()
        store.close()


def test_readers_come_from_proc_locks_without_opening_shm(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = _governed(path)
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    store.database.execute_sql("INSERT INTO item (body) VALUES (x'00')")
    assert wal_readers(str(path)) == []
    reader = Reader(path)
    try:
        store.database.execute_sql("INSERT INTO item (body) VALUES (x'01')")
        found = wal_readers(str(path))
        assert [r["pid"] for r in found] == [reader.proc.pid] and 0 <= found[0]["slot"] <= 4
        # no descriptor of this process points at -shm (the safety rule): the readers came from /proc/locks
        fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}")]
        assert fds.count(str(path) + "-shm") <= 1  # SQLite's own descriptor only
    finally:
        reader.close()
        store.close()
    # the parser: a reader on byte 125 (slot 2) of the file identified by device and inode;
    # a waiter ("->") and a write lock are not readers
    assert wal_readers(str(tmp_path / "missing.db")) == []
    shm = tmp_path / "x.db-shm"
    shm.write_bytes(b"")
    st = os.stat(shm)
    line = f"1: POSIX  ADVISORY  READ 4242 {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} 125 125\n"
    assert wal_readers(str(tmp_path / "x.db"), locks_text=line.replace("1: ", "1: -> ")) == []
    assert wal_readers(str(tmp_path / "x.db"), locks_text=line) == [{"pid": 4242, "slot": 2}]
    assert wal_readers(str(tmp_path / "x.db"), locks_text=line.replace("READ", "WRITE")) == []


_HASH_CHILD = textwrap.dedent("""
    import hashlib, sys
    path = sys.argv[1]
    def digest():
        with open(path, "rb") as fh:   # a separate process: it may open the file freely
            return hashlib.sha256(fh.read()).hexdigest()
    print(digest(), flush=True)
    sys.stdin.readline()
    print(digest(), flush=True)
""")


@pytest.mark.parametrize("driver", ["sqlite3", "apsw"])
def test_no_checkpoint_mode_leaves_the_main_file_unchanged(tmp_path: Path, driver: str) -> None:
    if driver == "apsw":
        pytest.importorskip("apsw")
    path = tmp_path / "app.db"
    profile = corestore.Profile(path=str(path), driver=driver, plugins=("wal_guard", "checkpoint_governor"),
                                pragmas={"busy_timeout": 5000, "synchronous": "full"},
                                settings={"checkpoint_governor": {"mode": "none", "target_wal_bytes": 4096}})
    store = corestore.open(profile)
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    child = subprocess.Popen([sys.executable, "-c", _HASH_CHILD, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        before = child.stdout.readline().strip()
        _commit_mb(store, rows=120, size=50_000)  # 6 MB: far past 1000 pages (SQLite's automatic checkpoint)
        assert store.plugin("checkpoint_governor").tick() == "none-mode"
        child.stdin.write("\n")
        child.stdin.flush()
        after = child.stdout.readline().strip()
    finally:
        child.communicate(timeout=10)
    assert before == after  # no checkpoint by corestore while the store is open
    assert os.stat(str(path) + "-wal").st_size > 5 * MiB
    assert store.stats()["transactions"] == 120
    health = store.health().components["checkpoint_governor"]
    assert "mode 'none'" in health.summary and health.details["checkpoints"] == 0
    store.close()


def test_wal_autocheckpoint_off_in_a_profile_brings_the_governor(tmp_path: Path) -> None:
    config = tmp_path / "corestore.toml"
    config.write_text('[profiles.manual]\nextends = "default"\n[profiles.manual.pragmas]\nwal_autocheckpoint = 0\n')
    store = corestore.open(str(tmp_path / "app.db"), profile="manual", config=str(config))
    try:
        assert "checkpoint_governor" in store.plugins
        assert store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    finally:
        store.close()
    # disabling the governor while automatic checkpoints stay off does not leave the WAL unbounded
    kept = corestore.open(str(tmp_path / "kept.db"), profile="manual", config=str(config),
                          disable=["checkpoint_governor"])
    try:
        assert "checkpoint_governor" in kept.plugins
    finally:
        kept.close()
    config.write_text('[profiles.auto]\nextends = "default"\ndisable = ["checkpoint_governor", "write_gate"]\n'
                      '[profiles.auto.pragmas]\nwal_autocheckpoint = 1000\n')
    plain = corestore.open(str(tmp_path / "plain.db"), profile="auto", config=str(config))
    try:
        assert "checkpoint_governor" not in plain.plugins
        assert plain.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        plain.close()


def test_governor_turns_automatic_checkpoints_off_and_bounds_the_wal_file(tmp_path: Path) -> None:
    store = _governed(tmp_path / "app.db", target_wal_bytes=2 * MiB)
    try:
        assert store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert store.database.execute_sql("PRAGMA journal_size_limit").fetchone()[0] == 2 * MiB
        stats = store.stats()  # the core's counters are untouched; the governor has its own
        assert "transactions" in stats
        g = store.plugin("checkpoint_governor").stats()
        assert {"wal_bytes", "wal_frames", "last_checkpoint", "checkpoints", "breaches"} <= set(g)
    finally:
        store.close()


# -- the version gate and the WAL-reset mitigation -------------------------------------------------
@pytest.mark.skipif(not STDLIB_AFFECTED, reason="the stdlib sqlite3 here links a fixed SQLite")
def test_stdlib_sqlite_produces_the_finding(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "app.db"))  # the built-in default applies the mitigation
    try:
        assert "checkpoint_governor" in set(store.plugins)  # issue 18: no write_gate needed any more
        assert "write_gate" not in set(store.plugins)
        assert store.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        report = store.health()
        component = report.components["sqlite_version"]
        assert [f["id"] for f in component.details["findings"]] == ["wal-reset"]
        assert component.details["sqlite_version"] == sqlite3.sqlite_version
        assert "apsw" in component.details["findings"][0]["advice"]
        assert component.details["findings"][0]["mitigated"] is True
        assert component.status is HealthStatus.UP and report.status is HealthStatus.UP  # advisory
    finally:
        store.close()
    governed = corestore.open(str(tmp_path / "gov.db"), disable=["write_gate"])  # the governor without the gate
    try:  # issue 18: the governor holds SQLite's writer lock itself; the gate is not needed
        component = governed.health().components["sqlite_version"]
        assert component.status is HealthStatus.UP
        assert "writer lock" in component.details["findings"][0]["mitigation"]
        assert governed.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    finally:
        governed.close()
    # a read-only store (the offline `corestore health`) runs no checkpoint: nothing to mitigate
    reader = corestore.open(corestore.Profile(path=str(tmp_path / "gov.db"), read_only=True,
                                              plugins=("wal_guard", "checkpoint_governor")))
    try:
        component = reader.health().components["sqlite_version"]
        assert component.status is HealthStatus.UP
        assert "read-only store" in component.details["findings"][0]["mitigation"]
    finally:
        reader.close()
    disabled = _governed(tmp_path / "off.db", wal_reset_mitigation=False)
    try:
        component = disabled.health().components["sqlite_version"]
        assert component.status is HealthStatus.DEGRADED and "mitigation disabled" in component.summary
    finally:
        disabled.close()


@pytest.mark.skipif(not STDLIB_AFFECTED, reason="the stdlib sqlite3 here links a fixed SQLite")
def test_mmap_size_is_refused_on_an_affected_sqlite(tmp_path: Path) -> None:
    profile = corestore.Profile(path=str(tmp_path / "app.db"), plugins=("wal_guard", "checkpoint_governor"),
                                pragmas={"mmap_size": 1 << 27})
    with pytest.raises(corestore.ConfigError, match="mmap_size"):
        corestore.open(profile)


def test_apsw_sqlite_produces_no_finding(tmp_path: Path) -> None:
    apsw = pytest.importorskip("apsw")
    assert affecting(apsw.sqlite_lib_version()) == []
    profile = corestore.Profile(path=str(tmp_path / "app.db"), driver="apsw",
                                plugins=("wal_guard", "checkpoint_governor", "health"),
                                pragmas={"busy_timeout": 5000})
    store = corestore.open(profile)
    try:
        component = store.health().components["sqlite_version"]
        assert component.status is HealthStatus.UP and component.details["findings"] == []
        assert store.plugin("checkpoint_governor").affected is False
    finally:
        store.close()


_WRITER = textwrap.dedent("""
    import json, sys, time
    import corestore
    path, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = corestore.open(path, enable=["write_gate", "checkpoint_governor"],
                           settings={"checkpoint_governor": {"target_wal_bytes": 1 << 30, "interval_s": 0}})
    with store.transaction():   # a thread's first operation is not gated (it may open the connection)
        store.database.execute_sql("INSERT INTO item (body) VALUES (randomblob(100))")
    commits = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with store.transaction():
            t0 = time.monotonic_ns()           # inside SQLite's write lock (after BEGIN IMMEDIATE)
            store.database.execute_sql("INSERT INTO item (body) VALUES (randomblob(20000))")
            t1 = time.monotonic_ns()           # still inside it (before COMMIT)
        commits.append((t0, t1))
    store.close()
    with open(log, "w") as fh:
        json.dump(commits, fh)
""")


def _commit_beside_another_process(store: Any, path: Path, tmp_path: Path,
                                   script: str) -> tuple[list[dict[str, Any]], dict[str, Any], list[list[int]]]:
    """Commit 20 KB rows for 3 s while a child process running ``script`` does the same and logs
    when each of its commits held SQLite's write lock; the governor's finished checkpoints, its
    stats and the child's commit intervals (the child is waited for at most 60 s, else killed)."""
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    log = tmp_path / "commits.json"
    writer = subprocess.Popen([sys.executable, "-c", script, str(path), str(log), "3"], env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            with store.transaction():
                store.database.execute_sql("INSERT INTO item (body) VALUES (randomblob(20000))")
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    governor = store.plugin("checkpoint_governor")
    checkpoints = [h for h in governor.history() if h["result"] is not None]
    return checkpoints, governor.stats(), json.loads(log.read_text())


@pytest.mark.skipif(not HAS_WRITE_GATE, reason="needs the write_gate plugin (contention issue)")
def test_mitigation_checkpoints_never_run_while_another_process_commits(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = corestore.open(str(path), enable=["write_gate", "checkpoint_governor"],
                           settings={"checkpoint_governor": {"target_wal_bytes": 64 * 1024, "interval_s": 0.01,
                                                             "check_every": 1}})
    checkpoints, stats, commits = _commit_beside_another_process(store, path, tmp_path, _WRITER)
    store.close()
    assert len(commits) > 50 and len(checkpoints) >= 3, (len(commits), stats)
    assert all(h["gate_held"] for h in checkpoints)
    assert stats["breaches"] == 0 and all(h["result"][0] == 0 for h in checkpoints)
    overlaps = [(c, h) for h in checkpoints for c in commits if c[0] < h["end_ns"] and h["start_ns"] < c[1]]
    assert overlaps == []
    assert integrity_check(path) == "ok"


_WRITER_NO_GATE = _WRITER.replace('enable=["write_gate", "checkpoint_governor"]', 'enable=["checkpoint_governor"]')


@pytest.mark.skipif(not STDLIB_AFFECTED, reason="the stdlib sqlite3 here links a fixed SQLite")
def test_mitigation_without_write_gate_holds_the_writer_lock_for_every_checkpoint(tmp_path: Path) -> None:
    """Issue 18: the default profile's mitigation (no write_gate): every checkpoint runs while the
    governor holds SQLite's writer lock, so no commit of another process overlaps one, the WAL is
    restarted and bounded, and the file stays intact."""
    path = tmp_path / "app.db"
    store = corestore.open(str(path), settings={"checkpoint_governor": {"target_wal_bytes": 64 * 1024,
                                                                        "interval_s": 0.01, "check_every": 1}})
    assert "write_gate" not in store.plugins and "checkpoint_governor" in store.plugins
    checkpoints, stats, commits = _commit_beside_another_process(store, path, tmp_path, _WRITER_NO_GATE)
    try:
        assert len(commits) > 50 and len(checkpoints) >= 3, (len(commits), stats)
        assert all(h["writer_lock_held"] and h["mode"] == "PASSIVE" for h in checkpoints)
        assert stats["breaches"] == 0 and all(h["result"][0] == 0 for h in checkpoints)
        overlaps = [(c, h) for h in checkpoints for c in commits if c[0] < h["end_ns"] and h["start_ns"] < c[1]]
        assert overlaps == []
        assert store.health().components["sqlite_version"].status is HealthStatus.UP
        # the writes stopped: the governor restarts the WAL itself and it returns to journal_size_limit
        wait_until(lambda: os.stat(str(path) + "-wal").st_size <= 64 * 1024, "the WAL to return under the target")
    finally:
        store.close()
    assert integrity_check(path) == "ok"


# -- the lazily started thread (issue 18: no thread start in a fresh open) --------------------------
def _governor_threads(path: Path) -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == f"corestore-governor:{path.name}"]


def test_no_governor_thread_at_open_the_pacer_checks_meanwhile(tmp_path: Path) -> None:
    from corestore_plugins import _governor_pacer

    path = tmp_path / "lazy.db"
    store = _governed(path, check_every=1000)
    try:
        gov = store.plugin("checkpoint_governor")
        assert _governor_threads(path) == [] and not gov.thread_started
        assert _governor_pacer.watching(gov)
        wait_until(lambda: gov.stats()["checks"] >= 2, "two paced size checks (interval_s = 0.05)")
        assert _governor_threads(path) == []  # under target: still no thread of its own
    finally:
        store.close()
    assert not _governor_pacer.watching(gov) and _governor_threads(path) == []


def test_a_wal_over_target_starts_the_thread_and_gets_its_round_without_an_operation(tmp_path: Path) -> None:
    """Another connection (outside corestore, automatic checkpoints off) grows the WAL while the
    store runs no operation: within interval_s the pacer finds it over target, the governor's
    thread starts and its round checkpoints it (the promise of the thread that used to start at open)."""
    from corestore_plugins import _governor_pacer

    path = tmp_path / "grown.db"
    store = _governed(path, check_every=1000)
    try:
        gov = store.plugin("checkpoint_governor")
        other = sqlite3.connect(str(path), isolation_level=None)
        try:
            other.execute("PRAGMA wal_autocheckpoint = 0")
            other.execute("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, body BLOB)")
            for _ in range(30):
                other.execute("INSERT INTO item (body) VALUES (randomblob(100000))")
            assert os.path.getsize(str(path) + "-wal") > MiB
            # kept open (idle, no transaction) until the round: its close could checkpoint the file itself
            wait_until(lambda: gov.stats()["checkpoints"] >= 1, "the governor's first checkpoint round", timeout_s=20)
        finally:
            other.close()
        assert gov.thread_started and _governor_threads(path) == [f"corestore-governor:{path.name}"]
        assert not _governor_pacer.watching(gov)
    finally:
        store.close()
    assert _governor_threads(path) == []


def test_the_check_every_th_operation_starts_the_thread_once_the_wal_is_over_target(tmp_path: Path) -> None:
    """Issue 19: the commit path's check (a stat every check_every operations) starts the thread,
    and later wakes it, only when a round has work: under the target no thread starts at all (a
    wake-up there is paid by every writer queued at the write gate)."""
    from corestore_plugins import _governor_pacer

    path = tmp_path / "ops.db"
    store = _governed(path, check_every=3, interval_s=0)  # interval 0: nothing paced, the counter only
    try:
        gov = store.plugin("checkpoint_governor")
        assert not _governor_pacer.watching(gov)
        store.database.execute_sql("CREATE TABLE t (x)")
        for i in range(12):  # four commit-path checks, all under the target
            store.database.execute_sql("INSERT INTO t VALUES (?)", (i,))
        assert not gov.thread_started and _governor_threads(path) == []
        for _ in range(3):  # 1.5 MB: over the 1 MiB target; the third operation's check sees it
            store.database.execute_sql("INSERT INTO t VALUES (randomblob(500000))")
        wait_until(lambda: gov.stats()["checkpoints"] >= 1, "the new thread's first round to checkpoint")
        for i in range(10):
            store.database.execute_sql("INSERT INTO t VALUES (?)", (i,))
        assert _governor_threads(path) == [f"corestore-governor:{path.name}"]
    finally:
        store.close()
    assert _governor_threads(path) == []
