"""The transaction engine under real faults injected below SQLite (the failpoint harness): the
masked IOERR chain, the uncertain commit (``committed=None``, never retried, never written
twice), idempotent units, and statements outside transactions."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import peewee
import pytest

import corestore
from corestore import ErrorKind, Profile

from plugin_fixtures import EVENTS

SQLITE3_FSYNC_EIO = {"journal_mode": "wal", "synchronous": "full", "busy_timeout": 1000}


# -- the preload shim (stdlib sqlite3, in a child process) ---------------------------------------

def _masked_chain_in_bare_peewee(path: str) -> dict:
    """Bare peewee (no corestore): fsync fails at COMMIT, peewee's atomic() then issues a ROLLBACK
    that cannot succeed. The caller sees "cannot rollback"; the real error is only in __context__
    (peewee 4; peewee 3.17 rolls back through the DB-API, which does nothing, and shows the real one)."""
    from corestore.classify import classify_exception
    from corestore_contrib.failpoint import PreloadFailpoint

    db = peewee.SqliteDatabase(path, pragmas=list(SQLITE3_FSYNC_EIO.items()))
    db.execute_sql("create table t(x)")
    disk = PreloadFailpoint.from_env(database=path)
    disk.arm(op="fsync", file="wal", errno="EIO")
    try:
        with db.atomic():
            db.execute_sql("insert into t values (1)")
    except Exception as err:
        c = classify_exception(err)
        return {"raised": str(err), "kind": c.kind.name, "code": c.extended_code}
    finally:
        disk.heal()
    return {"raised": None}


def test_masked_ioerr_chain_is_classified_by_its_real_code(preload_failpoint, tmp_path: Path) -> None:
    child = preload_failpoint.run(_masked_chain_in_bare_peewee, args=[str(tmp_path / "store.db")])
    out = child.check().result
    if int(peewee.__version__.split(".")[0]) >= 4:
        assert "cannot rollback" in out["raised"]  # what peewee 4 shows (3.17 rolls back via the DB-API: no mask)
    assert (out["kind"], out["code"]) == ("FATAL_IO", 1034)  # what actually happened: SQLITE_IOERR_FSYNC


def _uncertain_commit_through_run(path: str, idempotent_retry: bool) -> dict:
    from corestore_contrib.failpoint import PreloadFailpoint

    profile = Profile(path=path, name="minimal", pragmas=SQLITE3_FSYNC_EIO, retry={"fatal_attempts": 3})
    store = corestore.open(profile)
    store.database.execute_sql("create table t(id integer primary key, x)")
    disk = PreloadFailpoint.from_env(database=path)
    out: dict = {}
    disk.arm(op="fsync", file="wal", errno="EIO")
    try:
        store.run(lambda: store.database.execute_sql("insert into t(x) values ('once')"))
        out["raised"] = None
    except corestore.FatalError as err:
        out.update(raised=err.classification.name, committed=err.committed, retries=store.stats()["retries"])
    disk.heal()
    store.invalidate()  # reopen: WAL recovery decides what the failed COMMIT left behind
    out["rows_after_heal"] = store.database.execute_sql("select count(*) from t").fetchone()[0]
    if idempotent_retry:
        # a unit that is safe to repeat may be retried across an uncertain commit
        disk.arm(op="fsync", file="wal", errno="EIO", count=1)
        store.run(lambda: store.database.execute_sql("insert or ignore into t(id, x) values (100, 'idem')"),
                  idempotent=True)
        out["idempotent_retries"] = store.stats()["retries"]
        out["idem_rows"] = store.database.execute_sql("select count(*) from t where id = 100").fetchone()[0]
        disk.heal()
    store.close()
    check = sqlite3.connect(path)
    out["integrity"] = check.execute("pragma integrity_check").fetchone()[0]
    out["rows_final"] = check.execute("select count(*) from t where x = 'once'").fetchone()[0]
    check.close()
    return out


def test_uncertain_commit_is_never_retried_or_written_twice(preload_failpoint, tmp_path: Path) -> None:
    child = preload_failpoint.run(_uncertain_commit_through_run, args=[str(tmp_path / "store.db"), True])
    out = child.check().result
    assert out["raised"] == "SQLITE_IOERR_FSYNC" and out["committed"] is None
    assert out["retries"] == 0  # fatal_attempts=3 allows FATAL_IO retries, but COMMIT was issued
    assert out["rows_after_heal"] in (0, 1) and out["rows_final"] == out["rows_after_heal"]  # never twice
    assert out["idempotent_retries"] == 1 and out["idem_rows"] == 1
    assert out["integrity"] == "ok"


# -- the apsw VFS (in process) --------------------------------------------------------------------

@pytest.fixture
def recorder(install_plugins):
    install_plugins(t_recorder="plugin_fixtures:Recorder")


def wal_store(failpoint, tmp_path: Path, *plugins: str, **pragmas) -> corestore.Store:
    pragmas = {"journal_mode": "wal", "synchronous": "full", "busy_timeout": 1000, **pragmas}
    return corestore.open(Profile(path=str(tmp_path / "app.db"), driver="apsw", vfs=failpoint.name, plugins=plugins,
                                  pragmas=pragmas))


def test_model_call_outside_a_transaction_under_a_fault_is_classified(failpoint, tmp_path: Path, recorder) -> None:
    store = wal_store(failpoint, tmp_path, "t_recorder")

    class Event(peewee.Model):
        kind = peewee.TextField()

    store.bind([Event])
    Event.create_table()
    fault = failpoint.arm(op="write", file="wal")
    with pytest.raises(corestore.FatalError) as info:
        Event.create(kind="autocommit")  # no transaction: still through the policy layer
    c = info.value.classification
    assert c.kind is ErrorKind.FATAL_IO and c.source == "core"
    assert info.value.committed is None  # the implicit COMMIT of a write statement failed
    assert [e for e in EVENTS if e[1] == "on_fatal"] == [("t_recorder", "on_fatal", "FATAL_IO", "write")]
    assert store.stats()["reopens"] == 1  # the classification asked for a reopen
    failpoint.heal(fault)
    Event.create(kind="after heal")
    assert [e.kind for e in Event.select()] == ["after heal"]
    store.close()


def test_peewee_atomic_through_the_store_keeps_the_real_error(failpoint, tmp_path: Path) -> None:
    store = wal_store(failpoint, tmp_path)
    store.database.execute_sql("create table t(x)")
    failpoint.arm(op="sync", file="wal", code="IOERR_FSYNC")
    with pytest.raises(corestore.FatalError) as info:
        with store.database.atomic():
            store.database.execute_sql("insert into t values (1)")
    assert info.value.classification.name == "SQLITE_IOERR_FSYNC" and info.value.committed is None
    assert "cannot rollback" not in str(info.value)  # the store never issued a ROLLBACK that could not succeed
    failpoint.heal()
    store.close()


def test_fault_before_commit_is_not_committed(failpoint, tmp_path: Path) -> None:
    """A read fault inside the transaction: SQLite never reached COMMIT, so committed=False and
    run() may retry (TRANSIENT/FATAL only by policy) — here a fatal read is not retried."""
    store = wal_store(failpoint, tmp_path, cache_size=0)
    store.database.execute_sql("create table t(x)")
    store.database.execute_sql("insert into t values (1)")
    store.checkpoint("TRUNCATE")
    store.invalidate()  # a cold page cache: the next read goes to the file
    failpoint.arm(op="read", file="main", code="IOERR_READ", after=1)
    with pytest.raises(corestore.StoreError) as info:
        store.run(lambda: store.database.execute_sql("update t set x = x + 1").rowcount)
    assert info.value.committed is False
    assert info.value.classification.kind in (ErrorKind.FATAL_IO, ErrorKind.CORRUPT)
    assert store.stats()["retries"] == 0
    failpoint.heal()
    assert store.database.execute_sql("select x from t").fetchone()[0] == 1  # nothing was applied
    store.close()
