"""quarantine: a fault policy that stops writing to a damaged database until a person looked.

Faults are real: ``SQLITE_CORRUPT`` injected through the failpoint VFS (apsw), a b-tree page
damaged by the test while no connection is open, a DELETE-mode file truncated behind SQLite's back
(through ``wal_invariants``), a hard ``SQLITE_IOERR``.
"""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import ConfigError, CorruptionError, HealthStatus, Profile
from corestore_plugins.quarantine import (
    MARKER_FORMAT,
    MARKER_SUFFIX,
    Quarantine,
    clear_marker,
    format_marker,
    marker_path,
    read_marker,
    write_marker,
)

from helpers import ROOT, child_env

PS = 4096


def _profile(path: Path | str, *, plugins: tuple[str, ...] = ("quarantine", "t_recorder"), mode: str | None = "wal",
             driver: str = "sqlite3", vfs: str | None = None, **settings: Any) -> Profile:
    pragmas: dict[str, Any] = {"busy_timeout": 5000, "synchronous": "normal"}
    if mode is not None:
        pragmas["journal_mode"] = mode
    return Profile(path=str(path), name="q", plugins=plugins, pragmas=pragmas, driver=driver, vfs=vfs,
                   settings={"quarantine": settings} if settings else {})


@pytest.fixture
def recorder(install_plugins: Any, events: Any) -> list[tuple[Any, ...]]:
    install_plugins(t_recorder="plugin_fixtures:Recorder")
    return events


@pytest.fixture
def fp() -> Iterator[Any]:
    failpoint = pytest.importorskip("corestore_contrib.failpoint")
    vfs = failpoint.FailpointVFS(f"quarantine-{os.getpid()}-{id(object())}")
    try:
        yield vfs
    finally:
        vfs.heal()
        from corestore.store import open_stores

        for store in open_stores():
            if store.profile.vfs == vfs.name:
                while not store.closed:
                    store.close()
        vfs.unregister()


def _write(store: corestore.Store, value: Any) -> Any:
    return store.run(lambda: store.database.execute_sql("INSERT INTO t VALUES (?)", (value,)))


def _count(store: corestore.Store) -> int:
    return store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0]


