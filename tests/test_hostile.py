"""Hostile environments (issue 15, items 3, 4, 7 and 8): sidecar files a neighbour planted or can
reach, the init lock, a full disk at close() and hostile configuration.

A second real user is a forked child that drops to ``nobody`` (it only needs the standard library
already loaded: the interpreter under /root is not readable by nobody, so it cannot exec one).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import BusyError, ConfigError, FatalError, HealthStatus, PluginError, Profile, UnsavedDataError
from corestore.initlock import lock_path_for
from corestore.profiles import load_config
from corestore.settings import number, one_of, optional
from corestore.sidecar import SQLITE_HEADER, SidecarError, sidecar_path, unlink_sidecar
from corestore_plugins.quarantine import MARKER_SUFFIX, clear_marker, marker_path, read_marker, write_marker

from helpers import child_env, root_only, run_python

NOBODY = 65534
CLI = [sys.executable, "-m", "corestore.cli"]
WAL = {"busy_timeout": 2000, "journal_mode": "wal", "synchronous": "normal"}


# -- helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (tmp_path lives under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="corestore-hostile-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Nobody:
    """A forked child running ``fn(ready, release)`` as ``nobody``: it writes one JSON line to
    ``ready`` (report it with :meth:`report`), and may block until the parent calls :meth:`release`
    (reading from ``release``). Killed on :meth:`stop`; every wait has a deadline."""

    def __init__(self, fn: Callable[[int, int], Any]) -> None:
        self._ready_r, ready_w = os.pipe()
        release_r, self._release_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.close(self._ready_r)
                os.close(self._release_w)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                fn(ready_w, release_r)
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                os.write(ready_w, (json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n").encode())
                code = 1
            os._exit(code)
        os.close(ready_w)
        os.close(release_r)

    def report(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ready_r], [], [], left)[0]:
                raise AssertionError("the nobody child did not report in time")
            chunk = os.read(self._ready_r, 4096)
            if not chunk:
                raise AssertionError(f"the nobody child exited without a report (got {buf!r})")
            buf += chunk
        return json.loads(buf)

    def release(self) -> None:
        os.write(self._release_w, b"x")

    def stop(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("the nobody child did not exit in time")


def say(fd: int, **data: Any) -> None:
    os.write(fd, (json.dumps(data) + "\n").encode())


def wait_release(fd: int, timeout: float = 30.0) -> None:
    select.select([fd], [], [], timeout)


def make_db(path: Path, mode: int = 0o644) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    os.chmod(path, mode)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=child_env())


# == item 3: the doctor never deletes a database =========================================================
def test_marker_path_is_never_the_database_and_clear_quarantine_keeps_it(tmp_path: Path) -> None:
    db = tmp_path / ("x" + MARKER_SUFFIX)  # a database whose name ends like a marker
    make_db(db)
    assert marker_path(db) != str(db) and marker_path(db) == str(db) + MARKER_SUFFIX
    proc = run_cli("doctor", str(db), "--clear-quarantine")
    assert "no quarantine marker to clear" in proc.stdout, proc.stdout + proc.stderr
    assert db.read_bytes()[:16] == SQLITE_HEADER
    assert sqlite3.connect(db).execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_database_in_the_marker_place_is_never_removed(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    make_db(db)
    other = Path(marker_path(db))
    make_db(other)  # someone copied a database where the marker goes
    with pytest.raises(SidecarError, match="SQLite"):
        clear_marker(db)
    with pytest.raises(SidecarError, match="database itself"):
        unlink_sidecar(str(db), str(db))
    proc = run_cli("doctor", str(db), "--clear-quarantine", "--force")
    assert proc.returncode != 0 and "refused" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert other.read_bytes()[:16] == SQLITE_HEADER and db.read_bytes()[:16] == SQLITE_HEADER


def test_a_non_utf8_marker_is_reported_not_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    make_db(db)
    Path(marker_path(db)).write_bytes(b'{"reason": "\xff\xfe broken"}')
    record = read_marker(db)
    assert record is not None and record["unreadable"] and "not UTF-8" in record["error"]
    proc = run_cli("doctor", str(db))
    assert "Traceback" not in proc.stderr and "UnicodeDecodeError" not in proc.stderr, proc.stderr
    assert "unreadable quarantine marker" in proc.stdout and proc.returncode != 0
    proc = run_cli("doctor", str(db), "--clear-quarantine")
    assert "quarantine marker removed" in proc.stdout, proc.stdout + proc.stderr
    assert not os.path.exists(marker_path(db)) and db.read_bytes()[:16] == SQLITE_HEADER
    # the core's reader (corestore.sidecar_formats: the one the plugin and the doctor share) reports it too
    Path(marker_path(db)).write_bytes(b"\xff\xfe")
    from corestore import sidecar_formats

    core = sidecar_formats.read_marker(str(db))
    assert core is not None and core["unreadable"] and "UnicodeDecodeError" in core["error"]
    assert sidecar_formats.clear_marker(str(db)) == core and not os.path.exists(marker_path(db))


# == item 4: sidecars ============================================================================================
@root_only()
def test_init_lock_is_private_and_flock_by_another_user_cannot_stall_open(shared_dir: Path) -> None:
    db = shared_dir / "app.db"
    store = corestore.open(Profile(path=str(db), pragmas=WAL, init_timeout_s=5), setup=lambda s: None)
    store.close()
    os.chmod(db, 0o644)
    lock = lock_path_for(str(db))
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600  # readable and writable only by the database's writers

    def try_open(ready: int, release: int) -> None:
        try:
            os.open(lock, os.O_RDONLY)
        except OSError as err:
            say(ready, errno=err.errno)
            return
        say(ready, errno=0)

    child = Nobody(try_open)
    assert child.report() == {"errno": errno.EACCES}
    child.stop()

    # a lock file left 0644 (as 0.2 created it): another user holds flock on a read-only descriptor
    os.chmod(lock, 0o644)

    def hold_flock(ready: int, release: int) -> None:
        fd = os.open(lock, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        say(ready, held=True)
        wait_release(release)

    child = Nobody(hold_flock)
    try:
        assert child.report() == {"held": True}
        t0 = time.monotonic()
        ran = []
        store = corestore.open(Profile(path=str(db), name="again", pragmas=WAL, init_timeout_s=5), setup=ran.append)
        elapsed = time.monotonic() - t0
        store.close()
        assert ran and elapsed < 3, elapsed  # the flock does not exclude the write lock
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600  # tightened on use
    finally:
        child.release()
        child.stop()


def _hold_init_lock_in_child(db: str) -> subprocess.Popen[str]:
    code = """
        import sys, corestore
        from corestore.initlock import InitLock
        with InitLock.for_path(sys.argv[1]).hold(10):
            print("held", flush=True)
            sys.stdin.read()
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), db], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_init_lock_wait_is_bounded_and_names_the_holder(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    corestore.open(Profile(path=db, pragmas=WAL)).close()
    holder = _hold_init_lock_in_child(db)
    try:
        t0 = time.monotonic()
        with pytest.raises(BusyError) as info:  # bounded by init_timeout_s itself
            corestore.open(Profile(path=db, name="waiter", pragmas=WAL, init_timeout_s=0.5), setup=lambda s: None)
        elapsed = time.monotonic() - t0
    finally:
        holder.communicate("", timeout=20)
    assert 0.4 < elapsed < 3, elapsed
    message = str(info.value)
    assert f"PID {holder.pid}" in message and "init_timeout_s = 0.5" in message and lock_path_for(db) in message
    assert info.value.classification is not None and info.value.classification.name == "INIT_LOCK_TIMEOUT"
    store = corestore.open(Profile(path=db, name="after", pragmas=WAL, init_timeout_s=5), setup=lambda s: None)
    store.close()  # released when the holder ends


def test_init_lock_names_a_classic_fcntl_holder(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    corestore.open(Profile(path=db, pragmas=WAL)).close()
    code = """
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
    """
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), lock_path_for(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match=f"held by PID {holder.pid}"):
            with corestore.open(Profile(path=db, pragmas=WAL)) as s:
                with s.init_lock(timeout_s=0.3):
                    pass
    finally:
        holder.communicate("", timeout=20)


def test_init_lock_survives_other_closes_of_the_lock_file(tmp_path: Path) -> None:
    """OFD locks belong to the open file description: closing another descriptor of the lock
    file (classic POSIX locks would be dropped) keeps the lock."""
    db = str(tmp_path / "a.db")
    store = corestore.open(Profile(path=db, pragmas=WAL))
    probe = """
        import fcntl, os, struct, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        try:
            fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
            print("free")
        except OSError:
            print("locked")
    """
    try:
        with store.init_lock():
            os.close(os.open(lock_path_for(db), os.O_RDWR))  # another descriptor of the file, closed
            out = subprocess.run([sys.executable, "-c", textwrap.dedent(probe), lock_path_for(db)],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            assert out == "locked"
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(probe), lock_path_for(db)],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        assert out == "free"
    finally:
        store.close()


def test_a_long_database_name_keeps_cross_process_init_exclusion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = str(tmp_path / ("d" * 242 + ".db"))  # 245 characters: "<db>.corestore-lock" is too long a name
    assert len(os.path.basename(db)) == 245
    lock = lock_path_for(db)
    assert len(os.path.basename(lock)) <= 255 and lock.endswith(".corestore-lock") and lock != db
    assert lock == sidecar_path(db, ".corestore-lock")  # the same name in every process
    with caplog.at_level(logging.WARNING, logger="corestore"):
        corestore.open(Profile(path=db, pragmas=WAL), setup=lambda s: None).close()
    assert os.path.exists(lock)
    assert not [r for r in caplog.records if "init lock" in r.getMessage()]
    holder = _hold_init_lock_in_child(db)
    try:
        with pytest.raises(BusyError, match=f"PID {holder.pid}"):
            corestore.open(Profile(path=db, name="w", pragmas=WAL, init_timeout_s=0.3), setup=lambda s: None)
    finally:
        holder.communicate("", timeout=20)


@root_only()
def test_planted_symlinks_and_foreign_sidecars_are_refused(shared_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(shared_dir, 0o1777)  # like /tmp: another user may create files here
    db = shared_dir / "app.db"
    make_db(db, 0o600)
    target = shared_dir / "elsewhere"
    victim = shared_dir / "victim.jsonl"

    def plant(ready: int, release: int) -> None:
        os.symlink(str(target), str(db) + ".corestore-lock")
        fd = os.open(str(victim), os.O_WRONLY | os.O_CREAT, 0o666)
        os.close(fd)
        os.symlink(str(victim), str(db) + ".corestore-deadletter.jsonl")
        say(ready, planted=True)

    child = Nobody(plant)
    assert child.report() == {"planted": True}
    child.stop()
    with pytest.raises(FatalError, match="is a symbolic link"):
        corestore.open(Profile(path=str(db), pragmas=WAL), setup=lambda s: None)
    assert not target.exists()
    os.unlink(str(db) + ".corestore-lock")  # the operator removes the planted link

    profile = Profile(path=str(db), plugins=("accounting",), pragmas=WAL,
                      settings={"accounting": {"max_latency_ms": 1, "drain_timeout_s": 1}})
    store = corestore.open(profile, setup=lambda s: s.database.execute_sql("CREATE TABLE u (n INTEGER NOT NULL)"))
    acc = store.plugin("accounting")
    with caplog.at_level(logging.ERROR):
        assert acc.submit("u", {"n": None})  # refused by NOT NULL: a dead letter
        assert acc.flush(10) is False  # it could not reach a file
    assert victim.read_bytes() == b""  # never written through the link
    assert "symbolic link" in caplog.text and [d.row for d in acc.unsaved()] == [{"n": None}]
    with pytest.raises(UnsavedDataError):
        store.close()

    # a regular file planted by another user is refused too (owner check)
    os.unlink(str(db) + ".corestore-deadletter.jsonl")

    def plant_file(ready: int, release: int) -> None:
        fd = os.open(str(db) + ".corestore-deadletter.jsonl", os.O_WRONLY | os.O_CREAT, 0o666)
        os.close(fd)
        say(ready, planted=True)

    child = Nobody(plant_file)
    assert child.report() == {"planted": True}
    child.stop()
    store = corestore.open(Profile(path=str(db), name="two", plugins=("accounting",), pragmas=WAL,
                                   settings={"accounting": {"max_latency_ms": 1}}))
    acc = store.plugin("accounting")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        acc.submit("u", {"n": None})
        assert acc.flush(10) is False
    assert "owned by uid 65534" in caplog.text
    assert os.path.getsize(str(db) + ".corestore-deadletter.jsonl") == 0
    with pytest.raises(UnsavedDataError):
        store.close()


def test_sidecar_modes_are_never_more_permissive_than_the_database(tmp_path: Path) -> None:
    for mode, lock_mode in ((0o600, 0o600), (0o640, 0o600), (0o664, 0o660)):
        db = tmp_path / f"m{mode:o}.db"
        make_db(db, mode)
        write_marker(db, {"reason": "test"})
        assert stat.S_IMODE(os.stat(marker_path(db)).st_mode) == mode & 0o666
        with corestore.open(Profile(path=str(db), pragmas=WAL, plugins=("accounting",),
                                    settings={"accounting": {"max_latency_ms": 1}}),
                            setup=lambda s: None) as store:
            acc = store.plugin("accounting")
            acc.submit("nosuchtable", {"x": 1})
            assert acc.flush(10) is True
            assert stat.S_IMODE(os.stat(acc.dead_letter_path).st_mode) == 0o600 & mode
        assert stat.S_IMODE(os.stat(lock_path_for(str(db))).st_mode) == lock_mode
        clear_marker(db)


def test_health_snapshot_mode_is_configurable(tmp_path: Path) -> None:
    for readable, want in ((True, 0o644), (False, 0o600)):
        db = tmp_path / f"h{readable}.db"
        make_db(db, 0o600)
        snap = tmp_path / f"h{readable}.json"
        with corestore.open(Profile(path=str(db), pragmas=WAL, plugins=("health",), settings={"health": {
                "snapshot_path": str(snap), "snapshot_world_readable": readable}})) as store:
            store.health()
        assert stat.S_IMODE(os.stat(snap).st_mode) == want


# == item 7: a full disk at close() ============================================================================
@pytest.fixture
def full_fs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="corestore-full768-", dir="/tmp"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(d)], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        pytest.fail(f"mount failed: {result.stderr}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)
    shutil.rmtree(d, ignore_errors=True)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


@root_only()
def test_disk_full_at_close_keeps_every_row_and_tells_the_caller(full_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(full_fs / "acc.db")
    profile = Profile(path=path, plugins=("accounting",), pragmas=WAL,
                      settings={"accounting": {"drain_timeout_s": 1.0, "batch_size": 100, "max_latency_ms": 10}})
    store = corestore.open(profile, setup=lambda s: s.database.execute_sql(
        "CREATE TABLE usage (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, n INTEGER UNIQUE)"))
    acc = store.plugin("accounting")
    fill(full_fs)
    for i in range(1800):
        assert acc.submit("usage", {"kind": "x" * 50, "n": i})
    with caplog.at_level(logging.WARNING):
        with pytest.raises(UnsavedDataError) as info:
            store.close()
    err = info.value
    assert len(err.rows) == 1800 and sorted(d.row["n"] for d in err.rows) == list(range(1800))
    assert len(acc.unsaved()) == 1800 and len(acc.dead_letters()) == 100
    assert acc.on_health(store).status is HealthStatus.DOWN
    assert "kept in memory only" not in caplog.text or "Accounting.unsaved()" in caplog.text
    assert "LOST when the process exits" in caplog.text
    with pytest.raises(UnsavedDataError):
        acc.close()  # every call says it again: the outcome cannot be missed
    st = acc.stats()
    assert st["written"] + len(acc.unsaved()) == 1800
    # once there is room, the rows can be saved from memory: nothing was lost
    os.unlink(full_fs / "filler")
    conn = sqlite3.connect(path)
    conn.executemany("INSERT OR IGNORE INTO usage (kind, n) VALUES (?, ?)", [(d.row["kind"], d.row["n"]) for d in err.rows])
    conn.commit()
    assert conn.execute("SELECT count(*) FROM usage").fetchone()[0] == 1800
    conn.close()


# == item 8: hostile configuration ================================================================================
@pytest.mark.parametrize("text, message", [
    (b'[profiles.x]\nread_only = "\xff"\n', r"line 2: not valid UTF-8"),
    (b"[profiles.x.pragmas]\nbusy_timeout = 9223372036854775807\n", r"\[profiles.x\] key 'pragmas.busy_timeout'.*<= 2147483647"),
    (b"[profiles.x.retry]\nbudget_s = nan\n", r"\[profiles.x\] key 'retry'.*budget_s = nan must be a finite number"),
    (b"[profiles.x.retry]\nbusy_attempts = 2.5\n", r"\[profiles.x\] key 'retry'.*busy_attempts = 2.5 must be an integer"),
    (b'[profiles.x]\nvfs = "unix-none"\n', r"\[profiles.x\]: vfs = 'unix-none' needs driver = 'apsw'"),
    (b'[profiles.x]\ndriver = "apsw"\nvfs = 5\n', r"\[profiles.x\]: key 'vfs' = 5 must be the name of a registered SQLite VFS"),
    (b"[profiles.x]\nplugins = " + b"[" * 5000 + b"]" * 5000 + b"\n", r"line 2: arrays or tables nested more than 32 deep"),
    (b"[profiles.x]\ninit_timeout_s = inf\n", r"\[profiles.x\]: key init_timeout_s = inf must be a finite number > 0"),
    (b"[profiles.x]\ninit_timeout_s = 0\n", r"init_timeout_s = 0 must be"),
    (b'[databases.d]\npath = "d.db"\ninit_timeout_s = "30"\n', r"\[databases.d\]: key init_timeout_s = '30'"),
    (b"[profiles.x.pragmas]\ncache_size = 99999999999\n", r"pragma cache_size = 99999999999 must be an integer from"),
])
def test_hostile_config_values_are_config_errors_at_load(tmp_path: Path, text: bytes, message: str) -> None:
    cfg = tmp_path / "corestore.toml"
    cfg.write_bytes(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(cfg)
    assert str(cfg) in str(info.value)


def test_init_timeout_s_is_a_profile_key_inherited_and_overridden(tmp_path: Path) -> None:
    cfg = tmp_path / "corestore.toml"
    cfg.write_text('[profiles.base]\ninit_timeout_s = 2.5\n[profiles.child]\nextends = "base"\n'
                   '[databases.d]\npath = "d.db"\nprofile = "child"\ninit_timeout_s = 7\n')
    with corestore.open("d", config=str(cfg)) as store:
        assert store.profile.init_timeout_s == 7
    with corestore.open(str(tmp_path / "e.db"), profile="child", config=str(cfg)) as store:
        assert store.profile.init_timeout_s == 2.5
    assert Profile().init_timeout_s == 30.0


def test_plugin_settings_refuse_non_finite_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"settings.accounting: max_latency_ms = inf must be a finite number"):
        corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("accounting",),
                               settings={"accounting": {"max_latency_ms": float("inf")}}))
    with pytest.raises(ConfigError, match=r"settings.circuit_breaker: cooldown_s = nan must be a number > 0"):
        corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("circuit_breaker",),
                               settings={"circuit_breaker": {"cooldown_s": float("nan")}}))


