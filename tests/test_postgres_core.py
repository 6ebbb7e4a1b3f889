"""The PostgreSQL backend against a real server: the store's API behaves as on SQLite.

Every test works in a schema of its own (the ``pg_url`` fixture, tests/pgserver.py) and skips
with the reason when no server answers (fails under CORESTORE_REQUIRE_POSTGRES=1).
"""
from __future__ import annotations

import threading
from pathlib import Path

import peewee
import pytest
from pgserver import admin_connect

import corestore
from corestore import ConfigError, ConstraintError, QueryError, ReadOnlyError
from corestore.backends import backend_for
from corestore.pg_initlock import AdvisoryInitLock, advisory_key


class Item(peewee.Model):
    name = peewee.CharField(unique=True)
    qty = peewee.IntegerField(default=0)


def test_open_url_gives_a_postgresql_store_with_the_postgresql_default(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        assert store.backend.name == "postgresql"
        assert store.profile.name == "postgresql"
        assert store.profile.plugins == ("circuit_breaker", "health")
        assert store.profile.engine == "postgresql"
        assert store.path.startswith("postgresql://")
        assert corestore.open(pg_url) is store  # the same URL and profile: one store per process
        store.close()
    finally:
        store.close()


def test_models_transaction_read_run_and_stats(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        store.bind([Item])
        Item.create_table()
        with store.transaction():
            Item.create(name="a", qty=1)
        assert store.run(lambda: Item.create(name="b", qty=2).id) == 2
        with store.read():
            assert [i.name for i in Item.select().order_by(Item.name)] == ["a", "b"]
        assert store.run(lambda: Item.select().count(), read=True) == 2
        with store.transaction():  # peewee's own atomic() nests as a savepoint
            with store.database.atomic():
                Item.create(name="c")
            try:
                with store.database.atomic():
                    Item.create(name="d")
                    raise RuntimeError("roll the savepoint back")
            except RuntimeError:
                pass
        assert sorted(i.name for i in Item.select()) == ["a", "b", "c"]
        stats = store.stats()
        assert stats["transactions"] >= 3 and stats["reads"] >= 2 and stats["connections"] == 1
    finally:
        store.close()


def test_a_failed_unit_is_rolled_back(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        store.bind([Item])
        Item.create_table()
        with pytest.raises(RuntimeError):
            with store.transaction():
                Item.create(name="x")
                raise RuntimeError("boom")
        assert Item.select().count() == 0
    finally:
        store.close()


def test_write_inside_read_is_a_caller_error(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        store.bind([Item])
        Item.create_table()
        with pytest.raises(ReadOnlyError) as info:
            with store.read():
                Item.create(name="nope")
        err = info.value
        assert err.committed is False
        assert err.classification is not None and err.classification.name == "WRITE_IN_READ"
        assert err.classification.sqlstate == "25006"
        assert store.stats()["faults"] == 0  # a caller error, not a storage fault
        assert Item.select().count() == 0
        with store.transaction():  # the connection writes again afterwards
            Item.create(name="yes")
        assert Item.select().count() == 1
    finally:
        store.close()


def test_constraint_and_programming_errors(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        store.bind([Item])
        Item.create_table()
        Item.create(name="a")
        with pytest.raises(ConstraintError) as info:
            with store.transaction():
                Item.create(name="a")
        assert isinstance(info.value, peewee.IntegrityError)
        assert info.value.classification is not None and info.value.classification.sqlstate == "23505"
        with pytest.raises(QueryError) as qinfo:
            store.database.execute_sql("SELECT * FROM no_such_table")
        assert qinfo.value.classification is not None and qinfo.value.classification.sqlstate == "42P01"
        with pytest.raises(ConstraintError) as dinfo:  # class 22: the data is wrong, as SQLite's MISMATCH
            store.database.execute_sql("SELECT 'x'::int")
        assert dinfo.value.classification is not None and dinfo.value.classification.sqlstate == "22P02"
        assert store.stats()["faults"] == 0
    finally:
        store.close()


def test_connections_per_thread_and_close(pg_url: str) -> None:
    store = corestore.open(pg_url)
    store.database.execute_sql("CREATE TABLE t (x int)")
    seen: list[int] = []

    def work(i: int) -> None:
        store.run(lambda: store.database.execute_sql("INSERT INTO t VALUES (%s)", (i,)))
        seen.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == [0, 1, 2, 3]
    assert store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 4
    store.close()
    assert store.stats()["connections"] == 0
    with pytest.raises(corestore.StoreClosedError):
        store.database.execute_sql("SELECT 1")


def test_health_reports_the_database_component(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        report = store.health()
        db = report.components["database"]
        assert db.status is corestore.HealthStatus.UP
        assert db.details["driver"] == "psycopg"
        assert "sqlite_version" not in report.components
    finally:
        store.close()


@pytest.mark.parametrize("plugin", ["wal_guard", "wal_invariants", "checkpoint_governor", "pragma_guard",
                                    "write_gate", "maintenance"])
def test_sqlite_only_plugins_refuse_a_postgresql_profile(pg_url: str, plugin: str) -> None:
    with pytest.raises(ConfigError, match=rf"plugin '{plugin}' works on sqlite only"):
        corestore.open(pg_url, enable=[plugin])
    with pytest.raises(ConfigError, match="profile 'default': pragmas journal_mode.* are SQLite's"):
        corestore.open(pg_url, profile="default")  # the SQLite default is not silently adapted


def test_checkpoint_and_backup_are_clear_errors(pg_url: str, tmp_path: Path) -> None:
    store = corestore.open(pg_url)
    try:
        with pytest.raises(ConfigError, match=r"checkpoint\(\) is not available on a postgresql store"):
            store.checkpoint()
        with pytest.raises(ConfigError, match=r"backup\(\) is not available on a postgresql store.*pg_dump"):
            store.backup(tmp_path / "copy.db")
        assert not (tmp_path / "copy.db").exists()
    finally:
        store.close()


def test_profile_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="pragmas journal_mode are SQLite's"):
        corestore.Profile(url="postgresql://h/db", pragmas={"journal_mode": "wal"})
    with pytest.raises(ConfigError, match="server_settings needs a PostgreSQL url"):
        corestore.Profile(path="x.db", server_settings={"statement_timeout": 5})
    with pytest.raises(ConfigError, match="not a PostgreSQL parameter name"):
        corestore.Profile(url="postgresql://h/db", server_settings={"x; drop": 1})
    with pytest.raises(ConfigError, match="driver = 'sqlite3' is not allowed for a PostgreSQL profile"):
        corestore.Profile(url="postgresql://h/db", driver="sqlite3")
    assert corestore.Profile(url="postgresql://h/db").driver == "psycopg"


def test_toml_binds_a_name_to_a_url_with_server_settings(pg_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "corestore.toml"
    cfg.write_text(f'[databases.main]\nurl = "{pg_url}"\n'
                   '[databases.main.server_settings]\nstatement_timeout = "1234ms"\n')
    store = corestore.open("main", config=cfg)
    try:
        assert store.profile.name == "postgresql"
        assert store.database.execute_sql("SHOW statement_timeout").fetchone()[0] == "1234ms"
    finally:
        store.close()
    shared = tmp_path / "shared.toml"  # server_settings in a profile, merged key by key with the binding's
    shared.write_text('[profiles.pg]\nextends = "postgresql"\n[profiles.pg.server_settings]\n'
                      'statement_timeout = "1s"\nlock_timeout = 500\n'
                      f'[databases.main]\nurl = "{pg_url}"\nprofile = "pg"\n'
                      '[databases.main.server_settings]\nlock_timeout = "2s"\n')
    store = corestore.open("main", config=shared)
    try:
        assert dict(store.profile.server_settings) == {"statement_timeout": "1s", "lock_timeout": "2s"}
        assert store.database.execute_sql("SHOW lock_timeout").fetchone()[0] == "2s"
    finally:
        store.close()
    sqlite_cfg = tmp_path / "sqlite.toml"
    sqlite_cfg.write_text('[profiles.pg]\n[profiles.pg.server_settings]\nlock_timeout = 5\n'
                          '[databases.file]\npath = "x.db"\nprofile = "pg"\n')
    with pytest.raises(ConfigError, match="server_settings needs a PostgreSQL url"):
        corestore.open("file", config=sqlite_cfg)
    bad = tmp_path / "bad.toml"
    bad.write_text('[databases.main]\nurl = "postgresql://h/db"\npath = "x.db"\n')
    with pytest.raises(ConfigError, match=r"\[databases.main\]: give either 'path' \(SQLite\) or 'url'"):
        corestore.open("main", config=bad)


def test_profiles_check_refuses_a_sqlite_plugin_on_a_url(pg_url: str, tmp_path: Path) -> None:
    from corestore.check import check_profile
    from corestore.profiles import load_config, resolve_profile

    cfg = tmp_path / "corestore.toml"
    cfg.write_text(f'[profiles.pg]\nextends = "postgresql"\nenable = ["wal_guard"]\n'
                   f'[databases.main]\nurl = "{pg_url}"\nprofile = "pg"\n')
    config = load_config(cfg)
    assert config is not None
    binding = config.databases["main"]
    profile = resolve_profile("pg", config=config, path=binding.path, binding=binding)
    with pytest.raises(ConfigError, match="plugin 'wal_guard' works on sqlite only"):
        check_profile(profile, extra=())


def test_init_lock_is_an_advisory_lock_with_a_bounded_wait(pg_url: str) -> None:
    store = corestore.open(pg_url)
    try:
        lock = store.init_lock_obj
        assert isinstance(lock, AdvisoryInitLock)
        assert lock.key == advisory_key(pg_url)
        with admin_connect() as other:  # another session holds the key
            assert other.execute("SELECT pg_try_advisory_lock(%s)", (lock.key,)).fetchone()[0]
            pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
            with pytest.raises(corestore.BusyError, match=rf"pg_advisory_lock\({lock.key}\).*0.2 s.*PID {pid}"):
                with store.init_lock(timeout_s=0.2):
                    pass
            other.execute("SELECT pg_advisory_unlock(%s)", (lock.key,))
        with store.init_lock(timeout_s=5):
            with store.init_lock(timeout_s=5):  # re-entrant in one thread
                with admin_connect() as third:
                    assert not third.execute("SELECT pg_try_advisory_lock(%s)", (lock.key,)).fetchone()[0]
        with admin_connect() as fourth:  # released after the block
            assert fourth.execute("SELECT pg_try_advisory_lock(%s)", (lock.key,)).fetchone()[0]
    finally:
        store.close()


def test_setup_runs_under_the_init_lock(pg_url: str) -> None:
    calls: list[str] = []

    def setup(store: corestore.Store) -> None:
        assert store.init_lock_obj._depth == 1
        store.database.execute_sql("CREATE TABLE IF NOT EXISTS s (x int)")
        calls.append("setup")

    store = corestore.open(pg_url, setup=setup)
    try:
        assert calls == ["setup"]
        assert store.database.execute_sql("SELECT count(*) FROM s").fetchone()[0] == 0
    finally:
        store.close()


def test_backend_for_chooses_by_url() -> None:
    assert backend_for(corestore.Profile(url="postgresql://h/db")).name == "postgresql"
    assert backend_for(corestore.Profile(path="x.db")).name == "sqlite"


def test_the_docs_snippet_runs(pg_url: str) -> None:
    from helpers import ROOT, child_env, run_python

    snippet = ROOT / "site" / "snippets" / "postgresql_open.py"
    done = run_python(snippet.read_text(), env=child_env(DATABASE_URL=pg_url), timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "{'ann': 70, 'bob': 30}"
    assert lines[1] == "refused: WRITE_IN_READ 25006"
    assert lines[2].endswith(" UP") and lines[2].startswith("postgresql://")


def test_peewee_transaction_api_through_the_store(pg_url: str) -> None:
    store = corestore.open(pg_url)
    db = store.database
    db.execute_sql("CREATE TABLE t (x int)")
    with db.atomic():
        db.execute_sql("INSERT INTO t VALUES (1)")
        with db.atomic():
            db.execute_sql("INSERT INTO t VALUES (2)")
    with db.atomic() as tx:
        db.execute_sql("INSERT INTO t VALUES (3)")
        tx.rollback()
    with db.manual_commit():
        db.begin()
        db.execute_sql("INSERT INTO t VALUES (4)")
        db.commit()
    db.begin()
    db.execute_sql("INSERT INTO t VALUES (5)")
    db.rollback()

    @db.atomic()
    def decorated() -> None:
        db.execute_sql("INSERT INTO t VALUES (6)")

    decorated()
    with db.transaction() as txn:
        db.execute_sql("INSERT INTO t VALUES (7)")
        txn.commit()
        db.execute_sql("INSERT INTO t VALUES (8)")
    assert db.execute_sql("SELECT array_agg(x ORDER BY x) FROM t").fetchone()[0] == [1, 2, 4, 6, 7, 8]
    schema = db.execute_sql("SELECT current_schema()").fetchone()[0]  # peewee 3.17 defaults to 'public'
    assert db.get_tables(schema=schema) == ["t"] and db.server_version >= 90600
    assert store.stats()["transactions"] >= 5
    store.close()


def test_both_backends_provide_the_whole_seam() -> None:
    from corestore.backends import Backend
    from corestore.backends.postgresql import BACKEND as PG
    from corestore.backends.sqlite import BACKEND as SQLITE

    members = [name for name in dir(Backend) if not name.startswith("_")] + list(Backend.__annotations__)
    for backend in (SQLITE, PG):
        missing = [name for name in members if not hasattr(backend, name)]
        assert not missing, (backend.name, missing)
    assert set(PG.begin_write) == set(SQLITE.begin_write)  # every lock type the store accepts
    assert PG.refusals.keys() == {"checkpoint", "backup"} and not SQLITE.refusals
