"""The health plugin and ``store.health()``: aggregation, isolation, transitions exactly once under
threads, the probe's pacing (never on a failing caller's thread), the atomic snapshot and the
optional watcher. Real SQLite, real files, real faults (SQLITE_FULL from ``max_page_count``,
the failpoint VFS), real reader processes."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import ConfigError, HealthComponent, HealthStatus, Profile, StoreError, hookimpl
from corestore.health import worst_status
from corestore_contrib.waiting import wait_until
from corestore_plugins.health import Health, read_snapshot

from helpers import ROOT, child_env

PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000}


# -- test plugins (installed through real entry points by the install_plugins fixture) ------------------
class Flapper:
    """A component whose status the test sets; it takes a little while to report (the window in
    which a report computed outside the core's lock used to go stale)."""

    name = "t_h_flap"

    def __init__(self) -> None:
        self.status = HealthStatus.UP
        self.jitter_s = 0.0

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        status = self.status
        if self.jitter_s:
            time.sleep(random.uniform(0, self.jitter_s))
        return HealthComponent(name=self.name, status=status, summary=f"set to {status.name}")


class Transitions:
    """Records every on_health_changed with the thread it ran on."""

    name = "t_h_rec"

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.threads: list[str] = []
        self._lock = threading.Lock()

    @hookimpl
    def on_health_changed(self, store: Any, previous: HealthStatus, current: HealthStatus) -> None:
        with self._lock:
            self.changes.append((previous.name, current.name))
            self.threads.append(threading.current_thread().name)


class Raiser:
    name = "t_h_raise"

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        raise RuntimeError("sensor unplugged")


class Garbage:
    name = "t_h_garbage"

    @hookimpl
    def on_health(self, store: Any) -> Any:
        return {"status": "up"}  # not a HealthComponent


class Escalator:
    """On a fault, goes DOWN and asks for a report from inside on_fatal, as an escalating plugin
    would; records whether that report ran the database probe."""

    name = "t_h_escalate"

    def __init__(self) -> None:
        self.status = HealthStatus.UP
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def on_fatal(self, store: Any, error: BaseException, classification: Any, operation: Any) -> None:
        self.status = HealthStatus.DOWN
        before = store.stats()["health_probes"]
        report = store.health()
        self.seen.append({"kind": classification.kind.name, "status": report.status.name,
                          "probes": store.stats()["health_probes"] - before})

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        return HealthComponent(name=self.name, status=self.status)


@pytest.fixture
def plugins(install_plugins) -> None:
    install_plugins(t_h_flap="test_health:Flapper", t_h_rec="test_health:Transitions",
                    t_h_raise="test_health:Raiser", t_h_escalate="test_health:Escalator",
                    t_h_garbage="test_health:Garbage")


def open_store(path: Path | str, *plugins: str, driver: str = "sqlite3", vfs: str | None = None,
               pragmas: dict[str, Any] | None = None, **health: Any) -> corestore.Store:
    return corestore.open(Profile(path=str(path), name="test", plugins=plugins, driver=driver, vfs=vfs,
                                  pragmas=pragmas or PRAGMAS, settings={"health": health} if health else {}))


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# -- aggregation -----------------------------------------------------------------------------------------
def test_worst_status_ordering() -> None:
    order = [HealthStatus.UNKNOWN, HealthStatus.UP, HealthStatus.DEGRADED, HealthStatus.DOWN]
    assert sorted(reversed(order), key=lambda s: s.severity) == order
    for i, status in enumerate(order):
        assert worst_status(order[: i + 1]) is status
        assert worst_status(reversed(order[: i + 1])) is status
    assert worst_status([]) is HealthStatus.UNKNOWN
    assert [s.exit_code for s in order] == [0, 0, 1, 2]


def test_report_aggregates_the_worst_component(tmp_path: Path, plugins) -> None:
    store = open_store(tmp_path / "app.db", "health", "t_h_flap", "t_h_rec")
    flap = store.plugin("t_h_flap")
    first = store.health()
    assert first.status is HealthStatus.UP
    # the core's two first, then profile order
    assert list(first.components) == ["database", "sqlite_version", "health", "t_h_flap"]
    assert first.database == store.path and first.profile == "test"
    assert first.checked_at.tzinfo is not None
    assert first.components["database"].summary == "probe ok"
    for status, expected in ((HealthStatus.DEGRADED, HealthStatus.DEGRADED), (HealthStatus.DOWN, HealthStatus.DOWN),
                             (HealthStatus.UNKNOWN, HealthStatus.UP), (HealthStatus.UP, HealthStatus.UP)):
        flap.status = status
        report = store.health()
        assert report.status is expected, status  # UNKNOWN never outranks UP
        assert report.components["t_h_flap"].status is status
        document = json.loads(json.dumps(report.to_dict()))
        assert document["status"] == expected.value
        assert document["components"]["t_h_flap"]["status"] == status.value
        assert report.checked_at >= first.checked_at
    assert store.plugin("t_h_rec").changes == [("UP", "DEGRADED"), ("DEGRADED", "DOWN"), ("DOWN", "UP")]
    store.close()


def test_a_failing_component_is_isolated(tmp_path: Path, plugins) -> None:
    store = open_store(tmp_path / "app.db", "t_h_raise", "t_h_garbage", "health", "t_h_flap", "t_h_rec")
    store.plugin("t_h_flap").status = HealthStatus.DEGRADED
    report = store.health()
    broken = report.components["t_h_raise"]
    assert broken.status is HealthStatus.UNKNOWN and "sensor unplugged" in broken.summary
    garbage = report.components["t_h_garbage"]
    assert garbage.status is HealthStatus.UNKNOWN and "not a HealthComponent" in garbage.summary
    assert report.components["t_h_flap"].status is HealthStatus.DEGRADED  # the others still report
    assert report.components["health"].status is HealthStatus.UP
    assert report.status is HealthStatus.DEGRADED
    store.plugin("t_h_flap").status = HealthStatus.UP
    assert store.health().status is HealthStatus.UP
    assert store.plugin("t_h_rec").changes == [("DEGRADED", "UP")]  # transitions still fire
    json.dumps(report.to_dict())
    store.close()


# -- transitions exactly once --------------------------------------------------------------------------------
def test_transitions_fire_exactly_once_under_8_threads(tmp_path: Path, plugins) -> None:
    """8 threads call health() in a loop while the status flips UP -> DOWN -> UP once each.

    Each transition must fire exactly once. Before the core computed and compared reports under
    one lock, a report computed just before a flip could be swapped in after a newer one: this
    test then saw 2 to 5 extra transitions (UP->DOWN->UP->DOWN...) in 18 of 20 runs.
    """
    store = open_store(tmp_path / "app.db", "health", "t_h_flap", "t_h_rec", snapshot_path="health.json")
    flap, rec, health = store.plugin("t_h_flap"), store.plugin("t_h_rec"), store.plugin(Health)
    store.health()
    flap.jitter_s = 0.002
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0] * 8  # health() calls made by each thread

    def hammer(i: int) -> None:
        try:
            while not stop.is_set():
                store.health()
                calls[i] += 1
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def every_thread_called(more: int, than: list[int]) -> bool:
        return all(now >= before + more for now, before in zip(calls, than, strict=True)) or bool(errors)

    threads = [threading.Thread(target=hammer, args=(i,), name=f"hammer-{i}") for i in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: every_thread_called(1, [0] * 8), "every thread to call health()")
    flap.status = HealthStatus.DOWN
    # reports computed before the flip must have had their chance to land after it
    wait_until(lambda: rec.changes, "the UP -> DOWN transition")
    seen = list(calls)
    wait_until(lambda: every_thread_called(20, seen), "20 more health() calls per thread while DOWN")
    flap.status = HealthStatus.UP
    wait_until(lambda: len(rec.changes) >= 2, "the DOWN -> UP transition")
    seen = list(calls)
    wait_until(lambda: every_thread_called(20, seen), "20 more health() calls per thread while UP")
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert rec.changes == [("UP", "DOWN"), ("DOWN", "UP")]
    assert health.transitions == 2
    assert health.flush()
    assert read_snapshot(health.snapshot_file)["status"] == "up"
    store.close()


