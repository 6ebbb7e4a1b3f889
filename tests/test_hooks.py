"""One test per hook (``test_hook_<name>``): when the core calls it, with what, and what the
result does. Plugins are installed through real entry points."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

import corestore
from corestore import ErrorKind, HealthStatus, InvariantViolation, Profile
from corestore.hookspecs import HOOK_NAMES

from helpers import Holder, fork_report
from plugin_fixtures import EVENTS


@pytest.fixture
def plugins(install_plugins):
    install_plugins(
        t_recorder="plugin_fixtures:Recorder", t_raiser="plugin_fixtures:Raiser", t_toggle="plugin_fixtures:Toggle",
        t_busy_is_fatal="plugin_fixtures:BusyIsFatal", t_gate="plugin_fixtures:Gate", t_checker="plugin_fixtures:Checker",
    )


def open_with(path: Path, *plugins: str, **kw) -> corestore.Store:
    pragmas = kw.pop("pragmas", {"busy_timeout": 200, "journal_mode": "wal", "synchronous": "normal"})
    return corestore.open(Profile(path=str(path), plugins=plugins, pragmas=pragmas, **kw))


def hooks_of(plugin: str, hook: str) -> list[tuple]:
    return [e for e in EVENTS if e[0] == plugin and e[1] == hook]


def test_every_hookspec_has_a_test_here() -> None:
    source = Path(__file__).read_text()
    for name in HOOK_NAMES:
        assert f"def test_hook_{name}(" in source


def test_hook_on_open(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_recorder")
    assert hooks_of("t_recorder", "on_open") == [("t_recorder", "on_open", "sqlite3")]  # the connection open() made
    import threading

    t = threading.Thread(target=lambda: store.database.execute_sql("select 1"))
    t.start()
    t.join()
    assert len(hooks_of("t_recorder", "on_open")) == 2  # one per new connection
    store.close()
    # raising refuses the connection: open() fails and nothing stays open
    with pytest.raises(RuntimeError, match="refused by t_recorder"):
        corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("t_recorder",),
                               settings={"t_recorder": {"fail_open": True}}))


def test_hook_on_store_open(tmp_path: Path, plugins) -> None:
    """Once per store, after its first connection is ready, before setup; raising refuses the
    open and the store is closed (on_close runs)."""
    order: list[str] = []

    def setup(store: corestore.Store) -> None:
        order.append("setup")
        assert hooks_of("t_recorder", "on_store_open") == [("t_recorder", "on_store_open", 1)]

    store = corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("t_recorder",)), setup=setup)
    assert order == ["setup"]
    import threading

    t = threading.Thread(target=lambda: store.database.execute_sql("select 1"))
    t.start()
    t.join()
    assert len(hooks_of("t_recorder", "on_open")) == 2 and len(hooks_of("t_recorder", "on_store_open")) == 1
    again = corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("t_recorder",)))
    assert again is store and len(hooks_of("t_recorder", "on_store_open")) == 1  # a cached store: not again
    again.close()
    store.close()
    EVENTS.clear()
    with pytest.raises(RuntimeError, match="store refused by t_recorder"):
        corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("t_recorder",),
                               settings={"t_recorder": {"fail_store_open": True}}), setup=setup)
    # the first connection is an operation of kind "open" (before/after_operation around on_open)
    assert [e[1] for e in EVENTS] == ["before_operation", "on_open", "after_operation", "on_store_open", "on_close"]
    assert not corestore.store.open_stores() or all(s.path != str(tmp_path / "b.db") for s in corestore.store.open_stores())


def test_hook_classify_error(tmp_path: Path, plugins) -> None:
    """First non-None wins; the core table answers last; the answering plugin is recorded."""
    path = tmp_path / "a.db"
    plain = open_with(path, "t_recorder")
    overriding = open_with(path, "t_busy_is_fatal", "t_recorder")
    plain.database.execute_sql("create table t(x)")
    holder = Holder(str(path))  # another process holds BEGIN IMMEDIATE
    try:
        with pytest.raises(corestore.BusyError) as busy:
            with plain.transaction():
                pass
        assert busy.value.classification.source == "core" and busy.value.classification.name == "SQLITE_BUSY"
        with pytest.raises(corestore.FatalError) as fatal:
            with overriding.transaction():
                pass
        c = fatal.value.classification
        assert c.kind is ErrorKind.FATAL_IO and c.source == "t_busy_is_fatal" and c.code == 5
    finally:
        holder.kill()
    # the override made it a fault: on_fatal heard about it, for the overriding store only
    assert hooks_of("t_recorder", "on_fatal") == [("t_recorder", "on_fatal", "FATAL_IO", "write")]
    plain.close()
    overriding.close()


def test_hook_before_operation(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_gate", "t_recorder")
    store.database.execute_sql("create table t(x)")
    with store.transaction(name="w"):
        store.database.execute_sql("insert into t values (1)")
    with store.read(name="r"):
        store.database.execute_sql("select * from t").fetchall()
    store.run(lambda: None, name="unit")
    assert [e[2:] for e in hooks_of("t_recorder", "before_operation")] == [
        ("open", None), ("write", "statement"), ("write", "w"), ("read", "r"), ("write", "unit")]
    # raising refuses the operation before any connection is touched
    opened = store.stats()["connections_opened"]
    with pytest.raises(PermissionError):
        with store.transaction(name="forbidden"):
            raise AssertionError("never entered")
    assert store.stats()["connections_opened"] == opened
    assert store.database.execute_sql("select count(*) from t").fetchone()[0] == 1
    store.close()


def test_hook_on_success(tmp_path: Path, plugins, caplog: pytest.LogCaptureFixture) -> None:
    """Called after commit; isolated: a raising implementation neither breaks the caller's
    operation nor stops the next plugin."""
    store = open_with(tmp_path / "a.db", "t_raiser", "t_recorder")
    with caplog.at_level(logging.ERROR, logger="corestore.registry"):
        with store.transaction(name="w"):
            store.database.execute_sql("create table t(x)")
    assert hooks_of("t_recorder", "on_success") == [("t_recorder", "on_success", "write", "w")]
    assert "on_success of plugin 't_raiser' raised" in caplog.text
    with pytest.raises(ZeroDivisionError):
        with store.transaction(name="fails"):
            1 / 0
    assert len(hooks_of("t_recorder", "on_success")) == 1  # not after a rollback
    store.close()


def ok_then_duplicate(store: corestore.Store) -> None:
    """Two write transactions on a fresh table: ``ok`` commits a row, ``dup`` inserts it again
    and ends in ``ConstraintError``."""
    store.database.execute_sql("create table t(x unique)")
    with store.transaction(name="ok"):
        store.database.execute_sql("insert into t values (1)")
    with pytest.raises(corestore.ConstraintError):
        with store.transaction(name="dup"):
            store.database.execute_sql("insert into t values (1)")


def test_hook_after_operation(tmp_path: Path, plugins) -> None:
    """Once per operation however it ended (success, caller error, refusal), after the others."""
    store = open_with(tmp_path / "a.db", "t_gate", "t_recorder")
    ok_then_duplicate(store)
    with pytest.raises(PermissionError):
        with store.transaction(name="forbidden"):
            pass
    store.run(lambda: None, name="unit")
    after = [e[2:] for e in EVENTS if e[1] == "after_operation"]
    assert after == [("open", None, 1), ("write", "statement", 1), ("write", "ok", 1), ("write", "dup", 1),
                     ("write", "forbidden", 1), ("write", "unit", 1)]
    # it comes after on_success for the same operation
    kinds = [e[1] for e in EVENTS if e[1] in ("on_success", "after_operation") and e[3] == "ok"]
    assert kinds == ["on_success", "after_operation"]
    store.close()


def test_hook_after_operation_outcome(tmp_path: Path, plugins, install_plugins) -> None:
    """The ``outcome`` argument sees every ending: success, a constraint error, the caller's own
    exception, a refusal, and each attempt of a run() that a real BUSY (another process holds
    the write lock) made retry, then the success; a plugin without the argument is unaffected."""
    from plugin_fixtures import OUTCOME_CALLBACKS

    install_plugins("corestore-test-outcome", t_outcome="plugin_fixtures:OutcomeRecorder")
    path = tmp_path / "a.db"
    store = open_with(path, "t_gate", "t_recorder", "t_outcome", pragmas={"busy_timeout": 50, "journal_mode": "wal"},
                      retry={"busy_attempts": 50, "base_delay_s": 0.01, "max_delay_s": 0.02})
    assert store.hooks.wants_outcome
    ok_then_duplicate(store)
    with pytest.raises(ZeroDivisionError):
        with store.transaction(name="mine"):
            1 / 0
    with pytest.raises(PermissionError):
        with store.transaction(name="forbidden"):
            pass
    holder = Holder(str(path))
    OUTCOME_CALLBACKS.append(lambda outcome: outcome.retrying and holder.release())
    try:
        store.run(lambda: store.database.execute_sql("insert into t values (2)"), name="unit")
    finally:
        OUTCOME_CALLBACKS.clear()
        holder.kill()
    seen = [e[2:] for e in EVENTS if e[0] == "t_outcome"]
    assert seen[:6] == [
        (None, 1, True, None, False, True),  # the open (kind "open", unnamed)
        ("statement", 1, True, None, False, True),
        ("ok", 1, True, None, False, True),
        ("dup", 1, False, "CONSTRAINT", False, False),
        ("mine", 1, False, "ZeroDivisionError", False, False),
        ("forbidden", 1, False, "PermissionError", False, False),
    ]
    assert seen[6] == ("unit", 1, False, "BUSY", True, False)  # retried: the caller never saw it
    assert seen[-1] == ("unit", 2, True, None, False, True)
    assert len(seen) == 8
    # the plugin without the argument heard the same operations
    assert len(hooks_of("t_recorder", "after_operation")) == 8
    store.close()


def test_hook_after_operation_outcome_isolated(tmp_path: Path, plugins, install_plugins,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """With an implementation that names ``outcome``, the dispatch is generated for the store's
    implementations (no general loop): an implementation that raises is logged, the others still
    run with the same outcome, and the plugin without the argument is called without it."""
    install_plugins("corestore-test-outcome", t_outcome="plugin_fixtures:OutcomeRecorder",
                    t_outcome_raiser="plugin_fixtures:OutcomeRaiser")
    store = open_with(tmp_path / "a.db", "t_recorder", "t_outcome_raiser", "t_outcome")
    assert store.hooks.wants_outcome
    assert store.hooks.after_operation.__name__ == "after_operation"  # the generated function
    assert store.hooks.implementers("after_operation")[0] == "t_outcome_raiser"  # tryfirst
    ok_then_duplicate(store)
    assert [e[2:] for e in EVENTS if e[0] == "t_outcome_raiser" and e[2] in ("ok", "dup")] == [
        ("ok", True), ("dup", False)]
    assert [e[2:5] for e in EVENTS if e[0] == "t_outcome" and e[2] in ("ok", "dup")] == [
        ("ok", 1, True), ("dup", 1, False)]
    assert [e[2:4] for e in EVENTS if e[0] == "t_recorder" and e[1] == "after_operation"][-2:] == [
        ("write", "ok"), ("write", "dup")]
    assert "after_operation of plugin 't_outcome_raiser' raised" in caplog.text
    store.close()


def test_hook_on_fatal(tmp_path: Path, plugins) -> None:
    """Storage faults only: not contention, not caller errors; once per run(), however many attempts."""
    path = tmp_path / "a.db"
    store = open_with(path, "t_recorder")
    store.database.execute_sql("create table t(x unique)")
    store.database.execute_sql("insert into t values (1)")
    with pytest.raises(corestore.ConstraintError):
        store.database.execute_sql("insert into t values (1)")
    with pytest.raises(corestore.QueryError):
        store.database.execute_sql("select * from missing")
    assert hooks_of("t_recorder", "on_fatal") == []
    # a real storage fault: the file is replaced by garbage behind SQLite's back -> NOTADB/CORRUPT
    store.close()
    store = open_with(path, "t_recorder", pragmas={"busy_timeout": 200})
    store.close()
    # peewee 3.17's reraise() leaves each translated error in a reference cycle with its frame,
    # and that frame holds the failed statement's cursor: until the cycle is collected, the closed
    # sqlite3 connection stays a zombie (sqlite3_close_v2) with the -wal open, and finalizing it
    # later checkpoints the old WAL into the file this test replaces. Collect it first, so the
    # outcome does not depend on when the collector happens to run.
    import gc

    gc.collect()
    path.write_bytes(b"this is not a database" * 300)
    Path(str(path) + "-wal").unlink(missing_ok=True)
    Path(str(path) + "-shm").unlink(missing_ok=True)
    with pytest.raises(corestore.CorruptionError, match="not a SQLite database"):
        open_with(path, "t_recorder", pragmas={"busy_timeout": 200})
    assert hooks_of("t_recorder", "on_fatal") == []  # NOTADB at first open is not a runtime fault


def test_hook_on_fatal_once_per_run(tmp_path: Path, plugins) -> None:
    path = tmp_path / "a.db"
    store = open_with(path, "t_busy_is_fatal", "t_recorder", retry={"fatal_attempts": 3, "base_delay_s": 0.001})
    holder = Holder(str(path))  # another process holds BEGIN IMMEDIATE
    try:
        with pytest.raises(corestore.FatalError):
            store.run(lambda: None, name="unit")
    finally:
        holder.kill()
    assert store.stats()["retries"] == 2  # three attempts ...
    assert hooks_of("t_recorder", "on_fatal") == [("t_recorder", "on_fatal", "FATAL_IO", "write")]  # ... one outcome
    store.close()


def test_hook_on_commit_invariant(tmp_path: Path, plugins, caplog: pytest.LogCaptureFixture) -> None:
    store = open_with(tmp_path / "a.db", "t_checker", "t_recorder")
    with caplog.at_level(logging.WARNING, logger="corestore.store"):
        with store.transaction():
            store.database.execute_sql("create table t(x)")
    assert "post-commit invariant violated (the data is committed): t_checker.tables: 1 objects" in caplog.text
    assert hooks_of("t_recorder", "on_fatal") == [("t_recorder", "on_fatal", "INVARIANT", "write")]
    assert store.stats()["violations"] == 1
    store.database.execute_sql("insert into t values (1)")  # an autocommit write is a commit too
    with store.read():
        store.database.execute_sql("select * from t").fetchall()
    assert len(hooks_of("t_recorder", "on_commit_invariant")) == 2  # writes only
    store.close()
    raising = corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("t_checker",),
                                     settings={"t_checker": {"raise_it": True}}))
    raising.database.execute_sql  # noqa: B018
    with pytest.raises(InvariantViolation) as info:
        raising.run(lambda: raising.database.execute_sql("create table if not exists u(x)") and "the result")
    assert info.value.committed is True and info.value.result == "the result"
    assert raising.stats()["retries"] == 0  # never retried: the data is durable
    assert "u" in raising.database.get_tables()
    raising.close()


def test_hook_on_health(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_raiser", "t_recorder", "t_toggle")
    report = store.health()
    assert set(report.components) == {"database", "sqlite_version", "t_raiser", "t_recorder", "t_toggle"}
    assert report.components["t_raiser"].status is HealthStatus.UNKNOWN
    assert "t_raiser on_health" in report.components["t_raiser"].summary
    assert report.components["t_recorder"].summary == "rec"
    assert report.status is HealthStatus.UP  # UNKNOWN never outranks UP
    store.plugin("t_toggle").status = HealthStatus.DEGRADED
    assert store.health().status is HealthStatus.DEGRADED
    store.plugin("t_toggle").status = HealthStatus.DOWN
    assert store.health().to_dict()["status"] == "down"
    store.close()


def test_hook_on_health_changed(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_raiser", "t_recorder", "t_toggle")
    store.health()
    store.health()
    toggle = store.plugin("t_toggle")
    toggle.status = HealthStatus.DOWN
    store.health()
    store.health()
    toggle.status = HealthStatus.UP
    store.health()
    assert [e[2:] for e in hooks_of("t_recorder", "on_health_changed")] == [("UP", "DOWN"), ("DOWN", "UP")]
    store.close()


def test_hook_on_health_changed_exactly_once_under_threads(tmp_path: Path, plugins) -> None:
    import threading

    store = open_with(tmp_path / "a.db", "t_recorder", "t_toggle")
    store.health()
    store.plugin("t_toggle").status = HealthStatus.DOWN
    barrier = threading.Barrier(8)

    def check() -> None:
        barrier.wait()
        store.health()

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e[2:] for e in hooks_of("t_recorder", "on_health_changed")] == [("UP", "DOWN")]
    store.close()


def test_hook_on_persistent_failure(tmp_path: Path, plugins) -> None:
    """The core's caller for plugins that escalate: isolated, every implementation runs."""
    store = open_with(tmp_path / "a.db", "t_raiser", "t_recorder")
    store.hooks.on_persistent_failure(store, store.health())
    assert hooks_of("t_recorder", "on_persistent_failure") == [("t_recorder", "on_persistent_failure", "UP")]
    store.close()