def _doctor(path: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``corestore doctor [flags] PATH`` in its own process (the doctor is a separate process)."""
    return subprocess.run([sys.executable, "-m", "corestore.cli", "doctor", *flags, path], capture_output=True,
                          text=True, env=child_env(), timeout=60, cwd=str(ROOT))


def _persistent(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [e for e in events if e[1] == "on_persistent_failure"]


# -- settings ----------------------------------------------------------------------------------
def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    s = Quarantine.Settings()
    assert (s.kinds, s.allow_reads, s.recheck_s) == (("CORRUPT", "INVARIANT"), True, 1.0)
    assert Quarantine.Settings(kinds=["corrupt", "fatal_io", "CORRUPT"]).kinds == ("CORRUPT", "FATAL_IO")
    assert Quarantine.Settings(kinds="full").kinds == ("FULL",)
    for bad, key in (({"kinds": ["BUSY"]}, "kinds"), ({"kinds": ["nonsense"]}, "kinds"), ({"kinds": []}, "kinds"),
                     ({"allow_reads": "yes"}, "allow_reads"), ({"recheck_s": -1}, "recheck_s")):
        with pytest.raises(ConfigError) as info:
            corestore.open(_profile(tmp_path / "bad.db", plugins=("quarantine",), **bad))
        assert key in str(info.value)


def test_marker_functions_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert marker_path(db) == str(db) + MARKER_SUFFIX
    # a path is always the database, even one ending in the suffix: never returned unchanged (issue 15)
    assert marker_path(str(db) + MARKER_SUFFIX) == str(db) + MARKER_SUFFIX + MARKER_SUFFIX
    link = tmp_path / "link.db"
    link.symlink_to(db)
    assert marker_path(link) == marker_path(db)  # resolved like corestore.open resolves paths
    assert read_marker(db) is None and clear_marker(db) is None
    write_marker(db, {"reason": "r", "since": "t", "evidence": {"x": 1}})
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    record = read_marker(db)
    assert record is not None and record["reason"] == "r" and record["marker"] == marker_path(db)
    assert clear_marker(db) == record and read_marker(db) is None
    Path(marker_path(db)).write_text("{not json")
    broken = read_marker(db)
    assert broken is not None and broken["unreadable"] and broken["reason"] == "unreadable quarantine marker"
    assert "marker unreadable" in format_marker(broken)


# -- entering quarantine: a corruption fault -----------------------------------------------------------
def test_hook_on_fatal_corrupt_fault_quarantines_and_survives_reopen(tmp_path: Path, recorder: Any, fp: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "corrupt.db")
    # confirm_s=0: the failpoint's SQLITE_CORRUPT is the corruption signal itself (the file stays
    # intact, so a confirming quick_check would rightly spare it: see test_transient_corrupt_report_on_an_intact_file_is_spared)
    profile = _profile(path, driver="apsw", vfs=fp.name, confirm_s=0)
    store = corestore.open(profile)
    store.database.execute_sql("CREATE TABLE t (x)")
    _write(store, "before")
    assert store.health().status is HealthStatus.UP
    store.invalidate()  # the next statement reads the main file again: the failpoint answers CORRUPT
    fp.arm(op="read", file="main", code="SQLITE_CORRUPT", count=1)
    with caplog.at_level("WARNING", logger="corestore_plugins.quarantine"):
        with pytest.raises(CorruptionError) as first:
            _write(store, "hits the fault")
    assert first.value.classification.name == "SQLITE_CORRUPT"  # the fault itself, as SQLite said it
    assert len([r for r in caplog.records if "QUARANTINED" in r.getMessage()]) == 1
    plugin = store.plugin("quarantine")
    assert plugin.quarantined
    # Writes are refused, naming the reason and the time; reads still run.
    with pytest.raises(CorruptionError) as refused:
        _write(store, "refused")
    text = str(refused.value)
    record = plugin.record
    assert record["since"] in text and "SQLITE_CORRUPT" in text and "--clear-quarantine" in text
    assert refused.value.classification.name == "QUARANTINED" and refused.value.committed is False
    with pytest.raises(CorruptionError):
        with store.transaction():
            pass
    with pytest.raises(CorruptionError):
        store.checkpoint()
    assert _count(store) == 1
    with store.read():
        assert _count(store) == 1
    store.backup(str(tmp_path / "copy.db"))  # a read that keeps the evidence: allowed
    # Health DOWN, on_persistent_failure once (not again for the refused writes).
    report = store.health()
    assert report.status is HealthStatus.DOWN and report.components["quarantine"].status is HealthStatus.DOWN
    assert _persistent(recorder) == [("t_recorder", "on_persistent_failure", "DOWN")]
    # The marker holds the evidence.
    marker = json.loads(Path(path + MARKER_SUFFIX).read_text())
    assert marker["format"] == MARKER_FORMAT and marker["database"] == os.path.realpath(path)
    assert marker["classification"]["kind"] == "CORRUPT" and marker["classification"]["code"] == 11
    assert marker["operation"] == {"kind": "write", "name": None, "attempt": 1}
    assert marker["evidence"]["header"]["journal_mode"] == "wal" and marker["evidence"]["files"]["database_bytes"] > 0
    # Across a restart: still quarantined, without firing on_persistent_failure again.
    store.close()
    store = corestore.open(profile)
    assert store.plugin("quarantine").quarantined
    with pytest.raises(CorruptionError, match="quarantined since"):
        _write(store, "after restart")
    assert _count(store) == 1
    assert len(_persistent(recorder)) == 1
    store.close()
    # Only the doctor lifts it, after showing the evidence (the file itself is sound: the
    # corruption was the failpoint's, so the doctor's own checks pass).
    doctor = _doctor(path, "--clear-quarantine")
    shown = doctor.stdout + doctor.stderr
    assert "quarantine evidence" in doctor.stdout and record["reason"][:40] in doctor.stdout, shown
    assert read_marker(path) is None
    store = corestore.open(profile)
    _write(store, "after clear")
    assert _count(store) == 2 and store.health().status is HealthStatus.UP


def test_damaged_page_quarantines(tmp_path: Path, recorder: Any) -> None:
    path = str(tmp_path / "damaged.db")
    profile = _profile(path, mode="delete")
    store = corestore.open(profile)
    store.database.execute_sql("CREATE TABLE t (x)")  # root page 2
    with store.transaction():
        for _ in range(50):
            store.database.execute_sql("INSERT INTO t VALUES (?)", ("x" * 300,))
    store.close()
    # No connection is open in this process now, so writing the file cannot drop SQLite's locks.
    with open(path, "r+b") as fh:
        fh.seek(PS)  # page 2: the root of t
        fh.write(b"\xff" * 64)
    store = corestore.open(profile)  # opens fine: page 1 is intact
    with pytest.raises(CorruptionError):
        _count(store)  # a read finds the damage
    plugin = store.plugin("quarantine")
    assert plugin.quarantined and plugin.record["operation"]["kind"] == "read"
    assert plugin.record["quick_check"] != "ok"  # the confirm step found the damage too
    with pytest.raises(CorruptionError, match="quarantined since"):
        _write(store, "refused")
    assert len(_persistent(recorder)) == 1
    assert read_marker(path) is not None
    store.close()
    # The doctor shows the evidence but keeps the marker while the file is damaged ...
    doctor = _doctor(path, "--clear-quarantine")
    assert "quarantine evidence" in doctor.stdout and doctor.returncode != 0, doctor.stdout + doctor.stderr
    assert read_marker(path) is not None
    store = corestore.open(profile)
    with pytest.raises(CorruptionError, match="quarantined since"):
        _write(store, "still refused")
    store.close()
    # ... unless told to (after the data was recovered elsewhere).
    doctor = _doctor(path, "--clear-quarantine", "--force")
    assert read_marker(path) is None, doctor.stdout + doctor.stderr


def test_invariant_violation_quarantines_with_its_evidence(tmp_path: Path) -> None:
    path = str(tmp_path / "torn.db")
    profile = Profile(path=path, name="q", plugins=("wal_invariants", "quarantine"),
                      pragmas={"journal_mode": "delete", "synchronous": "normal"})
    store = corestore.open(profile)
    store.database.execute_sql("CREATE TABLE t (x)")
    store.database.execute_sql("CREATE TABLE big (b)")
    with store.transaction():
        for _ in range(40):
            store.database.execute_sql("INSERT INTO big VALUES (zeroblob(1000))")

    def unit() -> None:
        store.database.execute_sql("INSERT INTO t VALUES ('committed')")
        os.truncate(path, 2 * PS)  # behind SQLite's back; opens no descriptor

    store.run(unit)  # reported by wal_invariants (not raised): the unit returns
    plugin = store.plugin("quarantine")
    assert plugin.quarantined
    record = read_marker(path)
    assert record is not None and record["classification"]["kind"] == "INVARIANT"
    assert record["classification"]["source"] == "wal_invariants"
    [violation] = record["evidence"]["violations"]
    assert violation["check"] == "wal_invariants.file_length"
    assert violation["evidence"]["file_bytes"] == 2 * PS
    assert "violation wal_invariants.file_length" in format_marker(record)
    with pytest.raises(CorruptionError, match="INVARIANT"):
        _write(store, "refused")
    report = store.health()
    assert report.components["quarantine"].status is HealthStatus.DOWN
    assert report.components["wal_invariants"].status is HealthStatus.DOWN


def test_hard_io_errors_quarantine_only_when_configured(tmp_path: Path, fp: Any) -> None:
    for kinds, expected in ((None, False), (["CORRUPT", "INVARIANT", "FATAL_IO"], True)):
        path = str(tmp_path / f"io-{expected}.db")
        settings = {"kinds": kinds} if kinds else {}
        store = corestore.open(_profile(path, plugins=("quarantine",), driver="apsw", vfs=fp.name, **settings))
        store.database.execute_sql("CREATE TABLE t (x)")
        with fp.armed(op="write", file="wal", code="SQLITE_IOERR_WRITE"):
            with pytest.raises(corestore.FatalError):
                _write(store, 1)
        assert store.plugin("quarantine").quarantined is expected
        assert (read_marker(path) is not None) is expected
        store.close()


# -- not a quarantine ----------------------------------------------------------------------------
def test_notadb_at_first_open_is_not_a_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    for mode in ("wal", None):
        with pytest.raises(CorruptionError, match="not a SQLite database"):
            corestore.open(_profile(path, plugins=("quarantine",), mode=mode))
    assert not os.path.exists(str(path) + MARKER_SUFFIX)
    assert path.read_text().startswith("these are my notes")  # untouched


def test_notadb_before_any_successful_operation_is_not_a_quarantine(tmp_path: Path, fp: Any) -> None:
    # The store opened (the core read the header), then the very first operation meets NOTADB:
    # nothing ever read this file as a database, so it is a wrong file, not a damaged one.
    path = str(tmp_path / "first.db")
    _sqlite_setup(path)
    store = corestore.open(_profile(path, plugins=("quarantine",), driver="apsw", vfs=fp.name))
    store.invalidate()
    fp.arm(op="read", file="main", code="SQLITE_NOTADB", count=1)
    with pytest.raises(CorruptionError) as info:
        _write(store, 1)
    assert info.value.classification.code == 26
    assert not store.plugin("quarantine").quarantined and read_marker(path) is None
    _write(store, 2)
    assert _count(store) == 1


def test_notadb_after_successful_operations_is_a_quarantine(tmp_path: Path, fp: Any) -> None:
    path = str(tmp_path / "overwritten.db")
    store = corestore.open(_profile(path, plugins=("quarantine",), driver="apsw", vfs=fp.name, confirm_s=0))
    store.database.execute_sql("CREATE TABLE t (x)")
    _write(store, 1)
    store.invalidate()
    fp.arm(op="read", file="main", code="SQLITE_NOTADB", count=1)
    with pytest.raises(CorruptionError):
        _write(store, 2)
    assert store.plugin("quarantine").quarantined


def test_transient_corrupt_report_on_an_intact_file_is_spared(tmp_path: Path, fp: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """SQLite reports a one-off read error mid-statement as SQLITE_CORRUPT (measured with the
    preload shim: tests/test_failpoint_preload.py). The default confirm step runs quick_check on
    the intact file and does not quarantine it; writes go on."""
    path = str(tmp_path / "intact.db")
    store = corestore.open(_profile(path, plugins=("quarantine",), driver="apsw", vfs=fp.name))
    store.database.execute_sql("CREATE TABLE t (x)")
    _write(store, 1)
    store.invalidate()
    fp.arm(op="read", file="main", code="SQLITE_CORRUPT", count=1)
    with caplog.at_level("WARNING", logger="corestore_plugins.quarantine"):
        with pytest.raises(CorruptionError):
            _write(store, 2)
    plugin = store.plugin("quarantine")
    assert not plugin.quarantined and plugin.stats()["spared"] == 1
    assert "quick_check finds the file intact: not quarantined" in caplog.text
    assert not os.path.exists(path + ".corestore-quarantine")
    _write(store, 3)
    assert store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 2
    store.close()


# -- while quarantined ------------------------------------------------------------------------------
def test_hook_before_operation_refuses_reads_when_not_allowed(tmp_path: Path) -> None:
    path = str(tmp_path / "noreads.db")
    _sqlite_setup(path)
    write_marker(path, {"reason": "CORRUPT: test", "since": "2024-01-01T00:00:00+00:00"})
    store = corestore.open(_profile(path, plugins=("quarantine",), allow_reads=False))
    with pytest.raises(CorruptionError, match="reads and writes are refused"):
        _count(store)
    with pytest.raises(CorruptionError):
        store.backup(str(tmp_path / "copy.db"))
    assert store.plugin("quarantine").stats()["refused"] == 2


def _sqlite_setup(path: str) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (x)")
    conn.close()


def test_hook_on_persistent_failure_when_another_process_quarantines(tmp_path: Path, recorder: Any) -> None:
    path = str(tmp_path / "shared.db")
    store = corestore.open(_profile(path, recheck_s=0))
    store.database.execute_sql("CREATE TABLE t (x)")
    _write(store, 1)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from corestore_plugins.quarantine import write_marker
        write_marker(sys.argv[1], {"reason": "CORRUPT: seen by the other process", "since": "2024-01-01T00:00:00+00:00",
                                   "pid": 4242, "host": "elsewhere"})
    """), path], capture_output=True, text=True, env=child_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(CorruptionError, match="seen by the other process"):
        _write(store, 2)
    assert _persistent(recorder) == [("t_recorder", "on_persistent_failure", "DOWN")]
    assert store.plugin("quarantine").stats()["episodes"] == 1