def test_shared_validators() -> None:
    import attrs

    @attrs.frozen(kw_only=True)
    class Settings:
        ratio: float = attrs.field(default=0.5, validator=number(0, 1, low_inclusive=False))
        count: int = attrs.field(default=1, validator=number(1, integer=True))
        window_s: float | None = attrs.field(default=None, validator=optional(number(0)))
        mode: str = attrs.field(default="a", validator=one_of("a", "b"))

    Settings(ratio=1, count=3, window_s=0.5, mode="b")
    for kwargs, message in (({"ratio": 0}, "ratio = 0 must be a finite number > 0 and <= 1"),
                            ({"ratio": float("nan")}, "ratio = nan must be a finite number"),
                            ({"ratio": True}, "ratio = True must be"),
                            ({"count": 2.0}, "count = 2.0 must be an integer >= 1"),
                            ({"window_s": float("inf")}, r"window_s = inf must be a finite number >= 0 \(or leave it unset\)"),
                            ({"mode": "c"}, "mode = 'c' is not allowed; allowed: 'a', 'b'")):
        with pytest.raises(ConfigError, match=message):
            Settings(**kwargs)


@pytest.mark.parametrize("statement", ["raise SystemExit(3)", "raise GeneratorExit()", "import sys; sys.exit('bye')"])
def test_a_plugin_raising_anything_at_import_is_a_plugin_error(tmp_path: Path, install_plugins: Any,
                                                               statement: str) -> None:
    site = install_plugins(t_exits="plugin_exits:Nothing")
    (site / "plugin_exits.py").write_text(statement + "\n")
    sys.modules.pop("plugin_exits", None)
    with pytest.raises(PluginError,
                       match=r"plugin 't_exits' \(plugin_exits:Nothing\) failed to import: (SystemExit|GeneratorExit)"):
        corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("t_exits",)))
    sys.modules.pop("plugin_exits", None)