def test_hook_on_close(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_raiser", "t_recorder")
    again = open_with(tmp_path / "a.db", "t_raiser", "t_recorder")
    assert again is store
    store.close()
    assert hooks_of("t_recorder", "on_close") == []  # one reference still held
    again.close()
    assert hooks_of("t_recorder", "on_close") == [("t_recorder", "on_close")]  # t_raiser raised first; isolated
    again.close()
    assert len(hooks_of("t_recorder", "on_close")) == 1


def test_hook_on_fork_child(tmp_path: Path, install_plugins) -> None:
    """A real os.fork() (the child reports through a pipe; the parent waits with a deadline and
    kills a child that overstays): in the child, each inherited store's plugins get
    on_fork_child once, after the core's reset; one that raises is logged and skipped; the
    parent gets no call; accounting (which implements it) starts empty in the child."""
    import os

    import plugin_fork

    install_plugins(t_fork_raiser="plugin_fork:ForkRaiser", t_fork_recorder="plugin_fork:ForkRecorder")
    plugin_fork.CALLS.clear()
    store = corestore.open(Profile(path=str(tmp_path / "hook.db"), plugins=("t_fork_raiser", "t_fork_recorder", "accounting"),
                                   pragmas={"journal_mode": "wal"}),
                           setup=lambda s: s.database.execute_sql("CREATE TABLE usage (n INTEGER)"))
    acc = store.plugin("accounting")
    acc.submit("usage", {"n": 1})
    assert acc.flush(10)
    report = fork_report(lambda: {"calls": [list(c) for c in plugin_fork.CALLS], "pid": os.getpid(),
                                  "accepted": store.plugin("accounting").stats()["accepted"]})
    assert report["calls"] == [["t_fork_recorder", report["pid"], store.path]]
    assert report["accepted"] == 0  # the parent's rows stay with the parent's writer
    assert plugin_fork.CALLS == []  # never in the parent
    assert acc.stats()["accepted"] == 1
    store.close()
