"""wal_guard: WAL that is never silently lost, downgraded or mixed (site/plugins/wal_guard.md).

Real SQLite throughout: faults go in through the failpoint VFS (apsw, in-process) or the preload
shim (stdlib sqlite3, in a child); "not authorized" is SQLite's own SQLITE_AUTH from an
authorizer; the immutable database is a VFS whose files report SQLITE_IOCAP_IMMUTABLE. The only
classification that is forced (by a test ``classify_error`` plugin, as the issue allows) is
"this IOERR is permanent", which no real fault can make SQLite say.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import runpy
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import corestore
from corestore import (
    Classification,
    ConfigError,
    ErrorKind,
    FatalError,
    HealthStatus,
    Profile,
    StoreError,
    hookimpl,
)
from corestore.profiles import BUILTIN_PROFILES
from corestore.sqlitefile import read_header
from corestore_plugins.wal_guard import DEFAULT_WAL_AUTOCHECKPOINT, WalGuard

from helpers import ROOT, child_env

apsw = pytest.importorskip("apsw")
from corestore_contrib.failpoint import FailpointVFS, PreloadFailpoint  # noqa: E402  (needs apsw)

DEFAULT_PRAGMAS = dict(BUILTIN_PROFILES["default"]["pragmas"])
FAST = {"switch_attempts": 3, "backoff_base_s": 0.001, "backoff_max_s": 0.005}
LOGGER = "corestore_plugins.wal_guard"


def profile(path: str, *, plugins: tuple[str, ...] = ("wal_guard",), settings: dict[str, Any] | None = None,
            pragmas: dict[str, Any] | None = None, **kwargs: Any) -> Profile:
    """The default profile's pragmas with only wal_guard (plus test plugins) enabled."""
    merged = {"wal_guard": dict(FAST)}
    for name, table in (settings or {}).items():
        merged.setdefault(name, {}).update(table)
    return Profile(path=path, plugins=plugins, pragmas=DEFAULT_PRAGMAS if pragmas is None else pragmas,
                   settings=merged, **kwargs)


def header_mode(path: str) -> str | None:
    header = read_header(path)
    return None if header is None else header.journal_mode


