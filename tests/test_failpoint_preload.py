"""The preload failpoint: libc faults under the stdlib ``sqlite3`` driver, in a child process.

The child runs a real Store (stdlib driver, ``minimal`` profile, WAL + synchronous=FULL) with the
shim preloaded; SQLite's unix VFS maps the errno to its own result code. The parent checks the
file afterwards: ``PRAGMA integrity_check`` is ok and every row whose commit returned is there.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

import corestore
from corestore.profiles import resolve_profile
from corestore_contrib.failpoint import (
    ChildFailedError,
    CompilerNotFoundError,
    PreloadFailpoint,
    ShimBuildError,
    build_shim,
    integrity_check,
    preload_counters,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload failpoint needs Linux")
WAL_FULL = {"journal_mode": "wal", "synchronous": "full"}


# -- child-side helpers (module level: the child imports this module to call them) -------------


def open_store(path: str, **pragmas: Any) -> corestore.Store:
    """The child's store: stdlib driver, the built-in minimal profile, WAL + synchronous=FULL."""
    base = resolve_profile("minimal", config=None, path=path)
    return corestore.open(attrs.evolve(base, pragmas={**base.pragmas, **WAL_FULL, **pragmas}))


def sqlite_code(err: BaseException) -> int | None:
    """The extended code SQLite itself returned: the sqlite3 error behind the store's exception."""
    queue, seen = [err], set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sqlite3.Error) and getattr(current, "sqlite_errorcode", None) is not None:
            return current.sqlite_errorcode
        queue += [e for e in (getattr(current, "orig", None), current.__cause__, current.__context__) if e is not None]
    return None


def verdict(err: corestore.StoreError) -> dict[str, Any]:
    c = err.classification
    return {
        "type": type(err).__name__,
        "kind": c.kind.name if c else None,
        "extended_code": c.extended_code if c else None,
        "committed": err.committed,
        "driver_code": sqlite_code(err),
    }


def insert(store: corestore.Store, ids: list[int]) -> list[int]:
    done = []
    for i in ids:
        with store.transaction():
            store.database.execute_sql("INSERT INTO t (id, v) VALUES (?, ?)", (i, f"row {i}"))
        done.append(i)
    return done


def child_commit_under_fault(path: str, op: str, errno: str) -> dict[str, Any]:
    """Commit rows, then one more with ``op`` on the -wal failing with ``errno``, then heal."""
    store = open_store(path)
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    committed = insert(store, [1, 2])
    control = PreloadFailpoint.from_env(database=path)
    control.arm(op=op, file="wal", errno=errno)
    try:
        insert(store, [3])
        outcome: dict[str, Any] = {"raised": False}
    except corestore.StoreError as err:
        outcome = {"raised": True, **verdict(err)}
    control.heal()
    committed += insert(store, [4])
    store.close()
    return {"outcome": outcome, "committed": committed, "counters": preload_counters()}


def child_read_main_after_reopen(path: str) -> dict[str, Any]:
    """pread EIO on the main file while a fresh connection loads the schema."""
    store = open_store(path)
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    committed = insert(store, list(range(1, 11)))
    store.checkpoint("TRUNCATE")
    store.invalidate()  # the next statement opens a new connection, which reads the main file
    control = PreloadFailpoint.from_env(database=path)
    control.arm(op="read", file="main", errno="EIO")
    try:
        store.database.execute_sql("SELECT count(*) FROM t").fetchall()
        outcome: dict[str, Any] = {"raised": False}
    except corestore.StoreError as err:
        outcome = {"raised": True, **verdict(err)}
    control.heal()
    count = store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]
    store.close()
    return {"outcome": outcome, "committed": committed, "count": count}


def child_read_main_mid_statement(path: str) -> dict[str, Any]:
    """One pread EIO on a table page while a statement runs on a connection that has the schema."""
    store = open_store(path)
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    with store.transaction():
        for i in range(1, 301):
            store.database.execute_sql("INSERT INTO t (id, v) VALUES (?, ?)", (i, "x" * 100))
    store.checkpoint("TRUNCATE")
    store.invalidate()
    store.database.execute_sql("SELECT count(*) FROM sqlite_master").fetchall()  # schema + page 1 cached
    control = PreloadFailpoint.from_env(database=path)
    control.arm(op="read", file="main", errno="EIO", count=1)
    try:
        store.database.execute_sql("SELECT sum(length(v)) FROM t").fetchall()
        outcome: dict[str, Any] = {"raised": False}
    except corestore.StoreError as err:
        outcome = {"raised": True, **verdict(err)}
    control.heal()
    total = store.database.execute_sql("SELECT sum(length(v)) FROM t").fetchone()[0]
    store.close()
    return {"outcome": outcome, "total": total, "committed": list(range(1, 301))}


