"""The transaction engine against real SQLite errors: every row of the error table that can be
produced here, through both drivers, with truthful ``committed`` values and retries by policy.

Faults that need injection below SQLite (IOERR, the uncertain commit) are in
``test_engine_faults.py``, which uses the failpoint harness.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

import corestore
from corestore import ErrorKind, Profile

from helpers import Holder, child_env, root_only, run_python

DRIVERS = ["sqlite3", pytest.param("apsw", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("apsw") is None, reason="apsw not installed"))]


def profile(path: str, driver: str = "sqlite3", **kw) -> Profile:
    pragmas = kw.pop("pragmas", {"busy_timeout": 100, "journal_mode": "wal", "synchronous": "normal"})
    return Profile(path=path, driver=driver, pragmas=pragmas, **kw)


@pytest.fixture
def holder(db_path: str) -> Iterator[callable]:
    holders = []

    def make() -> Holder:
        holders.append(Holder(db_path))
        return holders[-1]

    yield make
    for h in holders:
        h.kill()


@pytest.mark.parametrize("driver", DRIVERS)
def test_busy_from_another_process(db_path: str, driver: str, holder) -> None:
    store = corestore.open(profile(db_path, driver, retry={"busy_attempts": 3, "base_delay_s": 0.001}))
    store.database.execute_sql("create table t(x)")
    holder()
    with pytest.raises(corestore.BusyError) as info:
        with store.transaction():
            store.database.execute_sql("insert into t values (1)")
    err = info.value
    assert err.committed is False and err.classification.kind is ErrorKind.BUSY
    assert err.classification.code == 5 and isinstance(err.__cause__, Exception)
    assert store.stats()["retries"] == 0  # transaction() never retries
    with pytest.raises(corestore.BusyError):
        store.run(lambda: store.database.execute_sql("insert into t values (1)"))
    assert store.stats()["retries"] == 2 and store.stats()["busy_waits"] == 2
    assert store.stats()["faults"] == 0  # contention is not a fault
    store.close()


def test_run_retries_busy_until_the_lock_is_released(db_path: str, holder) -> None:
    store = corestore.open(profile(db_path, retry={"busy_attempts": 50, "base_delay_s": 0.01, "max_delay_s": 0.05}))
    store.database.execute_sql("create table t(x)")
    h = holder()
    import threading

    threading.Timer(0.3, h.release).start()
    store.run(lambda: store.database.execute_sql("insert into t values (1)"))
    assert store.stats()["retries"] >= 1
    assert store.database.execute_sql("select count(*) from t").fetchone()[0] == 1
    store.close()


def test_run_deadline_bounds_the_retries(db_path: str, holder) -> None:
    store = corestore.open(profile(db_path, retry={"busy_attempts": 1000, "base_delay_s": 0.01}))
    store.database.execute_sql("create table t(x)")
    holder()
    started = time.monotonic()
    with pytest.raises(corestore.BusyError):
        store.run(lambda: None, deadline_s=0.5)
    assert time.monotonic() - started < 3  # bounded by the deadline, not 1000 attempts
    store.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_constraint_is_peewee_integrity_error(db_path: str, driver: str) -> None:
    store = corestore.open(profile(db_path, driver))

    class Item(peewee.Model):
        key = peewee.TextField(unique=True)

    store.bind([Item])
    Item.create_table()
    Item.create(key="a")
    with pytest.raises(peewee.IntegrityError) as info:
        Item.create(key="a")
    assert isinstance(info.value, corestore.ConstraintError) and isinstance(info.value, corestore.StoreError)
    assert info.value.classification.kind is ErrorKind.CONSTRAINT
    assert info.value.classification.name == "SQLITE_CONSTRAINT_UNIQUE"
    with pytest.raises(corestore.ConstraintError):
        with store.transaction():
            Item.create(key="b")
            Item.create(key="a")
    assert [i.key for i in Item.select()] == ["a"]  # the whole transaction rolled back
    assert store.stats()["faults"] == 0
    store.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_programming_errors_are_peewee_operational_errors(db_path: str, driver: str) -> None:
    store = corestore.open(profile(db_path, driver))
    for sql in ("select * from missing", "selec 1"):
        with pytest.raises(peewee.OperationalError) as info:
            store.database.execute_sql(sql)
        assert isinstance(info.value, corestore.QueryError)
        assert info.value.classification.kind is ErrorKind.PROGRAMMING
        assert info.value.committed is False
    with pytest.raises(peewee.ProgrammingError):  # QueryError is both
        store.database.execute_sql("select * from missing")
    store.close()


def test_caller_exception_propagates_untouched(minimal: corestore.Store) -> None:
    class Mine(Exception):
        pass

    with pytest.raises(Mine):
        with minimal.transaction():
            raise Mine()
    with pytest.raises(Mine):
        minimal.run(lambda: (_ for _ in ()).throw(Mine()))
    assert minimal.stats()["retries"] == 0 and minimal.stats()["rollbacks"] == 2


# -- permission errors: a child without the file-permission capabilities (root bypasses them) --

AS_UNPRIVILEGED = """
import json, sys, corestore
path, mode = sys.argv[1], sys.argv[2]
out = {}
try:
    store = corestore.open(corestore.Profile(path=path, pragmas={"busy_timeout": 100, "journal_mode": mode}))
    out["opened"] = True
    with store.transaction():
        store.database.execute_sql("insert into t values (2)")
    out["committed"] = True