def rollback_file(path: str, rows: int = 3) -> str:
    """A database in rollback-journal (DELETE) mode with a few rows; every connection closed."""
    conn = sqlite3.connect(path)
    conn.execute("create table t(x)")
    conn.executemany("insert into t values (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    assert header_mode(path) == "rollback"
    return path


def wal_file(path: str) -> str:
    conn = sqlite3.connect(path)
    conn.execute("create table t(x)")
    conn.execute("insert into t values (1)")
    conn.commit()
    assert conn.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
    conn.close()
    assert header_mode(path) == "wal"
    return path


def details(store: corestore.Store) -> dict[str, Any]:
    return dict(store.health().components["wal_guard"].details)


@pytest.fixture
def fp() -> Iterator[FailpointVFS]:
    with FailpointVFS(f"wg-{uuid.uuid4().hex[:8]}") as vfs:
        yield vfs


# ---------------------------------------------------------------------------------------------
# Test plugins (installed through real entry points by conftest's install_plugins)
# ---------------------------------------------------------------------------------------------


class ForcePermanent:
    """classify_error: an IOERR-family error is ENVIRONMENT (a "permanent marker"). No real fault
    can make SQLite call an I/O error permanent, so the issue allows forcing it like this."""

    name = "t_wg_force_env"

    @hookimpl
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Classification | None:
        from corestore.classify import classify_exception

        base = classify_exception(error)
        if base.code == 10:
            return attrs.evolve(base, kind=ErrorKind.ENVIRONMENT, retryable=False, reopen=False)
        return None


class DenyJournalMode:
    """An authorizer that makes SQLite refuse ``PRAGMA journal_mode`` with its real SQLITE_AUTH
    ("not authorized"): ``deny = "set_wal"`` refuses only ``journal_mode=WAL``, ``"all"`` every
    journal_mode pragma (the query too). Runs before wal_guard (both ``tryfirst``, this one
    listed first)."""

    name = "t_wg_deny"
    denied: list[str] = []

    @attrs.frozen(kw_only=True)
    class Settings:
        deny: str = attrs.field(default="set_wal", metadata={"help": "set_wal or all"})

    def __init__(self, settings: DenyJournalMode.Settings) -> None:
        self.settings = settings

    @hookimpl(tryfirst=True)
    def on_open(self, store: Any, connection: Any) -> None:
        deny_all = self.settings.deny == "all"

        def authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
            if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() == "journal_mode":
                if deny_all or (arg2 or "").lower() == "wal":
                    DenyJournalMode.denied.append(arg2 or "<query>")
                    return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        connection.set_authorizer(authorizer)


class Tamper:
    """Changes one pragma on the connection after the core applied the profile's, before
    wal_guard looks (the "something else changed it" case)."""

    name = "t_wg_tamper"

    @attrs.frozen(kw_only=True)
    class Settings:
        pragma: str = attrs.field(default="synchronous", metadata={"help": "pragma to change"})
        value: int = attrs.field(default=0, metadata={"help": "value to set"})

    def __init__(self, settings: Tamper.Settings) -> None:
        self.settings = settings

    @hookimpl(tryfirst=True)
    def on_open(self, store: Any, connection: Any) -> None:
        connection.execute(f"PRAGMA {self.settings.pragma} = {self.settings.value}").fetchall()


class FlipToWal:
    """Another process's switch, at the worst moment: after the core opened the connection (and
    read the rollback-journal header), before wal_guard looks. A second connection of the same
    driver switches the file to WAL and closes; then :attr:`then` runs (e.g. arms a fault)."""

    name = "t_wg_flip"
    then: Callable[[], Any] | None = None

    @hookimpl(tryfirst=True)
    def on_open(self, store: Any, connection: Any) -> None:
        other = apsw.Connection(store.path) if store.profile.driver == "apsw" else sqlite3.connect(store.path)
        try:
            assert other.execute("pragma journal_mode=wal").fetchall() == [("wal",)]
        finally:
            other.close()
        if FlipToWal.then is not None:
            FlipToWal.then()


class Barrier:
    """A cross-process barrier in ``on_open``, after the core opened the connection (and read the
    still-empty file) and before wal_guard runs: every process then reaches the switch together."""

    name = "t_wg_barrier"

    @attrs.frozen(kw_only=True)
    class Settings:
        directory: str = attrs.field(default="", metadata={"help": "where the processes meet"})
        parties: int = attrs.field(default=1, metadata={"help": "how many processes"})

    def __init__(self, settings: Barrier.Settings) -> None:
        self.settings = settings
        self.passed = False

    @hookimpl(tryfirst=True)
    def on_open(self, store: Any, connection: Any) -> None:
        if self.passed:
            return
        self.passed = True
        folder = Path(self.settings.directory)
        (folder / f"arrived-{os.getpid()}").touch()
        deadline = time.monotonic() + 30
        while len(list(folder.glob("arrived-*"))) < self.settings.parties:
            if time.monotonic() > deadline:
                raise TimeoutError("barrier: not every process arrived")
            time.sleep(0.001)


@pytest.fixture
def test_plugins(install_plugins: Callable[..., Path]) -> Iterator[None]:
    DenyJournalMode.denied = []
    FlipToWal.then = None
    install_plugins(
        t_wg_force_env="test_wal_guard:ForcePermanent",
        t_wg_deny="test_wal_guard:DenyJournalMode",
        t_wg_tamper="test_wal_guard:Tamper",
        t_wg_flip="test_wal_guard:FlipToWal",
        t_wg_barrier="test_wal_guard:Barrier",
    )
    yield
    FlipToWal.then = None


class _ImmutableFile(apsw.VFSFile):
    def xDeviceCharacteristics(self) -> int:
        return super().xDeviceCharacteristics() | apsw.SQLITE_IOCAP_IMMUTABLE


class ImmutableVFS(apsw.VFS):
    """The default VFS, but every file says SQLITE_IOCAP_IMMUTABLE: SQLite then treats the
    database as immutable (what ``?immutable=1`` does), and an immutable database cannot be WAL."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return _ImmutableFile("", name, flags)


# ---------------------------------------------------------------------------------------------
# on_open: the switch, checked against the file header
# ---------------------------------------------------------------------------------------------


def test_hook_on_open_switches_a_rollback_file_to_wal_once(db_path: str) -> None:
    rollback_file(db_path)
    store = corestore.open(profile(db_path))
    assert header_mode(db_path) == "wal"
    info = details(store)
    assert info["switched_by_this_process"] is True and info["switches"] == 1
    assert info["connection_mode"] == "wal" and info["header_mode"] == "wal"
    assert store.database.execute_sql("select count(*) from t").fetchone()[0] == 3
    store.close()
    again = corestore.open(profile(db_path))  # the file is WAL now: nothing more to do
    info = details(again)
    assert info["switched_by_this_process"] is False and info["switches"] == 0
    assert info["connection_mode"] == "wal"
    again.close()


def test_hook_on_open_runs_for_every_thread_connection(db_path: str) -> None:
    store = corestore.open(profile(db_path))
    modes = []

    def worker() -> None:
        modes.append(store.database.execute_sql("pragma journal_mode").fetchone()[0])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert modes == ["wal"] * 4
    assert details(store)["connections_checked"] >= 5
    assert details(store)["switches"] == 1  # only the first connection switched the file


@pytest.mark.parametrize("op, file, code", [
    ("sync", "journal", "IOERR_FSYNC"),   # nothing reaches the main file
    ("write", "main", "IOERR_WRITE"),     # page 1 write fails: a hot journal is left for SQLite to roll back
])
def test_transient_ioerr_refuses_the_open_and_a_later_open_switches(db_path: str, fp: FailpointVFS,
                                                                     op: str, file: str, code: str) -> None:
    rollback_file(db_path)
    prof = profile(db_path, driver="apsw", vfs=fp.name)
    fault = fp.arm(op=op, file=file, code=code, database=db_path)
    with pytest.raises(FatalError) as caught:
        corestore.open(prof)
    err = caught.value
    assert err.classification is not None and err.classification.kind is ErrorKind.FATAL_IO
    assert err.classification.name == f"SQLITE_{code}"
    assert "never a reason to leave WAL" in str(err) and "(rollback)" in str(err)
    assert fault.failed >= FAST["switch_attempts"]  # retried, then raised
    assert header_mode(db_path) == "rollback"  # never downgraded, never half-switched
    fp.heal()
    store = corestore.open(prof)
    assert header_mode(db_path) == "wal"
    assert details(store)["switched_by_this_process"] is True
    assert details(store)["fallback"] is None
    assert store.database.execute_sql("select count(*) from t").fetchone()[0] == 3
    assert store.database.execute_sql("pragma integrity_check").fetchone()[0] == "ok"


def test_a_failed_switch_leaves_sqlite_saying_wal_while_the_header_does_not(db_path: str, fp: FailpointVFS) -> None:
    """Why wal_guard reads the header and steps the pragma to its end: SQLite itself hands back
    'wal' as the row of a switch whose COMMIT failed, and the connection keeps saying 'wal'."""
    rollback_file(db_path)
    conn = apsw.Connection(db_path, vfs=fp.name)
    fp.arm(op="sync", file="journal", code="IOERR_FSYNC", count=1, database=db_path)
    cursor = conn.execute("PRAGMA journal_mode=WAL")
    assert cursor.fetchone()[0] == "wal"  # the row comes before the implicit COMMIT ...
    with pytest.raises(apsw.IOError):
        cursor.fetchall()  # ... which fails only when the statement is stepped to its end
    assert header_mode(db_path) == "rollback"
    assert conn.execute("pragma journal_mode").fetchall() == [("wal",)]  # and the connection still says wal
    conn.close()


def test_a_transient_fault_that_heals_within_the_retries_ends_in_wal(db_path: str, fp: FailpointVFS) -> None:
    rollback_file(db_path)
    fault = fp.arm(op="sync", file="journal", code="IOERR_FSYNC", count=1, database=db_path)
    store = corestore.open(profile(db_path, driver="apsw", vfs=fp.name))
    assert fault.failed == 1
    # The second attempt must not believe the connection's 'wal' left over from the failed one.
    assert header_mode(db_path) == "wal"
    assert details(store)["switched_by_this_process"] is True


def _child_open(path: str) -> dict[str, Any]:
    """In a child under the preload shim: open with wal_guard (stdlib sqlite3)."""
    try:
        store = corestore.open(profile(path))
    except StoreError as err:
        c = err.classification
        return {"error": type(err).__name__, "message": str(err), "name": c.name if c else None}
    info = details(store)
    store.close()
    return {"details": info}


def test_transient_eio_under_stdlib_sqlite3_refuses_then_switches(tmp_path: Path, db_path: str) -> None:
    rollback_file(db_path)
    control = PreloadFailpoint(tmp_path / "control", database=db_path)
    try:
        control.arm(op="sync", file="journal", errno="EIO")
        refused = control.run(_child_open, args=[db_path], timeout_s=60).check()
        assert refused.result["error"] == "FatalError", refused.result
        assert refused.result["name"] == "SQLITE_IOERR_FSYNC"
        assert refused.counters["failed"]["sync"] >= FAST["switch_attempts"]
        assert header_mode(db_path) == "rollback"
        control.heal()
        opened = control.run(_child_open, args=[db_path], timeout_s=60).check()
    finally:
        control.close()
    assert opened.result["details"]["switched_by_this_process"] is True
    assert header_mode(db_path) == "wal"


# ---------------------------------------------------------------------------------------------
# Permanent incompatibility: fallback only when allowed and never for a WAL file
# ---------------------------------------------------------------------------------------------


def test_a_wal_file_is_never_downgraded_on_a_forced_permanent_marker(db_path: str, fp: FailpointVFS,
                                                                    test_plugins: None) -> None:
    """The hermes race: this connection saw a rollback-journal file, another process switched it
    to WAL, then opening the -wal fails with an error a classifier calls permanent. Even with
    fallback = "delete" allowed, the file (now WAL) is not downgraded."""
    rollback_file(db_path)
    prof = profile(db_path, driver="apsw", vfs=fp.name, plugins=("t_wg_flip", "t_wg_force_env", "wal_guard"),
                   settings={"wal_guard": {"fallback": "delete"}})
    FlipToWal.then = lambda: fp.arm(op="open", file="wal", code="IOERR", database=db_path)
    with pytest.raises(FatalError) as caught:
        corestore.open(prof)
    message = str(caught.value)
    assert "already in WAL mode" in message and "refuses" in message and "unchanged" in message
    assert caught.value.classification.kind is ErrorKind.ENVIRONMENT
    assert caught.value.classification.source == "wal_guard"
    assert fp.counters.failed["open", "wal"] == 1  # permanent: decided at once, not retried
    assert header_mode(db_path) == "wal"
    fp.heal()
    FlipToWal.then = None
    store = corestore.open(profile(db_path, driver="apsw", vfs=fp.name, settings={"wal_guard": {"fallback": "delete"}}))
    assert details(store)["fallback"] is None and details(store)["connection_mode"] == "wal"
    assert store.database.execute_sql("select count(*) from t").fetchone()[0] == 3


def test_cantopen_is_retried_like_a_transient_failure_never_a_fallback(db_path: str, fp: FailpointVFS,
                                                                        test_plugins: None) -> None:
    """CANTOPEN is ENVIRONMENT in the core's table, but it may be EMFILE: retried, then raised."""
    rollback_file(db_path)
    prof = profile(db_path, driver="apsw", vfs=fp.name, plugins=("t_wg_flip", "wal_guard"),
                   settings={"wal_guard": {"fallback": "delete"}})
    FlipToWal.then = lambda: fp.arm(op="open", file="wal", code="CANTOPEN", database=db_path)
    with pytest.raises(FatalError) as caught:
        corestore.open(prof)
    assert caught.value.classification.name == "SQLITE_CANTOPEN"
    assert "never a reason to leave WAL" in str(caught.value)
    assert fp.counters.failed["open", "wal"] == FAST["switch_attempts"]
    assert header_mode(db_path) == "wal"


def test_a_file_switched_to_wal_meanwhile_is_not_downgraded_on_sqlite_auth(db_path: str, test_plugins: None) -> None:
    rollback_file(db_path)
    prof = profile(db_path, plugins=("t_wg_flip", "t_wg_deny", "wal_guard"), settings={"wal_guard": {"fallback": "delete"}})
    with pytest.raises(FatalError) as caught:
        corestore.open(prof)
    assert caught.value.classification.name == "SQLITE_AUTH"
    assert "already in WAL mode" in str(caught.value)
    assert DenyJournalMode.denied == ["WAL"]
    assert header_mode(db_path) == "wal"


def test_a_wal_file_is_never_downgraded_on_sqlite_auth(db_path: str, test_plugins: None) -> None:
    wal_file(db_path)
    prof = profile(db_path, plugins=("t_wg_deny", "wal_guard"),
                   settings={"t_wg_deny": {"deny": "all"}, "wal_guard": {"fallback": "delete"}})
    with pytest.raises(FatalError) as caught:
        corestore.open(prof)
    assert caught.value.classification.name == "SQLITE_AUTH"
    assert "already in WAL mode" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)  # the driver error is kept
    assert header_mode(db_path) == "wal"


