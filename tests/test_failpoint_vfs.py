"""The in-process failpoint VFS (apsw): real faults through SQLite's own I/O path.

Every scenario runs a real Store (or a raw apsw connection) on a real file; the VFS refuses the
chosen operation before the real system call, and SQLite runs its real error path. After each
scenario the file passes ``PRAGMA integrity_check`` and every row whose commit returned is there.
"""
from __future__ import annotations

from pathlib import Path

import attrs
import pytest

apsw = pytest.importorskip("apsw", reason="the failpoint VFS needs apsw (corestore's test extra installs it)")

import corestore  # noqa: E402
from corestore import ErrorKind  # noqa: E402
from corestore_contrib.failpoint import FailpointVFS, integrity_check, resolve_code  # noqa: E402
from corestore_contrib.waiting import wait_until  # noqa: E402

WAL = {"journal_mode": "wal", "synchronous": "full"}


def create_table(store: corestore.Store) -> None:
    store.database.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")


def insert(store: corestore.Store, ids: list[int]) -> list[int]:
    """Insert each id in its own transaction; return the ids whose commit returned."""
    done = []
    for i in ids:
        with store.transaction():
            store.database.execute_sql("INSERT INTO t (id, v) VALUES (?, ?)", (i, f"row {i}"))
        done.append(i)
    return done


def ids_in(store: corestore.Store) -> set[int]:
    return {row[0] for row in store.database.execute_sql("SELECT id FROM t").fetchall()}