def test_a_real_fault_flips_the_database_component_once(tmp_path: Path, plugins, failpoint) -> None:
    """Through the failpoint VFS: every read of the main file fails with SQLITE_IOERR while 8
    threads poll; the database probe goes DOWN once, and UP once after healing."""
    path = tmp_path / "app.db"
    store = open_store(path, "health", "t_h_rec", driver="apsw", vfs=failpoint.name, probe_interval_s=0)
    store.database.execute_sql("CREATE TABLE t (x)")
    rec = store.plugin("t_h_rec")
    assert store.health().status is HealthStatus.UP
    stop = threading.Event()
    statuses: list[HealthStatus] = []

    def poll() -> None:
        while not stop.is_set():
            statuses.append(store.health().components["database"].status)

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        failpoint.arm(op="read", file="main", database=str(path))
        store.invalidate()  # fresh connections must read the file: the fault bites at once
        assert wait_for(lambda: rec.changes == [("UP", "DOWN")])
        # the pollers go on while DOWN (a stale report must not flip it back): 100 more polls
        seen = len(statuses)
        wait_until(lambda: len(statuses) >= seen + 100, "100 more polls while DOWN")
        failpoint.heal()
        assert wait_for(lambda: len(rec.changes) == 2)
        seen = len(statuses)
        wait_until(lambda: len(statuses) >= seen + 100, "100 more polls after healing")
    finally:
        stop.set()
        failpoint.heal()
        for t in threads:
            t.join()
    assert rec.changes == [("UP", "DOWN"), ("DOWN", "UP")]
    assert HealthStatus.DOWN in statuses and statuses[-1] is HealthStatus.UP
    database = store.health().components["database"]
    assert database.details["last_fault"]["kind"] in ("FATAL_IO", "CORRUPT", "TRANSIENT_IO")
    store.close()