def child_checkpoint_under_main_write_fault(path: str) -> dict[str, Any]:
    store = open_store(path, wal_autocheckpoint=0)
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    committed = insert(store, list(range(1, 21)))
    control = PreloadFailpoint.from_env(database=path)
    control.arm(op="write", file="main", errno="EIO")
    try:
        store.checkpoint("TRUNCATE")
        outcome: dict[str, Any] = {"raised": False}
    except corestore.StoreError as err:
        outcome = {"raised": True, **verdict(err)}
    committed += insert(store, [21])  # commits only need the -wal
    control.heal()
    after = store.checkpoint("TRUNCATE")
    store.close()
    return {"outcome": outcome, "committed": committed, "after": list(after), "counters": preload_counters()}


def child_errno_table(directory: str) -> dict[str, Any]:
    """Raw stdlib sqlite3: which SQLite code each intercepted call's errno becomes."""
    control = PreloadFailpoint.from_env()
    out: dict[str, Any] = {}

    def fresh(name: str) -> tuple[str, sqlite3.Connection]:
        path = os.path.join(directory, name)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA synchronous=full")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        return path, conn

    def probe(label: str, conn: sqlite3.Connection, sql: str, **rule: Any) -> None:
        control.arm(**rule)
        try:
            conn.execute(sql).fetchall()
            out[label] = None
        except sqlite3.Error as err:
            out[label] = [err.sqlite_errorcode, err.sqlite_errorname]
        control.heal()

    path, conn = fresh("a.db")
    other_path, other = fresh("b.db")
    probe("pwrite EIO", conn, "INSERT INTO t VALUES (2)", op="write", file=path + "-wal", errno="EIO")
    probe("pwrite ENOSPC", conn, "INSERT INTO t VALUES (2)", op="write", file=path + "-wal", errno="ENOSPC")
    probe("fdatasync EIO", conn, "INSERT INTO t VALUES (2)", op="fdatasync", file=path + "-wal", errno="EIO")
    probe("ftruncate EIO", conn, "PRAGMA wal_checkpoint(TRUNCATE)", op="truncate", file=path + "-wal", errno="EIO")
    # a rule on a.db's -wal leaves b.db alone
    probe("other database", other, "INSERT INTO t VALUES (2)", op="write", file=path + "-wal", errno="EIO")
    conn.close()
    other.close()

    path, conn = fresh("c.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()  # the last connection closes: SQLite checkpoints and deletes the -wal
    assert not os.path.exists(path + "-wal")
    conn = sqlite3.connect(path, isolation_level=None)
    probe("open EIO", conn, "SELECT * FROM t", op="open", file=path + "-wal", errno="EIO")
    # EACCES creating a journal reads as a read-only directory
    probe("open EACCES", conn, "SELECT * FROM t", op="open", file=path + "-wal", errno="EACCES")
    conn.close()

    # the -shm file: a new connection after the last close recreates and sizes it
    for label, op in (("shm pwrite EIO", "write"), ("shm ftruncate EIO", "truncate")):
        conn = sqlite3.connect(path, isolation_level=None)
        probe(label, conn, "INSERT INTO t VALUES (3)", op=op, file=path + "-shm", errno="EIO")
        conn.close()
    return out


def child_write_until_healed(path: str, progress: str) -> dict[str, Any]:
    """Signal ready, wait for the parent to arm, retry a write until the parent heals."""
    store = open_store(path)
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    control = PreloadFailpoint.from_env(database=path)

    def report(**state: Any) -> None:
        with open(progress + ".tmp", "w") as fh:
            json.dump(state, fh)
        os.replace(progress + ".tmp", progress)

    report(ready=True, failures=0)
    deadline = time.monotonic() + 30
    while not control.rules and time.monotonic() < deadline:
        time.sleep(0.005)
    failures = 0
    while time.monotonic() < deadline:
        try:
            insert(store, [1])
            break
        except corestore.FatalError:
            failures += 1
            report(ready=True, failures=failures)
            time.sleep(0.01)
    store.close()
    return {"failures": failures, "committed": [1]}


def child_raises() -> None:
    sqlite3.connect(":memory:").execute("SELECT * FROM no_such_table")


def child_returns_a_set() -> Any:
    return {1, 2}


# -- parent-side checks ---------------------------------------------------------------------------


def assert_intact(path: Path, committed: list[int]) -> None:
    assert integrity_check(path) == "ok"
    conn = sqlite3.connect(path)
    try:
        present = {row[0] for row in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()
    assert set(committed) <= present


def test_fsync_eio_at_commit_is_an_uncertain_fatal_io(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    result = preload_failpoint.run(child_commit_under_fault, args=[str(path), "sync", "EIO"]).check()
    outcome = result.result["outcome"]
    assert outcome["raised"] and outcome["type"] == "FatalError"
    assert outcome["kind"] == "FATAL_IO"
    assert outcome["extended_code"] == outcome["driver_code"] == 1034  # SQLITE_IOERR_FSYNC
    assert outcome["committed"] is None  # frames reached the -wal; only the fsync failed
    assert result.counters["failed"]["sync"] >= 1
    assert_intact(path, result.result["committed"])


def test_enospc_on_wal_write_is_full(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    result = preload_failpoint.run(child_commit_under_fault, args=[str(path), "write", "ENOSPC"]).check()
    outcome = result.result["outcome"]
    assert outcome["raised"] and outcome["type"] == "FatalError"
    assert (outcome["kind"], outcome["extended_code"], outcome["driver_code"]) == ("FULL", 13, 13)
    assert outcome["committed"] is not True
    assert result.counters["failed"]["write"] >= 1
    assert_intact(path, result.result["committed"])


def test_pread_eio_on_main_file_is_corruptfs(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    result = preload_failpoint.run(child_read_main_after_reopen, args=[str(path)]).check()
    outcome = result.result["outcome"]
    assert outcome["raised"] and outcome["type"] == "FatalError"
    assert (outcome["kind"], outcome["extended_code"], outcome["driver_code"]) == ("FATAL_IO", 8458, 8458)
    assert result.result["count"] == 10  # healed: the same store reads again
    assert_intact(path, result.result["committed"])


def test_pread_eio_during_a_statement_is_reported_as_corrupt(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    """Recorded SQLite behaviour: the same EIO, hit while a statement reads a table page, is
    reported as SQLITE_CORRUPT (11), not CORRUPTFS, although the file is intact: SQLite turns
    IOERR_CORRUPTFS into CORRUPT inside a running statement."""
    path = tmp_path / "store.db"
    result = preload_failpoint.run(child_read_main_mid_statement, args=[str(path)]).check()
    outcome = result.result["outcome"]
    assert outcome["raised"]
    assert outcome["driver_code"] == 11  # SQLITE_CORRUPT, "database disk image is malformed"
    assert result.result["total"] == 300 * 100  # one failed read; nothing was damaged
    assert_intact(path, result.result["committed"])


def test_main_file_write_eio_surfaces_at_checkpoint(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    result = preload_failpoint.run(child_checkpoint_under_main_write_fault, args=[str(path)]).check()
    outcome = result.result["outcome"]
    assert outcome["raised"] and outcome["type"] == "FatalError"
    assert (outcome["kind"], outcome["extended_code"]) == ("FATAL_IO", 778)  # SQLITE_IOERR_WRITE
    assert result.result["after"] == [0, 0, 0]
    assert_intact(path, result.result["committed"])


def test_errno_to_sqlite_code_table(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    result = preload_failpoint.run(child_errno_table, args=[str(tmp_path)]).check()
    assert result.result == {
        "pwrite EIO": [778, "SQLITE_IOERR_WRITE"],
        "pwrite ENOSPC": [13, "SQLITE_FULL"],
        "fdatasync EIO": [1034, "SQLITE_IOERR_FSYNC"],
        "ftruncate EIO": [1546, "SQLITE_IOERR_TRUNCATE"],
        "other database": None,
        "open EIO": [14, "SQLITE_CANTOPEN"],
        "open EACCES": [1544, "SQLITE_READONLY_DIRECTORY"],
        "shm pwrite EIO": [4874, "SQLITE_IOERR_SHMSIZE"],
        "shm ftruncate EIO": [4618, "SQLITE_IOERR_SHMOPEN"],
    }
    for name in ("a.db", "b.db", "c.db"):
        assert integrity_check(tmp_path / name) == "ok"


def test_parent_arms_and_heals_a_running_child(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path, progress = tmp_path / "store.db", tmp_path / "progress.json"
    child = preload_failpoint.start(child_write_until_healed, args=[str(path), str(progress)])

    def state() -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                return json.loads(progress.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.005)
        raise AssertionError(f"the child never reported: {child.wait(1)}")

    assert state()["ready"]
    preload_failpoint.arm(op="write", file="wal", errno="EIO")
    deadline = time.monotonic() + 30
    while state()["failures"] < 3:
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.005)
    preload_failpoint.heal()
    result = child.wait(30).check()
    assert result.result["failures"] >= 3
    assert result.counters["failed"]["write"] >= 3
    assert_intact(path, result.result["committed"])


def test_child_errors_and_results_come_back(preload_failpoint: PreloadFailpoint) -> None:
    result = preload_failpoint.run(child_raises)
    assert result.returncode == 1 and not result.ok
    assert result.error.type == "sqlite3.OperationalError"
    assert result.error.details["sqlite_errorcode"] == 1
    assert "no_such_table" in result.error.traceback
    with pytest.raises(ChildFailedError, match="no such table"):
        result.check()

    bad = preload_failpoint.run(child_returns_a_set)
    assert bad.error is not None and "not JSON-serializable" in bad.error.message

    script = preload_failpoint.run("import os\nresult = [args, os.environ['CORESTORE_FAILPOINT_CONTROL']]", args=[1, "a"])
    assert script.check().result == [[1, "a"], str(preload_failpoint.control)]
    assert script.counters is not None  # the shim was loaded in the child ...
    assert preload_counters() is None  # ... and never in this process

    with pytest.raises(ValueError, match="cannot be imported by a child"):
        preload_failpoint.run(lambda: 1)


def test_rules_round_trip_through_the_control_file(tmp_path: Path) -> None:
    control = PreloadFailpoint(tmp_path / "ctl", database=tmp_path / "db [1].sqlite")
    wal = control.arm(op=["pwrite64", "fsync"], file="wal", errno="ENOSPC", after=2, count=3)
    main = control.arm(op="read", file="main", errno="short")
    assert control.rules == (wal, main)
    assert wal.ops == ("write", "sync") and wal.errno == 28 and wal.errno_name == "ENOSPC"
    assert wal.glob == str(tmp_path / "db [[]1].sqlite-wal")  # the path is escaped, not a glob
    assert PreloadFailpoint(tmp_path / "ctl").rules == (wal, main)  # another handle sees them
    stamps = []
    for _ in range(20):  # rewrites faster than the clock ticks still look new to the shim
        control.heal(wal)
        st = control.control.stat()
        stamps.append(st.st_mtime_ns)
    assert stamps == sorted(set(stamps))
    assert control.rules == (main,)
    control.heal()
    assert control.rules == ()
    with pytest.raises(ValueError, match="op 'size'"):
        control.arm(op="size")
    with pytest.raises(ValueError, match="short"):
        control.arm(op="write", errno="short")
    with pytest.raises(ValueError, match="errno name"):
        control.arm(op="write", errno="EWHAT")
    with pytest.raises(ValueError, match="needs database"):
        PreloadFailpoint(tmp_path / "ctl").arm(op="read", file="main")


@linux_only
def test_shim_is_compiled_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTORE_CACHE", str(tmp_path / "cache"))
    try:
        first = build_shim()
    except CompilerNotFoundError as err:
        pytest.skip(str(err))
    assert first.parent == tmp_path / "cache" and first.name.startswith("failpoint-shim-")
    stamp = first.stat().st_mtime_ns
    assert build_shim() == first and first.stat().st_mtime_ns == stamp


@linux_only
def test_missing_or_broken_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")
    with pytest.raises(CompilerNotFoundError, match=r"\$CC is set to '/nonexistent/bin/cc'"):
        build_shim()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang here
    with pytest.raises(CompilerNotFoundError, match="no C compiler was found.*cc, gcc or clang"):
        build_shim()
    (tmp_path / "failing-cc").write_text("#!/bin/sh\necho 'cc: broken on purpose' >&2\nexit 3\n")
    (tmp_path / "failing-cc").chmod(0o755)
    monkeypatch.setenv("CC", str(tmp_path / "failing-cc"))
    with pytest.raises(ShimBuildError, match="broken on purpose"):
        build_shim()
    assert not list((tmp_path / "cache").glob("*.so"))
