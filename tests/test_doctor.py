"""`corestore doctor`: a read-only diagnosis of a SQLite file, through the real CLI entry point.

Every scenario is a real file made by a real SQLite: a clean WAL and a clean DELETE database, one
held by another live process, one whose writer was SIGKILLed (leftover -wal), a hot journal, a
damaged page, a file that is not a database, a missing path, a directory. Each checks the
findings, the exit code and that no byte of the database or of its -wal changed (SQLite may
rebuild -shm) and that no file was created.
"""
from __future__ import annotations

import hashlib
import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corestore import osprobe
from corestore.doctor import Severity, diagnose
from corestore.osprobe import filesystem_type
from corestore.sqlitefile import read_wal_summary

from helpers import child_env, root_only

CLI = [sys.executable, "-m", "corestore.cli"]


# -- helpers ------------------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or child_env())


def doctor_json(path: Path | str, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli("doctor", str(path), "--json", *extra)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_check(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in data["findings"]:
        out.setdefault(f["check"], f)
    return out


def digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def fingerprint(db: Path) -> dict[str, str | None]:
    """sha256 of the database and its -wal (the bytes the doctor must never change)."""
    return {"db": digest(db), "wal": digest(Path(f"{db}-wal"))}


def listing(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def make_db(path: Path, mode: str = "wal", rows: int = 10) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def sigkill_writer(path: Path, *, mode: str = "wal", commits: int = 5, cache_size: int | None = None,
                   open_txn_rows: int = 1) -> None:
    """A child commits ``commits`` rows one per transaction, opens one more transaction, writes
    ``open_txn_rows`` rows into it and is SIGKILLed: what an OOM kill or a power cut leaves."""
    code = f"""
        import os, signal, sqlite3, sys
        c = sqlite3.connect(sys.argv[1], isolation_level=None)
        c.execute("PRAGMA journal_mode={mode}")
        c.execute("PRAGMA wal_autocheckpoint=0")
        {f'c.execute("PRAGMA cache_size={cache_size}")' if cache_size else ''}
        c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        for i in range({commits}):
            c.execute("INSERT INTO t (v) VALUES (?)", ("committed " + str(i),))
        c.execute("BEGIN IMMEDIATE")
        for i in range({open_txn_rows}):
            c.execute("INSERT INTO t (v) VALUES (?)", ("x" * 500,))
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


class Holder:
    """Another live process with the database open (optionally inside a transaction)."""

    def __init__(self, path: Path, state: str = "idle") -> None:
        code = """
            import sqlite3, sys, time
            c = sqlite3.connect(sys.argv[1], isolation_level=None)
            c.execute("SELECT count(*) FROM t").fetchone()
            if sys.argv[2] == "read":
                c.execute("BEGIN"); c.execute("SELECT count(*) FROM t").fetchone()
            elif sys.argv[2] == "write":
                c.execute("BEGIN IMMEDIATE"); c.execute("INSERT INTO t (v) VALUES ('held')")
            print("ready", flush=True)
            sys.stdin.readline()
        """
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(path), state],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


@pytest.fixture
def holder() -> Iterator[Any]:
    started: list[Holder] = []

    def start(path: Path, state: str = "idle") -> Holder:
        h = Holder(path, state)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


# -- the scenarios the issue lists ----------------------------------------------------------------
def test_healthy_wal_database(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "wal")
    before, files = fingerprint(db), listing(tmp_path)
    rc, data = doctor_json(db)
    assert rc == 0 and data["status"] == "up" and data["exit_code"] == 0
    f = by_check(data)
    assert f["header"]["severity"] == "ok" and f["header"]["details"]["journal_mode"] == "wal"
    assert f["header"]["details"]["page_size"] == 4096 and f["header"]["details"]["page_count"] >= 2
    assert f["locks"]["severity"] == "ok" and f["locks"]["details"]["locks"] == []
    assert f["quick_check"]["severity"] == "ok" and f["quick_check"]["details"]["journal_mode"] == "wal"
    # no -wal and nobody using it: read with immutable=1, so no empty -wal/-shm is left behind
    assert f["quick_check"]["details"]["opened"] == "immutable=1"
    assert {"permissions", "space", "filesystem", "quarantine", "wal", "file"} <= set(f)
    assert fingerprint(db) == before and listing(tmp_path) == files


def test_healthy_delete_database(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "delete")
    before, files = fingerprint(db), listing(tmp_path)
    rc, data = doctor_json(db)
    assert rc == 0 and data["status"] == "up"
    f = by_check(data)
    assert f["header"]["details"]["journal_mode"] == "rollback"
    assert f["quick_check"]["details"] | {"opened": "mode=ro", "journal_mode": "delete"} == f["quick_check"]["details"]
    assert "idle rollback-journal connection holds no lock" in f["locks"]["message"]
    assert fingerprint(db) == before and listing(tmp_path) == files


def test_database_held_by_another_process(tmp_path: Path, holder) -> None:
    db = make_db(tmp_path / "app.db", "wal")
    reader = holder(db, "read")
    before = fingerprint(db)
    rc, data = doctor_json(db)
    assert rc == 0, data  # a live database is not a problem; the doctor says who holds it
    f = by_check(data)
    assert f["locks"]["severity"] == "info"
    locks = f["locks"]["details"]["locks"]
    assert {"file": "db", "lock": "shared", "mode": "read", "pid": reader.pid} in locks
    assert any(lock["file"] == "shm" and lock["lock"] == "connections" for lock in locks)
    assert str(reader.pid) in f["locks"]["details"]["processes"]  # /proc: it has the file open
    assert f["locks"]["details"]["method"] == "F_OFD_GETLK"
    assert f["wal"]["severity"] == "ok" and f["wal"]["details"]["wal_size"] == 0  # a reader wrote nothing
    assert f["quick_check"]["severity"] == "ok" and f["quick_check"]["details"]["opened"] == "mode=ro"
    assert fingerprint(db) == before


def test_writer_holding_a_rollback_database_and_the_f_getlk_fallback(tmp_path: Path, holder) -> None:
    db = make_db(tmp_path / "app.db", "delete")
    writer = holder(db, "write")  # BEGIN IMMEDIATE: RESERVED on the database file
    for use_ofd in (None, False):
        diag = diagnose(db, use_ofd=use_ofd)
        locks = diag.finding("locks")
        assert locks is not None and locks.severity is Severity.INFO
        assert locks.details["method"] == ("F_GETLK" if use_ofd is False else "F_OFD_GETLK")
        assert {"file": "db", "lock": "reserved", "mode": "write", "pid": writer.pid} in locks.details["locks"]
        assert "a write transaction is open" in locks.message
        journal = diag.finding("journal")
        assert journal is not None and journal.severity is Severity.OK  # a live writer's journal, not hot
    assert diag.exit_code == 0


def test_leftover_wal_after_a_sigkilled_writer_is_reported_not_fixed(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sigkill_writer(db, commits=5)
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0 and Path(f"{db}-shm").exists()
    before, files = fingerprint(db), listing(tmp_path)
    rc, data = doctor_json(db)
    assert rc == 1 and data["status"] == "degraded"
    f = by_check(data)
    assert f["wal"]["severity"] == "warning"
    details = f["wal"]["details"]
    # CREATE TABLE + 5 single-row commits; the open transaction's rows never reached the -wal
    assert details["transactions"] == 6 and details["verified"] is True and details["valid"] is True
    assert "do not delete -wal" in f["wal"]["advice"]
    assert f["quick_check"]["severity"] == "ok"  # read through the -wal
    # reported, not "fixed": the database and -wal are byte for byte the same, nothing removed
    assert fingerprint(db) == before and listing(tmp_path) == files
    # ...and the committed rows are really there for the next read-write open
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM t WHERE v LIKE 'committed%'").fetchone()[0] == 5
    conn.close()


def test_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("these are my notes, not a database\n" * 20)
    before = digest(junk)
    rc, data = doctor_json(junk)
    assert rc == 2 and data["status"] == "down"
    f = by_check(data)
    assert f["header"]["severity"] == "error" and "not a SQLite database" in f["header"]["message"]
    assert "'these are my not'" in f["header"]["message"]
    assert "quick_check" not in f and "locks" not in f  # SQLite never opens it
    assert digest(junk) == before and listing(tmp_path) == {"notes.db"}


def test_missing_file_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "app.db"
    missing.parent.mkdir()
    rc, data = doctor_json(missing)
    assert rc == 2 and data["status"] == "down"
    f = by_check(data)
    assert f["file"]["severity"] == "error" and "never creates" in f["file"]["message"]
    assert listing(missing.parent) == set()
    proc = run_cli("doctor", str(missing))
    assert proc.returncode == 2 and "no such file" in proc.stdout
    assert listing(missing.parent) == set()


def test_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    rc, data = doctor_json(tmp_path)
    assert rc == 64 and data["exit_code"] == 64
    assert by_check(data)["file"]["message"] == "is a directory, not a database file"
    proc = run_cli("doctor", str(tmp_path))
    assert proc.returncode == 64 and "USAGE ERROR" in proc.stdout


# -- more files the doctor must read without changing ------------------------------------------------
def test_empty_database_with_a_wal_is_never_opened(tmp_path: Path) -> None:
    """SQLite deletes the -wal of a 0-byte database file when it opens it: the doctor must not."""
    source = tmp_path / "src.db"
    sigkill_writer(source, commits=3)
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    shutil.copy(f"{source}-wal", f"{db}-wal")
    before = fingerprint(db)
    rc, data = doctor_json(db)
    assert rc == 2
    f = by_check(data)
    assert f["wal"]["severity"] == "error" and "SQLite deletes that -wal" in f["wal"]["advice"]
    assert f["wal"]["details"]["transactions"] == 4
    assert f["quick_check"]["severity"] == "info" and "not run" in f["quick_check"]["message"]
    assert fingerprint(db) == before and before["wal"] is not None


def test_hot_journal_after_a_sigkilled_rollback_writer(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    # a one-page cache makes the open transaction spill into the database file: the journal is hot
    sigkill_writer(db, mode="delete", commits=2, cache_size=1, open_txn_rows=400)
    journal = Path(f"{db}-journal")
    assert journal.stat().st_size > 0
    before = fingerprint(db) | {"journal": digest(journal)}
    rc, data = doctor_json(db)
    assert rc == 1
    f = by_check(data)
    assert f["journal"]["severity"] == "warning" and "hot -journal" in f["journal"]["message"]
    assert "do not delete -journal" in f["journal"]["advice"]
    assert f["quick_check"]["severity"] == "info"  # a read-only connection cannot roll it back
    assert fingerprint(db) | {"journal": digest(journal)} == before
    conn = sqlite3.connect(db)  # the next read-write open rolls it back: the committed rows are intact
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    conn.close()


def test_damaged_page_is_found_and_integrity_option(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "delete", rows=2000)
    conn = sqlite3.connect(db)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 't'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as fh:  # overwrite the table's root page header: a real damaged b-tree
        fh.seek((root - 1) * 4096)
        fh.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff")
    before = fingerprint(db)
    for extra, check in (((), "quick_check"), (("--integrity",), "integrity_check")):
        rc, data = doctor_json(db, *extra)
        assert rc == 2, data
        f = by_check(data)
        assert f[check]["severity"] == "error"
        assert f[check]["details"].get("problems") or "refuses" in f[check]["message"]
        assert ".recover" in f[check]["advice"]
    assert fingerprint(db) == before


def test_integrity_progress_on_a_tty(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "wal", rows=3000)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([*CLI, "doctor", str(db), "--integrity"], stdout=subprocess.PIPE, stderr=slave,
                              text=True, timeout=60, env=child_env())
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert b"integrity_check:" in seen and b" s ..." in seen
    assert "integrity_check" in proc.stdout and "\r" not in proc.stdout
    # not a TTY: no progress at all
    plain = run_cli("doctor", str(db), "--integrity")
    assert plain.returncode == 0 and plain.stderr == ""


@root_only()
def test_side_file_owned_by_another_user(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sigkill_writer(db, commits=1)
    os.chown(f"{db}-shm", 65534, 65534)  # what `sudo sqlite3 app.db` leaves for the app's user
    diag = diagnose(db)
    perms = diag.finding("permissions")
    assert perms is not None and perms.severity is Severity.WARNING
    assert "-shm is owned by" in perms.message and "chown" in perms.advice


@root_only()
def test_free_space_on_a_tiny_file_system(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        db = make_db(mnt / "app.db", "wal")
        rc, data = doctor_json(db)
        f = by_check(data)
        assert f["space"]["severity"] == "error" and "SQLITE_FULL" in f["space"]["advice"]
        assert f["filesystem"]["details"]["type"] == "tmpfs" and f["filesystem"]["severity"] == "ok"
        assert rc == 2
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- file systems ----------------------------------------------------------------------------------------
MOUNTINFO = textwrap.dedent("""\
    22 27 0:21 / /proc rw,relatime - proc proc rw
    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
    60 27 0:50 / /srv/shared rw,relatime - nfs4 fileserver:/export rw,vers=4.2
    61 60 0:51 / /srv/shared/local\\040disk rw,relatime - ext4 /dev/vdb rw
    62 27 0:52 / /mnt/cloud rw,relatime - fuse.gcsfuse bucket rw
""")


def test_filesystem_type_from_mountinfo() -> None:
    """Parsing only: no NFS server or FUSE mount exists in the test environment, so the mount
    table is given as text (the one place these tests do not use the real thing)."""
    assert filesystem_type("/srv/shared/db/app.db", mountinfo=MOUNTINFO) == {
        "type": "nfs4", "mount_point": "/srv/shared", "source": "fileserver:/export"}
    assert filesystem_type("/srv/shared/local disk/app.db", mountinfo=MOUNTINFO)["type"] == "ext4"
    assert filesystem_type("/srv/sharedx/app.db", mountinfo=MOUNTINFO)["mount_point"] == "/"
    assert filesystem_type("/mnt/cloud/app.db", mountinfo=MOUNTINFO)["type"] == "fuse.gcsfuse"
    assert osprobe.is_network_filesystem("fuse.gcsfuse") and osprobe.is_network_filesystem("cifs")
    assert not osprobe.is_network_filesystem("ext4") and not osprobe.is_network_filesystem("tmpfs")
    real = filesystem_type(__file__)  # this machine's own table
    assert real is not None and real["type"]


def test_network_filesystem_warning(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "wal")
    fake = f"27 1 254:0 / / rw - ext4 /dev/vda rw\n60 27 0:50 / {tmp_path} rw - nfs4 server:/x rw\n"
    diag = diagnose(db, mountinfo=fake)
    fs = diag.finding("filesystem")
    assert fs is not None and fs.severity is Severity.WARNING
    assert "network or FUSE" in fs.message and "in WAL mode" in fs.message and "local disk" in fs.advice
    assert diag.exit_code == 1


# -- the WAL reader ------------------------------------------------------------------------------------------
def test_wal_summary_stops_at_a_torn_frame(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sigkill_writer(db, commits=4)
    wal = Path(f"{db}-wal")
    whole = read_wal_summary(str(wal))
    assert whole["transactions"] == 5 and whole["uncommitted_frames"] == 0
    data = bytearray(wal.read_bytes())
    data[-10] ^= 0xFF  # the last frame's page no longer matches its checksum: a torn write
    wal.write_bytes(bytes(data))
    torn = read_wal_summary(str(wal))
    assert torn["transactions"] == 4 and torn["valid_frames"] == whole["valid_frames"] - 1
    unverified = read_wal_summary(str(wal), verify_limit=0)  # counted by salt only
    assert unverified["verified"] is False and unverified["valid_frames"] == whole["valid_frames"]
    wal.write_bytes(b"garbage" * 10)
    assert read_wal_summary(str(wal)) | {"valid": False} == read_wal_summary(str(wal))


# -- quarantine ----------------------------------------------------------------------------------------------
def write_marker(db: Path, reason: str = "CORRUPT: SQLITE_CORRUPT: database disk image is malformed") -> Path:
    from corestore.sidecar_formats import write_marker as write

    return Path(write(db, {"format": "corestore-quarantine/1", "database": str(db), "reason": reason,
                           "since": "2026-01-01T00:00:00+00:00", "pid": 1, "evidence": {"files": {"database_bytes": 1}}}))


def test_quarantine_marker_shown_and_cleared(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "wal")
    marker = write_marker(db)
    rc, data = doctor_json(db)
    f = by_check(data)
    assert rc == 2 and f["quarantine"]["severity"] == "error"
    assert "since 2026-01-01" in f["quarantine"]["message"] and "SQLITE_CORRUPT" in f["quarantine"]["message"]
    assert f["quarantine"]["details"]["evidence"]["pid"] == 1
    assert marker.exists()
    proc = run_cli("doctor", "--clear-quarantine", str(db))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quarantine evidence" in proc.stdout and "SQLITE_CORRUPT" in proc.stdout
    assert "quarantine marker removed" in proc.stdout
    assert not marker.exists()
    again = run_cli("doctor", "--clear-quarantine", str(db), "--json")
    assert again.returncode == 0 and by_check(json.loads(again.stdout))["clear-quarantine"]["message"] == (
        "no quarantine marker to clear")


def test_clear_quarantine_refused_while_the_file_is_damaged(tmp_path: Path) -> None:
    junk = tmp_path / "app.db"
    junk.write_bytes(b"\x00" * 8192)
    marker = write_marker(junk)
    rc, data = doctor_json(junk, "--clear-quarantine")
    assert rc == 2 and by_check(data)["clear-quarantine"]["severity"] == "error"
    assert marker.exists()
    rc, data = doctor_json(junk, "--clear-quarantine", "--force")
    assert not marker.exists() and "forced" in by_check(data)["clear-quarantine"]["message"]
    assert rc == 2  # the file is still not a database


# -- the CLI contract --------------------------------------------------------------------------------------------
def test_json_schema_is_stable(tmp_path: Path) -> None:
    db = make_db(tmp_path / "app.db", "wal")
    rc, data = doctor_json(db)
    assert set(data) == {"schema", "command", "path", "status", "exit_code", "checked_at", "findings"}
    assert data["schema"] == 1 and data["command"] == "doctor" and data["path"] == str(db)
    assert data["status"] in ("up", "degraded", "down") and isinstance(data["exit_code"], int)
    for finding in data["findings"]:
        assert set(finding) == {"check", "severity", "message", "advice", "details"}
        assert finding["severity"] in ("ok", "info", "warning", "error")
        assert isinstance(finding["message"], str) and isinstance(finding["details"], dict)
    # the global --json before the command works the same
    proc = run_cli("--json", "doctor", str(db))
    assert proc.returncode == rc and json.loads(proc.stdout)["findings"][0]["check"] == "file"


def test_human_output_is_an_aligned_table(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sigkill_writer(db)
    proc = run_cli("doctor", str(db))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == f"corestore doctor: {db}"
    assert lines[1].split() == ["SEVERITY", "CHECK", "FINDING"]
    column = lines[1].index("FINDING")
    rows = [ln for ln in lines[2:-1] if ln[2:3].strip()]
    assert rows and all(len(ln) > column and ln[column - 2:column] == "  " for ln in rows)
    assert any(ln.strip().startswith("-> do not delete -wal") for ln in lines)
    assert lines[-1] == "status: DEGRADED (exit 1)"


def test_usage_errors_exit_64(tmp_path: Path) -> None:
    assert run_cli("doctor").returncode == 64
    assert run_cli("doctor", str(tmp_path / "a.db"), "--bogus").returncode == 64
    assert run_cli().returncode == 64


def test_console_script_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("corestore")
    if not script.exists():
        pytest.skip("the corestore console script is not installed next to this interpreter")
    db = make_db(tmp_path / "app.db", "wal")
    proc = subprocess.run([str(script), "doctor", str(db), "--json"], capture_output=True, text=True, timeout=60,
                          env=child_env())
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "up"



def test_immutable_read_is_repeated_when_a_writer_appears(tmp_path: Path) -> None:
    """The immutable=1 shortcut is only for a file nobody uses; a writer that shows up during
    the check (here: from the progress callback) makes the doctor check again with mode=ro."""
    db = make_db(tmp_path / "app.db", "wal", rows=2000)
    wrote: list[bool] = []

    def writer_appears(seconds: float) -> None:
        if not wrote:
            wrote.append(True)
            conn = sqlite3.connect(db)
            conn.execute("INSERT INTO t (v) VALUES ('late')")
            conn.commit()
            conn.close()

    diag = diagnose(db, progress=writer_appears)
    check = diag.finding("quick_check")
    assert wrote and check is not None and check.severity is Severity.OK
    assert check.details["opened"] == "mode=ro"