def test_removing_the_marker_lifts_a_running_quarantine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "lift.db")
    _sqlite_setup(path)
    write_marker(path, {"reason": "CORRUPT: test", "since": "2024-01-01T00:00:00+00:00"})
    store = corestore.open(_profile(path, plugins=("quarantine",), recheck_s=0))
    with pytest.raises(CorruptionError):
        _write(store, 1)
    clear_marker(path)
    with caplog.at_level("WARNING", logger="corestore_plugins.quarantine"):
        _write(store, 2)
    assert [r for r in caplog.records if "quarantine lifted" in r.getMessage()]
    assert not store.plugin("quarantine").quarantined and _count(store) == 1


def test_an_unreadable_marker_still_quarantines(tmp_path: Path) -> None:
    path = str(tmp_path / "garbled.db")
    _sqlite_setup(path)
    Path(path + MARKER_SUFFIX).write_text("\x00\x01 garbled")
    store = corestore.open(_profile(path, plugins=("quarantine",)))
    with pytest.raises(CorruptionError, match="unreadable quarantine marker"):
        _write(store, 1)


def test_memory_store_quarantines_without_a_marker(tmp_path: Path) -> None:
    store = corestore.open(Profile(path=":memory:", name="m", plugins=("quarantine",),
                                   settings={"quarantine": {"confirm_s": 0}}))
    store.database.execute_sql("CREATE TABLE t (x)")
    plugin = store.plugin("quarantine")
    c = corestore.Classification(kind=corestore.ErrorKind.CORRUPT, name="SQLITE_CORRUPT", code=11)
    # A real corruption of a memory database cannot be produced from outside: call the hook
    # implementation with the classification the core would pass.
    plugin.on_fatal(store, CorruptionError("damaged", classification=c), c, corestore.Operation(kind="write"))
    assert plugin.quarantined and plugin.record["marker"] is None
    with pytest.raises(CorruptionError):
        _write(store, 1)