except corestore.StoreError as err:
    c = err.classification
    out.update(error=type(err).__name__, kind=c.kind.name, code=c.extended_code, name=c.name, committed=err.committed)
print(json.dumps(out))
"""


@pytest.fixture
def public_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="corestore-perm-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_db(path: Path, mode: str) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute(f"pragma journal_mode={mode}")
    conn.execute("create table t(x)")
    conn.execute("insert into t values (1)")
    conn.commit()
    conn.close()


def unprivileged(path: Path, mode: str) -> dict:
    result = run_python(AS_UNPRIVILEGED, str(path), mode, drop_caps=True, env=child_env(PYTHONDONTWRITEBYTECODE="1"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@root_only()
def test_readonly_file(public_dir: Path) -> None:
    db = public_dir / "ro.db"
    make_db(db, "delete")
    db.chmod(0o444)
    out = unprivileged(db, "delete")
    assert out["kind"] == "READONLY" and out["code"] == 8 and out["committed"] is False
    assert out["error"] == "FatalError"


@root_only()
def test_readonly_directory(public_dir: Path) -> None:
    sub = public_dir / "locked"
    sub.mkdir()
    db = sub / "app.db"
    make_db(db, "delete")
    db.chmod(0o666)
    sub.chmod(0o555)  # the file is writable, its directory is not: no -journal can be created
    try:
        out = unprivileged(db, "delete")
    finally:
        sub.chmod(0o755)
    assert out["kind"] == "READONLY" and out["name"] == "SQLITE_READONLY_DIRECTORY" and out["code"] == 1544
    assert out["committed"] is False


@root_only()
def test_cantopen_is_environment(public_dir: Path) -> None:
    sub = public_dir / "private"
    sub.mkdir()
    db = sub / "app.db"
    make_db(db, "delete")
    db.chmod(0o000)  # without CAP_DAC_OVERRIDE not even its owner can open it
    out = unprivileged(db, "delete")
    assert out["kind"] == "ENVIRONMENT" and out["code"] == 14 and "opened" not in out


# -- a full disk: a small tmpfs ---------------------------------------------------------------


@pytest.fixture
def small_fs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="corestore-full-", dir="/tmp"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(d)], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        pytest.fail(f"mount failed: {result.stderr}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)
    shutil.rmtree(d, ignore_errors=True)


@root_only()
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_full_disk(small_fs: Path, mode: str) -> None:
    path = str(small_fs / "full.db")
    store = corestore.open(profile(path, pragmas={"busy_timeout": 100, "journal_mode": mode, "synchronous": "normal"}))
    store.database.execute_sql("create table t(x)")
    committed = 0
    with pytest.raises(corestore.FatalError) as info:
        for _ in range(10_000):
            with store.transaction():
                store.database.execute_sql("insert into t values (?)", ("x" * 8000,))
            committed += 1
    err = info.value
    assert err.classification.kind is ErrorKind.FULL and err.classification.code == 13
    # the disk filled at COMMIT: the error came from the COMMIT statement itself, so the outcome is
    # reported as unknown (in WAL mode SQLite may pad after the commit frame), never as "not committed"
    assert err.committed is None
    assert "outcome UNKNOWN" in str(err)
    assert store.stats()["faults_by_kind"] == {"FULL": 1} and store.stats()["uncertain_commits"] == 1
    store.close()
    import sqlite3

    check = sqlite3.connect(path)
    # every acknowledged row is there; the uncertain one at most once
    assert check.execute("select count(*) from t").fetchone()[0] in (committed, committed + 1)
    assert check.execute("pragma integrity_check").fetchone()[0] == "ok"
    check.close()