def test_struct_flock_layout_matches_the_kernel() -> None:
    """The init lock packs ``struct flock`` itself (Python's fcntl may not export F_OFD_*)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("OFD locks are Linux-only")
    fd = os.open("/proc/self/stat", os.O_RDONLY)  # any file; a read lock is allowed on it
    try:
        got = fcntl.fcntl(fd, 36, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))  # F_OFD_GETLK
        assert struct.unpack("hhqqi4x", got)[0] == fcntl.F_UNLCK
    finally:
        os.close(fd)


@root_only()
def test_a_read_only_directory_degrades_to_the_thread_lock_with_one_warning(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    make_db(d / "a.db")
    d.chmod(0o555)
    code = """
        import logging, sys, corestore
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
        ran = []
        p = corestore.Profile(path=sys.argv[1], read_only=True, pragmas={"busy_timeout": 1000}, init_timeout_s=5)
        s = corestore.open(p, setup=ran.append)
        with s.init_lock():
            pass
        s.close()
        print("setup ran" if ran else "setup did not run")
    """
    try:
        result = run_python(code, str(d / "a.db"), drop_caps=True)  # root without DAC override obeys 0555
    finally:
        d.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "setup ran"
    warnings = [line for line in result.stderr.splitlines() if "cannot open the init lock file for writing" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], result.stderr
    assert not os.path.exists(lock_path_for(str(d / "a.db")))


def test_a_fifo_or_directory_in_a_sidecar_place_is_refused_without_hanging(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    make_db(db)
    os.mkfifo(lock_path_for(str(db)))
    t0 = time.monotonic()
    with pytest.raises(FatalError, match="is not a regular file"):
        corestore.open(Profile(path=str(db), pragmas=WAL, init_timeout_s=2), setup=lambda s: None)
    assert time.monotonic() - t0 < 2
    os.mkdir(marker_path(db))
    record = read_marker(db)  # a directory where the marker goes: reported, still "quarantined"
    assert record is not None and record["unreadable"], record