# -- the doctor ------------------------------------------------------------------------------------------
def test_doctor_clear_quarantine_shows_the_evidence_and_removes_the_marker(tmp_path: Path) -> None:
    path = str(tmp_path / "doctor.db")
    _sqlite_setup(path)
    write_marker(path, {"format": MARKER_FORMAT, "reason": "CORRUPT: SQLITE_CORRUPT: shown by the doctor",
                        "since": "2024-01-01T00:00:00+00:00", "database": path})
    proc = _doctor(path, "--clear-quarantine")
    assert "shown by the doctor" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_marker(path) is None
    store = corestore.open(_profile(path, plugins=("quarantine",)))
    _write(store, 1)
    assert _count(store) == 1


def test_the_docs_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "site" / "snippets" / "quarantine_handle.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "quarantine: not quarantined" in out and "no quarantine marker" in out, out


def test_composes_with_the_default_profile_without_opening_the_breaker(tmp_path: Path, fp: Any) -> None:
    import attrs

    from corestore.profiles import resolve_profile

    path = str(tmp_path / "composed.db")
    base = resolve_profile("default", config=None, path=path)
    profile = attrs.evolve(base, plugins=(*base.plugins, "quarantine"), driver="apsw", vfs=fp.name,
                           pragmas={**base.pragmas, "synchronous": "normal"}, settings={"quarantine": {"confirm_s": 0}})
    store = corestore.open(profile)
    store.database.execute_sql("CREATE TABLE t (x)")
    _write(store, 1)
    store.invalidate()
    fp.arm(op="read", file="main", code="SQLITE_CORRUPT", count=1)
    with pytest.raises(CorruptionError):
        _write(store, 2)
    for _ in range(6):  # refusals are not faults: the breaker (3 faults) must not open on them
        with pytest.raises(CorruptionError) as info:
            _write(store, 3)
        assert info.value.classification.name == "QUARANTINED"
    assert _count(store) == 1
    report = store.health()
    assert report.components["quarantine"].status is HealthStatus.DOWN
    assert report.components["circuit_breaker"].status is not HealthStatus.DOWN
