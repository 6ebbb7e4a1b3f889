"""Verified backups (issue 20): store.backup(dest) and `corestore backup SRC DEST`."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import corestore
from corestore.backup import BackupRefused

from helpers import child_env

ROWS = 300


def _fill(store: corestore.Store, rows: int = ROWS) -> None:
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    with store.transaction():
        for _ in range(rows):
            store.database.execute_sql("INSERT INTO item (body) VALUES (randomblob(2000))")


def _leftovers(directory: Path, name: str) -> list[str]:
    """Files a backup to ``name`` may leave: the copy itself and its temporaries."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(name) or p.name.startswith(f".{name}"))


def test_good_backup_opens_and_passes_integrity_check(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "app.db"))
    _fill(store)
    seen: list[tuple[int, int]] = []
    dest = store.backup(tmp_path / "copy.db", verify="integrity_check", progress=lambda c, t: seen.append((c, t)),
                        step_pages=16)
    store.close()
    assert dest == str(tmp_path / "copy.db")
    assert len(seen) > 1 and seen[-1][0] == seen[-1][1] > 0  # pages copied / total, step by step
    assert _leftovers(tmp_path, "copy.db") == ["copy.db"]  # no temporary left beside it
    conn = sqlite3.connect(dest)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM item").fetchone()[0] == ROWS
    finally:
        conn.close()


def test_backup_with_apsw_driver(tmp_path: Path) -> None:
    pytest.importorskip("apsw")
    store = corestore.open(corestore.Profile(path=str(tmp_path / "a.db"), driver="apsw",
                                             pragmas={"journal_mode": "wal"}))
    _fill(store, 50)
    seen: list[tuple[int, int]] = []
    dest = store.backup(tmp_path / "b.db", progress=lambda c, t: seen.append((c, t)))
    store.close()
    assert seen[-1][0] == seen[-1][1] > 0
    conn = sqlite3.connect(dest)
    try:
        assert conn.execute("SELECT count(*) FROM item").fetchone()[0] == 50
    finally:
        conn.close()


@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
def test_stale_journal_beside_dest_is_refused(tmp_path: Path, suffix: str) -> None:
    store = corestore.open(str(tmp_path / "app.db"))
    _fill(store, 10)
    stale = tmp_path / f"copy.db{suffix}"
    stale.write_bytes(b"stale journal of an older copy")
    with pytest.raises(BackupRefused, match="stale") as info:
        store.backup(tmp_path / "copy.db")
    assert info.value.classification.name == "BACKUP_STALE_JOURNAL"
    assert not (tmp_path / "copy.db").exists()
    assert stale.read_bytes() == b"stale journal of an older copy"  # never touched
    store.close()


def test_backup_refuses_the_database_itself_and_an_open_destination(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "app.db"))
    _fill(store, 10)
    with pytest.raises(BackupRefused, match="itself"):
        store.backup(tmp_path / "app.db")
    other = corestore.open(str(tmp_path / "other.db"))
    with pytest.raises(BackupRefused, match="open in this process"):
        store.backup(tmp_path / "other.db")
    other.close()
    # another process holds a read transaction on the destination: refused, the file unchanged
    target = tmp_path / "held.db"
    sqlite3.connect(target).execute("CREATE TABLE x (a)").connection.close()
    before = target.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('begin'); c.execute('select * from x').fetchall(); print('held', flush=True); sys.stdin.readline()",
         str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(BackupRefused, match="is open"):
            store.backup(target)
    finally:
        proc.communicate("\n", timeout=10)
    assert target.read_bytes() == before
    store.close()


def _backup_under_fault(path: str, dest: str, op: str) -> dict:
    """Runs in a child under the preload shim: fail ``op`` on the backup's temporary file."""
    import corestore
    from corestore_contrib.failpoint import PreloadFailpoint

    store = corestore.open(path)
    store.database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
    with store.transaction():
        for _ in range(200):
            store.database.execute_sql("INSERT INTO item (body) VALUES (randomblob(2000))")
    directory, name = os.path.split(dest)
    disk = PreloadFailpoint.from_env()
    disk.arm(op=op, file=os.path.join(directory, f".{name}.*.tmp"), errno="EIO")
    try:
        store.backup(dest)
    except corestore.StoreError as err:
        c = err.classification
        return {"error": type(err).__name__, "kind": c.kind.name, "name": c.name, "committed": err.committed,
                "faults": store.stats()["faults"]}
    finally:
        disk.heal()
        store.close()
    return {"error": None}


@pytest.mark.parametrize("op", ["write", "sync"])
def test_io_fault_on_the_destination_leaves_no_valid_looking_file(preload_failpoint, tmp_path: Path, op: str) -> None:
    dest = tmp_path / "copy.db"
    child = preload_failpoint.run(_backup_under_fault, args=[str(tmp_path / "app.db"), str(dest), op])
    result = child.check().result
    assert result["error"] == "FatalError" and result["kind"] == "FATAL_IO", result
    assert result["committed"] is False
    assert result["faults"] == 0  # a destination fault is not the source database's fault (no on_fatal)
    assert _leftovers(tmp_path, "copy.db") == []  # nothing at dest, no temporary beside it


def test_backup_operation_kind_is_backup(tmp_path: Path, install_plugins) -> None:
    import plugin_fixtures

    install_plugins(t_recorder="plugin_fixtures:Recorder")
    store = corestore.open(str(tmp_path / "app.db"), enable=["t_recorder"])
    _fill(store, 5)
    plugin_fixtures.EVENTS.clear()
    store.backup(tmp_path / "copy.db")
    ops = [e[2:] for e in plugin_fixtures.EVENTS if e[1] == "before_operation"]
    store.close()
    assert ops == [("backup", "backup")]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corestore.cli", *args], capture_output=True, text=True,
                          timeout=60, env=child_env())


def test_cli_backup_json_and_refusal(tmp_path: Path) -> None:
    store = corestore.open(str(tmp_path / "app.db"))
    _fill(store, 20)
    store.close()
    done = _cli("--json", "backup", str(tmp_path / "app.db"), str(tmp_path / "copy.db"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["dest"] == str(tmp_path / "copy.db") and data["verified"] == "quick_check" and data["bytes"] > 0
    conn = sqlite3.connect(tmp_path / "copy.db")
    assert conn.execute("SELECT count(*) FROM item").fetchone()[0] == 20
    conn.close()
    (tmp_path / "other.db-wal").write_bytes(b"x")
    refused = _cli("--json", "backup", str(tmp_path / "app.db"), str(tmp_path / "other.db"))
    assert refused.returncode == 64 and "stale" in json.loads(refused.stdout)["error"]
    assert not (tmp_path / "other.db").exists()