def test_permanent_auth_without_fallback_is_a_clear_error(db_path: str, test_plugins: None) -> None:
    rollback_file(db_path)
    with pytest.raises(FatalError) as caught:
        corestore.open(profile(db_path, plugins=("t_wg_deny", "wal_guard")))
    message = str(caught.value)
    assert "cannot use WAL journal mode here" in message and "not authorized" in message
    assert 'fallback = "delete"' in message and "unchanged" in message
    assert DenyJournalMode.denied == ["WAL"]  # permanent: not retried
    assert header_mode(db_path) == "rollback"


def test_hook_on_health_reports_an_allowed_fallback_as_degraded(db_path: str, test_plugins: None,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    rollback_file(db_path)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = corestore.open(profile(db_path, plugins=("t_wg_deny", "wal_guard"),
                                   settings={"wal_guard": {"fallback": "delete"}}))
    assert store.database.execute_sql("pragma journal_mode").fetchone()[0] == "delete"
    with store.transaction():
        store.database.execute_sql("insert into t values (99)")
    component = store.health().components["wal_guard"]
    assert component.status is HealthStatus.DEGRADED
    assert "SQLITE_AUTH" in component.summary and "not authorized" in component.summary
    assert component.details["fallback"] == "delete" and component.details["header_mode"] == "rollback"
    assert component.details["connection_mode"] == "delete"
    assert store.health().status is HealthStatus.DEGRADED

    # a further connection (another thread): no new switch attempt, still one WARNING
    denied_before = len(DenyJournalMode.denied)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(store.database.execute_sql("pragma journal_mode").fetchone()[0]))
    thread.start()
    thread.join()
    assert seen == ["delete"]
    assert len(DenyJournalMode.denied) == denied_before
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fallback" in warnings[0].getMessage()
    assert header_mode(db_path) == "rollback"