def assert_intact(path: str, fp: FailpointVFS, committed: list[int]) -> None:
    """After the store is closed: the file is sound and holds every committed row."""
    assert integrity_check(path, driver="apsw", vfs=fp.name) == "ok"
    conn = apsw.Connection(path, vfs=fp.name)
    try:
        present = {row[0] for row in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()
    assert set(committed) <= present


# -- through a Store ---------------------------------------------------------------------------


@pytest.mark.corestore_profile("minimal", pragmas=WAL, failpoint=True)
def test_hard_ioerr_on_wal_writes_fails_commits_until_healed(tmp_store: corestore.Store, failpoint: FailpointVFS) -> None:
    create_table(tmp_store)
    committed = insert(tmp_store, [1, 2])
    fault = failpoint.arm(op="write", file="wal")  # hard SQLITE_IOERR, until healed

    for attempt in range(3):  # a wedge: every write fails, retrying does not help
        with pytest.raises(corestore.FatalError) as info:
            with tmp_store.transaction():
                tmp_store.database.execute_sql("INSERT INTO t (id, v) VALUES (?, 'lost?')", (100 + attempt,))
        verdict = info.value.classification
        assert (verdict.kind, verdict.code, verdict.extended_code) == (ErrorKind.FATAL_IO, 10, 10)
        assert info.value.committed is None  # the COMMIT statement itself failed: outcome unknown
        assert isinstance(info.value.__cause__, apsw.IOError)
    assert fault.failed == failpoint.counters.failed["write", "wal"] >= 3
    assert fault.active

    failpoint.heal()
    assert not fault.active and fault.healed_by == "heal"
    committed += insert(tmp_store, [3])
    assert set(committed) <= ids_in(tmp_store)
    tmp_store.close()
    assert_intact(tmp_store.path, failpoint, committed)


@pytest.mark.corestore_profile("minimal", pragmas={**WAL, "wal_autocheckpoint": 0}, failpoint=True)
def test_main_file_write_faults_surface_at_checkpoint(tmp_store: corestore.Store, failpoint: FailpointVFS) -> None:
    create_table(tmp_store)
    failpoint.reset_counters()
    committed = insert(tmp_store, list(range(1, 21)))
    # WAL mode: commits append to -wal; the main file is written only by a checkpoint.
    assert failpoint.counters.seen["write", "wal"] > 0
    assert failpoint.counters.seen["write", "main"] == 0

    fault = failpoint.arm(op="write", file="main")
    with pytest.raises(corestore.FatalError) as info:
        tmp_store.checkpoint("TRUNCATE")
    assert info.value.classification.kind is ErrorKind.FATAL_IO
    assert info.value.classification.extended_code == 10
    assert fault.failed >= 1
    # Commits keep working while the main file cannot be written: they only need the -wal.
    committed += insert(tmp_store, [21, 22])

    failpoint.heal()
    assert tmp_store.checkpoint("TRUNCATE") == (0, 0, 0)  # everything copied, -wal truncated
    assert failpoint.counters.seen["write", "main"] > fault.failed
    assert set(committed) <= ids_in(tmp_store)
    tmp_store.close()
    assert_intact(tmp_store.path, failpoint, committed)


@pytest.mark.corestore_profile("minimal", pragmas=WAL, failpoint=True)
def test_heal_on_last_close_only_a_full_restart_cures_it(tmp_store: corestore.Store, failpoint: FailpointVFS) -> None:
    path = tmp_store.path
    create_table(tmp_store)
    committed = insert(tmp_store, [1])
    # Another part of the application has its own store (own connections) on the same file.
    reader = corestore.open(attrs.evolve(tmp_store.profile, name="reader"))
    assert reader is not tmp_store
    assert ids_in(reader) == {1}

    fault = failpoint.arm(op="write", file="wal", heal_on_last_close=True, database=path)
    for _ in range(3):
        with pytest.raises(corestore.FatalError):
            insert(tmp_store, [50])
        # corestore reopened its own connections after each fault; the reader's stays open,
        # so the process never closed every connection: the fault persists.
        assert fault.active
        assert failpoint.open_count(path) >= 1
    assert fault.failed >= 3

    tmp_store.close()
    assert fault.active  # the reader still holds a connection
    reader.close()  # the last connection of the process closes: a "restart"
    assert failpoint.open_count(path) == 0
    assert not fault.active and fault.healed_by == "last_close"

    store = corestore.open(tmp_store.profile)
    try:
        committed += insert(store, [2])
        assert set(committed) <= ids_in(store)
    finally:
        store.close()
    assert_intact(path, failpoint, committed)


@pytest.mark.parametrize(
    ("op", "file", "code", "kind", "extended"),
    [
        ("sync", "wal", "IOERR_FSYNC", ErrorKind.FATAL_IO, 1034),
        ("write", "wal", "SQLITE_IOERR_WRITE", ErrorKind.FATAL_IO, 778),
        ("write", "wal", "FULL", ErrorKind.FULL, 13),
    ],
)
@pytest.mark.corestore_profile("minimal", pragmas=WAL, failpoint=True)
def test_any_extended_code_reaches_the_caller(tmp_store: corestore.Store, failpoint: FailpointVFS, op: str,
                                               file: str, code: str, kind: ErrorKind, extended: int) -> None:
    create_table(tmp_store)
    committed = insert(tmp_store, [1])
    fault = failpoint.arm(op=op, file=file, code=code, count=1)
    with pytest.raises(corestore.FatalError) as info:
        insert(tmp_store, [2])
    verdict = info.value.classification
    assert (verdict.kind, verdict.extended_code) == (kind, extended)
    assert fault.healed_by == "count"  # count=1: the next operation goes through
    committed += insert(tmp_store, [3])
    tmp_store.close()
    assert_intact(tmp_store.path, failpoint, committed)


@pytest.mark.corestore_profile("minimal", pragmas=WAL, failpoint=True)
def test_open_fault_on_the_wal(tmp_store: corestore.Store, failpoint: FailpointVFS) -> None:
    failpoint.arm(op="open", file="wal", code="CANTOPEN")
    with pytest.raises(corestore.StoreError) as info:
        create_table(tmp_store)  # the first write opens the -wal
    assert info.value.classification.code == 14
    assert failpoint.counters.failed["open", "wal"] >= 1
    failpoint.heal()
    create_table(tmp_store)
    committed = insert(tmp_store, [1])
    tmp_store.close()
    assert_intact(tmp_store.path, failpoint, committed)


@pytest.mark.corestore_profile("minimal", pragmas=WAL, failpoint=True)
def test_hard_ioerr_on_main_reads_fails_reads_without_damage(tmp_store: corestore.Store, failpoint: FailpointVFS) -> None:
    create_table(tmp_store)
    committed = insert(tmp_store, list(range(1, 6)))
    tmp_store.checkpoint("TRUNCATE")
    tmp_store.invalidate()  # a fresh connection must read the main file (its cache is empty)
    fault = failpoint.arm(op="read", file="main")
    with pytest.raises(corestore.FatalError) as info:
        ids_in(tmp_store)
    assert info.value.classification.kind is ErrorKind.FATAL_IO
    assert fault.failed >= 1
    failpoint.heal()
    assert set(committed) <= ids_in(tmp_store)
    tmp_store.close()
    assert_intact(tmp_store.path, failpoint, committed)


# -- the injector itself (raw apsw connections) ------------------------------------------------


def raw_connection(path: Path, fp: FailpointVFS) -> apsw.Connection:
    conn = apsw.Connection(str(path), vfs=fp.name)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=full")  # one -wal sync per commit
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    return conn


def test_count_after_and_duration(tmp_path: Path, failpoint: FailpointVFS) -> None:
    conn = raw_connection(tmp_path / "raw.db", failpoint)
    try:
        def commit(i: int) -> bool:
            try:
                conn.execute("INSERT INTO t (id) VALUES (?)", (i,))
                return True
            except apsw.IOError as err:
                assert err.extendedresult == apsw.SQLITE_IOERR_FSYNC
                return False

        fault = failpoint.arm(op="sync", file="wal", code="IOERR_FSYNC", count=2)
        assert [commit(i) for i in range(1, 5)] == [False, False, True, True]
        assert (fault.failed, fault.healed_by) == (2, "count")

        fault = failpoint.arm(op="sync", file="wal", code="IOERR_FSYNC", after=1, count=1)
        assert [commit(i) for i in range(10, 13)] == [True, False, True]
        assert fault.seen == 2 and fault.failed == 1

        fault = failpoint.arm(op="sync", file="wal", code="IOERR_FSYNC", duration_s=0.2)
        assert commit(20) is False
        wait_until(lambda: failpoint.faults == (), "the 0.2 s fault to heal by its duration")
        assert commit(21) is True
        assert fault.healed_by == "duration"
        assert failpoint.faults == ()
    finally:
        conn.close()
    assert integrity_check(tmp_path / "raw.db", driver="apsw", vfs=failpoint.name) == "ok"


def test_faults_are_scoped_by_database_and_path(tmp_path: Path, failpoint: FailpointVFS) -> None:
    a, b = raw_connection(tmp_path / "a.db", failpoint), raw_connection(tmp_path / "b.db", failpoint)
    try:
        failpoint.arm(op="write", file="wal", database=tmp_path / "a.db")
        with pytest.raises(apsw.IOError):
            a.execute("INSERT INTO t (id) VALUES (1)")
        b.execute("INSERT INTO t (id) VALUES (1)")  # the other database is untouched
        failpoint.heal()

        failpoint.arm(op="write", file=str(tmp_path / "b.db-wal"))  # by exact path
        a.execute("INSERT INTO t (id) VALUES (2)")
        with pytest.raises(apsw.IOError):
            b.execute("INSERT INTO t (id) VALUES (2)")
        failpoint.heal()

        failpoint.arm(op="write", file="*/a.db*")  # by glob
        with pytest.raises(apsw.IOError):
            a.execute("INSERT INTO t (id) VALUES (3)")
        b.execute("INSERT INTO t (id) VALUES (3)")
        failpoint.heal()
        counters = failpoint.counters
        assert counters.failed["write", "wal"] == 3
        assert counters.total("failed") == 3
        assert counters.total("seen", op="write") >= counters.total("failed", op="write")
    finally:
        a.close()
        b.close()


def test_apsw_raises_the_injected_exception_even_where_sqlite_tolerates_it(tmp_path: Path, failpoint: FailpointVFS) -> None:
    """Recorded caveat: SQLite logs and ignores a failed -wal truncate under journal_size_limit
    (the commit is durable), but apsw still raises the exception the VFS raised. Assert on the
    data, not only on the exception; the preload shim does not have this difference."""
    conn = raw_connection(tmp_path / "raw.db", failpoint)
    try:
        conn.execute("PRAGMA journal_size_limit=0")
        conn.execute("INSERT INTO t (id) VALUES (1)")
        conn.execute("PRAGMA wal_checkpoint")
        failpoint.arm(op="truncate", file="wal", code="IOERR_TRUNCATE")
        with pytest.raises(apsw.IOError) as info:
            conn.execute("INSERT INTO t (id) VALUES (2)")  # restarts the -wal, then tries to shrink it
        assert info.value.extendedresult == apsw.SQLITE_IOERR_TRUNCATE
        assert conn.getautocommit()  # no transaction left open ...
        assert [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")] == [1, 2]  # ... and it committed
    finally:
        conn.close()


def test_arguments_are_checked(failpoint: FailpointVFS, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="op 'lock'"):
        failpoint.arm(op="lock")
    with pytest.raises(ValueError, match="not a SQLite result code"):
        failpoint.arm(op="write", code="IOERR_NOPE")
    with pytest.raises(ValueError, match="neither a role"):
        failpoint.arm(op="write", file="relative/path")
    with pytest.raises(ValueError, match="count"):
        failpoint.arm(op="write", count=0)
    assert resolve_code("ioerr_short_read") == resolve_code(522) == 522
    assert failpoint.faults == ()
    with pytest.raises(ValueError, match="already registered"):
        FailpointVFS(failpoint.name)


def test_context_managers_heal_and_unregister(tmp_path: Path) -> None:
    with FailpointVFS("failpoint-cm-test") as fp:
        assert "failpoint-cm-test" in apsw.vfs_names()
        conn = raw_connection(tmp_path / "cm.db", fp)
        with fp.armed(op="write", file="wal") as fault:
            with pytest.raises(apsw.IOError):
                conn.execute("INSERT INTO t (id) VALUES (1)")
        assert fault.healed_by == "heal"
        conn.execute("INSERT INTO t (id) VALUES (1)")
        conn.close()
        fp.arm(op="any")
    assert fp.faults == ()
    assert "failpoint-cm-test" not in apsw.vfs_names()