# -- the probe ----------------------------------------------------------------------------------------------
def test_probe_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    slow = open_store(tmp_path / "a.db", "health", probe_interval_s=3600)
    assert slow.probe_interval_s == 3600
    for _ in range(5):
        assert slow.health().components["database"].summary == "probe ok"
    assert slow.stats()["health_probes"] == 1
    slow.close()
    eager = open_store(tmp_path / "b.db", "health", probe_interval_s=0)
    unprobed = eager.health(probe=False).components["database"]
    assert unprobed.status is HealthStatus.UNKNOWN and unprobed.summary == "not probed yet"
    for _ in range(5):
        eager.health()
    assert eager.stats()["health_probes"] == 5
    eager.health(probe=False)
    assert eager.stats()["health_probes"] == 5
    eager.close()


def fill_until_full(store: corestore.Store, attempts: int = 3) -> list[StoreError]:
    """Write until SQLITE_FULL (max_page_count), ``attempts`` failing transactions."""
    store.database.execute_sql("CREATE TABLE IF NOT EXISTS blob (b BLOB)")
    errors: list[StoreError] = []
    while len(errors) < attempts:
        try:
            with store.transaction():
                store.database.execute_sql("INSERT INTO blob VALUES (zeroblob(20000))")
        except StoreError as err:
            errors.append(err)
    return errors