@pytest.mark.parametrize("fallback", ["delete", "none"])
def test_protocol_on_every_attempt_is_permanent(db_path: str, fp: FailpointVFS, fallback: str) -> None:
    rollback_file(db_path)
    prof = profile(db_path, driver="apsw", vfs=fp.name, settings={"wal_guard": {"fallback": fallback}})
    fault = fp.arm(op="sync", file="journal", code="PROTOCOL", database=db_path)
    if fallback == "none":
        with pytest.raises(FatalError) as caught:
            corestore.open(prof)
        assert "SQLITE_PROTOCOL on each of 3 attempts" in str(caught.value)
        assert caught.value.classification.kind is ErrorKind.ENVIRONMENT
        assert caught.value.classification.source == "wal_guard"
    else:
        store = corestore.open(prof)
        info = details(store)
        assert info["fallback"] == "delete" and "SQLITE_PROTOCOL on each of 3 attempts" in info["fallback_reason"]
        assert store.health().components["wal_guard"].status is HealthStatus.DEGRADED
        store.close()
    assert fault.failed == FAST["switch_attempts"]
    assert header_mode(db_path) == "rollback"


def test_protocol_that_heals_within_the_retries_is_not_permanent(db_path: str, fp: FailpointVFS) -> None:
    rollback_file(db_path)
    fp.arm(op="sync", file="journal", code="PROTOCOL", count=2, database=db_path)
    store = corestore.open(profile(db_path, driver="apsw", vfs=fp.name, settings={"wal_guard": {"fallback": "delete"}}))
    assert details(store)["fallback"] is None
    assert header_mode(db_path) == "wal"