def test_probe_never_runs_on_a_failing_callers_thread(tmp_path: Path, plugins) -> None:
    """A plugin escalating from on_fatal asks for a report on the failing caller's thread: the
    report is built from state already held; the probe does not run there."""
    pragmas = {**PRAGMAS, "max_page_count": 40}
    store = open_store(tmp_path / "app.db", "health", "t_h_escalate", "t_h_rec", pragmas=pragmas,
                       probe_interval_s=0, snapshot_path="health.json")
    assert store.health().status is HealthStatus.UP
    probes = store.stats()["health_probes"]
    errors = fill_until_full(store, attempts=2)
    assert {e.kind.name for e in errors} == {"FULL"}
    seen = store.plugin("t_h_escalate").seen
    assert [s["kind"] for s in seen] == ["FULL", "FULL"]
    assert all(s["probes"] == 0 and s["status"] == "DOWN" for s in seen)
    assert store.stats()["health_probes"] == probes  # no probe anywhere on the fault path
    rec = store.plugin("t_h_rec")
    assert rec.changes == [("UP", "DOWN")] and rec.threads == [threading.current_thread().name]
    health = store.plugin("health")
    assert health.flush() and read_snapshot(health.snapshot_file)["status"] == "down"
    store.close()


def test_breaker_trip_reaches_the_snapshot_without_a_probe(tmp_path: Path) -> None:
    """circuit_breaker announces its transitions through store.health(probe=False): the
    snapshot follows, and the failing callers never ran the database probe."""
    pragmas = {**PRAGMAS, "max_page_count": 40}
    store = open_store(tmp_path / "app.db", "circuit_breaker", "health", pragmas=pragmas, probe_interval_s=0,
                       snapshot_path="health.json")
    health = store.plugin("health")
    store.health()
    assert health.flush()
    probes = store.stats()["health_probes"]
    errors = fill_until_full(store, attempts=3)
    assert [e.kind.name for e in errors] == ["FULL"] * 3
    assert store.stats()["health_probes"] == probes
    assert health.flush()
    snap = read_snapshot(health.snapshot_file)
    assert snap["status"] == "down" and snap["components"]["circuit_breaker"]["status"] == "down"
    assert health.transitions == 1
    store.close()


# -- the snapshot ------------------------------------------------------------------------------------------------
def test_snapshot_after_the_first_report_and_at_close(tmp_path: Path) -> None:
    store = open_store(tmp_path / "app.db", "health", snapshot_path="app.health.json")
    health = store.plugin(Health)
    assert health.snapshot_file == str(tmp_path / "app.health.json")
    assert not os.path.exists(health.snapshot_file)  # nothing before the first report
    report = store.health()
    assert health.flush()
    snap = read_snapshot(health.snapshot_file)
    assert snap["status"] == "up" and snap["database"] == store.path and snap["profile"] == "test"
    assert set(snap["components"]) == {"database", "sqlite_version", "health"}
    meta = snap["snapshot"]
    assert meta["schema"] == 1 and meta["pid"] == os.getpid() and meta["closed"] is False
    assert set(meta) == {"schema", "pid", "host", "written_at", "closed", "transitions"}
    assert snap["checked_at"] >= report.checked_at.isoformat()
    assert oct(os.stat(health.snapshot_file).st_mode & 0o777) == "0o644"
    store.close()
    closed = read_snapshot(health.snapshot_file)
    assert closed["snapshot"]["closed"] is True and closed["status"] == "up"
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert leftovers == []


def test_read_snapshot_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    for text in ("{", "[]", '{"status": "up"}', '{"status": "fine", "components": {}, "snapshot": {"schema": 1}}'):
        bad.write_text(text)
        with pytest.raises(ValueError, match="not a corestore health snapshot"):
            read_snapshot(str(bad))
    with pytest.raises(FileNotFoundError):
        read_snapshot(str(tmp_path / "missing.json"))


READER = """
    import json, sys, time
    path, seconds = sys.argv[1], float(sys.argv[2])
    reads = bad = missing = 0
    statuses = set()
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        try:
            statuses.add(json.loads(raw)["status"])
        except (ValueError, KeyError):
            bad += 1
    print(json.dumps({"reads": reads, "bad": bad, "missing": missing, "statuses": sorted(statuses)}))
"""


def start_reader(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(READER), str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def reader_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=30)
    return json.loads(out)