def test_protocol_mixed_with_ioerr_is_transient_never_a_fallback(db_path: str, fp: FailpointVFS) -> None:
    rollback_file(db_path)
    fp.arm(op="sync", file="journal", code="PROTOCOL", count=1, database=db_path)
    fp.arm(op="sync", file="journal", code="IOERR_FSYNC", after=1, database=db_path)
    prof = profile(db_path, driver="apsw", vfs=fp.name, settings={"wal_guard": {"fallback": "delete"}})
    with pytest.raises(FatalError) as caught:
        corestore.open(prof)
    assert "never a reason to leave WAL" in str(caught.value)
    assert header_mode(db_path) == "rollback"


# ---------------------------------------------------------------------------------------------
# The returned mode: a database that refuses WAL
# ---------------------------------------------------------------------------------------------


def test_returned_mode_check_refuses_an_in_memory_database() -> None:
    with pytest.raises(FatalError) as caught:
        corestore.open(profile(":memory:"))
    assert "cannot use WAL journal mode" in str(caught.value)
    assert "returned 'memory'" in str(caught.value)
    assert caught.value.classification.name == "WAL_REFUSED"


def test_memory_with_the_default_profile_is_a_clear_store_error() -> None:
    for sibling in ("wal_invariants", "circuit_breaker", "health"):
        pytest.importorskip(f"corestore_plugins.{sibling}", reason="the default profile needs every shipped plugin")
    with pytest.raises(StoreError, match="cannot use WAL journal mode"):
        corestore.open(":memory:")
    store = corestore.open(":memory:", profile="minimal")  # the documented way out
    store.close()