def test_a_reader_never_sees_a_partial_snapshot(tmp_path: Path, plugins) -> None:
    """A reader process parses the snapshot in a loop while the store flips hundreds of times.

    The control run shows the same reader catches a file written in place (truncate, write):
    this test can fail."""
    target = tmp_path / "health.json"
    target.write_text(json.dumps({"status": "up", "pad": "x" * 4000}))
    control = start_reader(target, 0.6)
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        with open(target, "w") as fh:  # the naive way: truncate, then write in two pieces
            text = json.dumps({"status": "down", "pad": "x" * 4000})
            fh.write(text[:2000])
            fh.flush()
            time.sleep(0.0005)
            fh.write(text[2000:])
    assert reader_result(control)["bad"] > 0

    target.unlink()
    store = open_store(tmp_path / "app.db", "health", "t_h_flap", snapshot_path="health.json")
    health, flap = store.plugin(Health), store.plugin("t_h_flap")
    store.health()
    assert health.flush()
    reader = start_reader(target, 1.5)
    end = time.monotonic() + 1.5
    flips = 0
    while time.monotonic() < end:
        flap.status = HealthStatus.DOWN if flap.status is HealthStatus.UP else HealthStatus.UP
        store.health()
        flips += 1
        if flips % 20 == 0:
            time.sleep(0.002)
    result = reader_result(reader)
    assert result["bad"] == 0 and result["missing"] == 0, result
    assert result["reads"] > 100 and result["statuses"] == ["down", "up"], result
    assert health.transitions == flips and flips > 50
    assert health.flush()
    assert read_snapshot(str(target))["status"] == store.health().status.value
    store.close()


def test_snapshot_write_failure_degrades_then_recovers(tmp_path: Path) -> None:
    sub = tmp_path / "run"
    sub.mkdir()
    store = open_store(tmp_path / "app.db", "health", snapshot_path="run/health.json")
    health = store.plugin(Health)
    sub.rmdir()  # the directory disappears after open (a tmpfs cleaned by the init system)
    store.health()
    assert health.flush()
    report = store.health()
    comp = report.components["health"]
    assert comp.status is HealthStatus.DEGRADED and "FileNotFoundError" in comp.summary
    assert comp.details["snapshot"]["last_error"] and report.status is HealthStatus.DEGRADED
    sub.mkdir()
    assert health.flush()
    assert wait_for(lambda: store.health().components["health"].status is HealthStatus.UP)
    assert health.flush()
    assert read_snapshot(str(sub / "health.json"))["status"] == "up"
    store.close()


# -- settings -----------------------------------------------------------------------------------------------------
def test_snapshot_path_resolution_and_validation(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    relative = open_store(tmp_path / "a.db", "health", snapshot_path="state/a.json")
    assert relative.plugin(Health).snapshot_file == str(tmp_path / "state" / "a.json")
    relative.close()
    absolute = open_store(tmp_path / "b.db", "health", snapshot_path=str(tmp_path / "b.json"))
    assert absolute.plugin(Health).snapshot_file == str(tmp_path / "b.json")
    absolute.close()
    with pytest.raises(ConfigError, match="directory .*nowhere does not exist"):
        open_store(tmp_path / "c.db", "health", snapshot_path="nowhere/c.json")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigError, match="is relative, but the database is ':memory:'"):
        corestore.open(Profile(path=":memory:", name="mem", plugins=("health",),
                               settings={"health": {"snapshot_path": "m.json"}}))
    for key, value, message in (
        ("probe_interval_s", -1, "must be a finite number of seconds >= 0"),
        ("probe_interval_s", "5", "expected a number of seconds"),
        ("watch_interval_s", float("nan"), "must be a finite number"),
        ("snapshot_path", "", "must be a non-empty file path"),
        ("snapshot_fsync", "yes", "snapshot_fsync"),
        ("colour", "red", "unknown key 'colour'"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            open_store(tmp_path / "d.db", "health", **{key: value})
        assert "settings.health" in str(info.value)


def test_settings_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "corestore.toml"
    config.write_text(textwrap.dedent("""
        [profiles.app]
        plugins = ["health"]
        [profiles.app.settings.health]
        probe_interval_s = 2
        snapshot_path = "app.health.json"
        [databases.app]
        path = "app.db"
        profile = "app"
    """))
    store = corestore.open("app", config=str(config))
    assert store.probe_interval_s == 2.0
    assert store.plugin(Health).settings == Health.Settings(probe_interval_s=2.0, snapshot_path="app.health.json")
    assert store.plugin(Health).snapshot_file == str(tmp_path / "app.health.json")
    store.close()


# -- the watcher ---------------------------------------------------------------------------------------------------
def test_watcher_notices_without_the_application_asking(tmp_path: Path, plugins) -> None:
    store = open_store(tmp_path / "app.db", "health", "t_h_flap", "t_h_rec", watch_interval_s=0.05,
                       snapshot_path="health.json")
    health, rec = store.plugin(Health), store.plugin("t_h_rec")
    assert wait_for(lambda: os.path.exists(tmp_path / "health.json"))
    store.plugin("t_h_flap").status = HealthStatus.DOWN  # the application never calls health()
    assert wait_for(lambda: read_snapshot(str(tmp_path / "health.json"))["status"] == "down")
    assert rec.changes == [("UP", "DOWN")] and rec.threads[0].startswith("corestore-health:")
    thread = health._thread
    store.close()
    assert thread is not None and not thread.is_alive()
    assert read_snapshot(str(tmp_path / "health.json"))["snapshot"]["closed"] is True


# -- hooks this plugin demonstrates ------------------------------------------------------------------------------------
def test_hook_on_open(tmp_path: Path) -> None:
    store = open_store(tmp_path / "app.db", "health", probe_interval_s=0.25)
    assert store.probe_interval_s == 0.25  # set on the store by on_open
    store.close()


def test_hook_on_health(tmp_path: Path, plugins) -> None:
    store = open_store(tmp_path / "app.db", "health", "t_h_flap", snapshot_path="h.json")
    comp = store.health().components["health"]
    assert comp.status is HealthStatus.UP and comp.details["transitions"] == 0
    assert store.plugin(Health).flush()
    store.plugin("t_h_flap").status = HealthStatus.DOWN
    store.health()
    assert store.plugin(Health).flush()
    comp = store.health().components["health"]
    assert comp.details["transitions"] == 1
    assert comp.details["last_transition"]["previous"] == "up" and comp.details["last_transition"]["current"] == "down"
    assert comp.details["snapshot"]["writes"] == 2 and comp.details["snapshot"]["last_error"] is None
    assert "last UP -> DOWN" in comp.summary
    store.close()


def test_hook_on_health_changed(tmp_path: Path, plugins) -> None:
    store = open_store(tmp_path / "app.db", "health", "t_h_flap", snapshot_path="h.json")
    health, flap = store.plugin(Health), store.plugin("t_h_flap")
    store.health()
    for status in (HealthStatus.DEGRADED, HealthStatus.DOWN, HealthStatus.UP):
        flap.status = status
        store.health()
        assert health.flush()
        snap = read_snapshot(health.snapshot_file)
        assert snap["status"] == status.value and snap["snapshot"]["transitions"] == health.transitions
    assert health.transitions == 3
    store.close()


def test_hook_on_close(tmp_path: Path) -> None:
    store = open_store(tmp_path / "app.db", "health", snapshot_path="h.json")
    store.health()
    store.close()
    assert read_snapshot(str(tmp_path / "h.json"))["snapshot"]["closed"] is True


# -- docs -------------------------------------------------------------------------------------------------------------
SNIPPETS = ("health_snapshot.py", "health_probe.py")  # site/snippets/, included by site/plugins/health.md


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_docs_snippets_run(tmp_path: Path, snippet: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "site" / "snippets" / snippet)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_snippets_are_all_run_and_included() -> None:
    assert sorted(p.name for p in (ROOT / "site" / "snippets").glob("health_*")) == sorted(SNIPPETS)
    page = (ROOT / "site" / "plugins" / "health.md").read_text()
    for snippet in SNIPPETS:
        assert f'--8<-- "snippets/{snippet}' in page