def test_returned_mode_check_refuses_an_immutable_database(db_path: str) -> None:
    rollback_file(db_path)
    vfs = ImmutableVFS(f"wg-immutable-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(FatalError) as caught:
            corestore.open(profile(db_path, driver="apsw", vfs=vfs.name))
    finally:
        vfs.unregister()
    assert "cannot use WAL journal mode" in str(caught.value)
    assert "returned 'delete'" in str(caught.value) and "immutable" in str(caught.value)
    assert header_mode(db_path) == "rollback"


# ---------------------------------------------------------------------------------------------
# Read-only profiles: verify, never switch
# ---------------------------------------------------------------------------------------------


def test_read_only_store_on_a_wal_file_opens(db_path: str) -> None:
    wal_file(db_path)
    store = corestore.open(profile(db_path, read_only=True))
    assert details(store)["connection_mode"] == "wal"
    assert store.health().components["wal_guard"].status is HealthStatus.UP


def test_read_only_store_never_switches_a_rollback_file(db_path: str) -> None:
    rollback_file(db_path)
    with pytest.raises(FatalError) as caught:
        corestore.open(profile(db_path, read_only=True))
    assert "never switches" in str(caught.value) and "read-write profile" in str(caught.value)
    assert header_mode(db_path) == "rollback"


# ---------------------------------------------------------------------------------------------
# Pragmas read back
# ---------------------------------------------------------------------------------------------


def test_pragmas_are_verified_as_the_profile_set_them(db_path: str) -> None:
    pragmas = {"busy_timeout": 1234, "synchronous": "normal", "wal_autocheckpoint": 500, "journal_size_limit": -7}
    store = corestore.open(profile(db_path, pragmas=pragmas))
    read = {name: store.database.execute_sql(f"pragma {name}").fetchone()[0]
            for name in ("busy_timeout", "synchronous", "wal_autocheckpoint", "journal_size_limit")}
    assert read == {"busy_timeout": 1234, "synchronous": 1, "wal_autocheckpoint": 500, "journal_size_limit": -1}


def test_wal_autocheckpoint_defaults_to_1000(db_path: str, test_plugins: None) -> None:
    # Something lowered it before wal_guard looked; the profile is silent, so wal_guard sets 1000.
    prof = profile(db_path, plugins=("t_wg_tamper", "wal_guard"), pragmas={"busy_timeout": 5000},
                   settings={"t_wg_tamper": {"pragma": "wal_autocheckpoint", "value": 7}})
    store = corestore.open(prof)
    assert store.database.execute_sql("pragma wal_autocheckpoint").fetchone()[0] == DEFAULT_WAL_AUTOCHECKPOINT == 1000


@pytest.mark.parametrize("pragma, value", [
    ("synchronous", 0), ("busy_timeout", 1), ("wal_autocheckpoint", 10), ("journal_size_limit", 4096),
])
def test_a_pragma_mismatch_is_an_error_naming_the_pragma(db_path: str, test_plugins: None, pragma: str, value: int) -> None:
    prof = profile(db_path, plugins=("t_wg_tamper", "wal_guard"),
                   pragmas={**DEFAULT_PRAGMAS, "journal_size_limit": 1 << 20},
                   settings={"t_wg_tamper": {"pragma": pragma, "value": value}})
    with pytest.raises(FatalError, match=f"PRAGMA {pragma} reads back {value}") as caught:
        corestore.open(prof)
    assert caught.value.classification.name == "PRAGMA_MISMATCH"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_a_non_wal_journal_mode_with_wal_guard_is_a_config_error(db_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        corestore.open(profile(db_path, pragmas={**DEFAULT_PRAGMAS, "journal_mode": "delete"}))
    assert "journal_mode = 'delete'" in str(caught.value) and "wal_guard" in str(caught.value)


def test_a_non_wal_journal_mode_in_toml_names_the_table(tmp_path: Path) -> None:
    config = tmp_path / "corestore.toml"
    config.write_text(
        '[profiles.legacy]\nplugins = ["wal_guard"]\n[profiles.legacy.pragmas]\njournal_mode = "truncate"\n'
    )
    with pytest.raises(ConfigError) as caught:
        corestore.open(str(tmp_path / "legacy.db"), profile="legacy", config=config)
    assert "[profiles.legacy]" in str(caught.value) and "truncate" in str(caught.value)


@pytest.mark.parametrize("key, value, words", [
    ("fallback", "sometimes", "'none'"),
    ("switch_attempts", 0, ">= 1"),
    ("backoff_base_s", -1, ">= 0"),
    ("backoff_max_s", 0.0001, "backoff_max_s"),
])
def test_bad_settings_are_config_errors(db_path: str, key: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        corestore.open(profile(db_path, settings={"wal_guard": {key: value}}))
    assert key in str(caught.value) and words in str(caught.value)


def test_settings_table_in_the_docstring_and_docs_matches_the_fields() -> None:
    spec = importlib.util.spec_from_file_location("corestore_site_hooks", ROOT / "site" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (ROOT / "site" / "plugins" / "wal_guard.md").read_text()
    assert "<!-- settings: wal_guard -->" in page
    rendered = hooks.render_markers(page, where="plugins/wal_guard.md")
    doc = WalGuard.__doc__ or ""
    for field in attrs.fields(WalGuard.Settings):
        assert field.metadata.get("help"), field.name
        shown = f"``{field.default!r}``".replace("'", '"')
        assert f"``{field.name}``" in doc and shown in doc, field.name  # the docstring's table
        assert f"| `{field.name}` | {hooks.toml_type(field.type)} | `{hooks.toml_value(field.default)}` |" in rendered, field.name


# ---------------------------------------------------------------------------------------------
# Many processes, one fresh file
# ---------------------------------------------------------------------------------------------

RACE_CHILD = r"""
import json, os, sys
import corestore
from corestore.profiles import BUILTIN_PROFILES
db, meet, parties = sys.argv[1], sys.argv[2], int(sys.argv[3])
prof = corestore.Profile(path=db, plugins=("t_wg_barrier", "wal_guard"),
                         pragmas=dict(BUILTIN_PROFILES["default"]["pragmas"]),
                         settings={"t_wg_barrier": {"directory": meet, "parties": parties}})
store = corestore.open(prof, setup=lambda s: s.database.execute_sql("create table if not exists t(pid)"))
with store.transaction():
    store.database.execute_sql("insert into t values (?)", (os.getpid(),))
info = dict(store.health().components["wal_guard"].details)
store.close()
print(json.dumps(info))
"""


def test_eight_processes_open_a_fresh_file_one_switches(tmp_path: Path, db_path: str,
                                                        install_plugins: Callable[..., Path]) -> None:
    site = install_plugins(t_wg_barrier="test_wal_guard:Barrier")
    meet = tmp_path / "meet"
    meet.mkdir()
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    procs = [subprocess.Popen([sys.executable, "-c", RACE_CHILD, db_path, str(meet), "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(8)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["connection_mode"] for r in reports] == ["wal"] * 8
    assert all(r["header_mode"] == "wal" and r["fallback"] is None for r in reports)
    assert sum(r["switched_by_this_process"] for r in reports) == 1, reports
    assert header_mode(db_path) == "wal"
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("select count(distinct pid) from t").fetchone()[0] == 8
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Health and docs
# ---------------------------------------------------------------------------------------------


def test_health_reports_wal_bytes_and_a_header_changed_behind_the_store(db_path: str) -> None:
    store = corestore.open(profile(db_path))
    with store.transaction():
        store.database.execute_sql("create table t(x)")
        store.database.execute_sql("insert into t values (1)")
    component = store.health().components["wal_guard"]
    assert component.status is HealthStatus.UP
    assert component.details["wal_bytes"] == os.stat(db_path + "-wal").st_size > 0
    store.close()
    # Another program switches the file back to rollback journal while a store thinks WAL.
    store = corestore.open(profile(db_path))
    store.probe_interval_s = 3600
    assert store.health().status is HealthStatus.UP  # the core's probe is cached from here on
    store.database.close_all(shut=False)  # no connection of ours holds the file now
    other = sqlite3.connect(db_path)
    assert other.execute("pragma journal_mode=delete").fetchone()[0] == "delete"
    other.close()
    component = store.health().components["wal_guard"]
    assert component.status is HealthStatus.DOWN
    assert "another process changed the journal mode" in component.summary


def test_the_docs_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "site" / "snippets" / "wal_guard_health.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "wal_guard: UP" in out and "'header_mode': 'wal'" in out
