"""PostgreSQL: the hot path against bare peewee, and accounting against a transaction per row.

The server is ``$CORESTORE_BENCH_POSTGRES_URL``, else ``$CORESTORE_TEST_POSTGRES_URL``, else
``postgresql://127.0.0.1:5432/test``; every row is skipped with the reason when psycopg 3 is not
installed, no server answers, or this checkout has no PostgreSQL backend. The benchmark works in
a schema of its own (``corestore_bench_<pid>``), dropped at the end; both sides of a pair talk to
the same server over the same kind of connection (TCP to the URL's host), so the network round
trips (three per single-row transaction: BEGIN, INSERT, COMMIT) are the same on both sides and the
ratio shows what corestore adds to them.

* ``postgres.hotpath.minimal``: single-row write transactions, ``store.transaction()`` with no
  plugins against peewee's ``db.atomic()`` on the same server (``PostgresqlDatabase`` with
  psycopg 3; peewee 3.17: ``playhouse.psycopg3_ext.Psycopg3Database``), both sessions with
  ``synchronous_commit=off`` (as SQLite's hot path runs ``synchronous=NORMAL``: the commit does
  not wait for the disk, so what the store adds is not hidden under a flush). Target <= 1.05.
* ``postgres.hotpath.default``: the same with the built-in ``postgresql`` profile (the default
  for a PostgreSQL URL). Target <= 1.05.
* ``postgres.hotpath.default_durable``: the ``postgresql`` profile with the server's own
  ``synchronous_commit`` (``on``: every COMMIT waits for the WAL flush) against peewee the same.
  Reported: what durability costs per transaction, and how much of it is corestore's.
* ``postgres.hotpath.minimal.client_cpu`` and ``.default.client_cpu``: the same samples' CPU time
  of this process (``time.process_time``): what corestore adds to the client's work, less
  disturbed by other load on the machine than the wall time. Reported.
* ``postgres.accounting.vs_row_per_txn``: writer throughput of the ``accounting`` plugin on a
  PostgreSQL store against incident 004's pattern on PostgreSQL (a ``queue.Queue`` and a thread
  committing one transaction per row with psycopg). Ratio in seconds per row, so "10x the
  throughput" is <= 0.1. Skipped with the reason while the plugin does not run on PostgreSQL.
"""
from __future__ import annotations

import os
import queue
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import peewee

from ._runner import PairSamples, measure_pairs, pair_row, skipped_row

__all__ = ["run", "server_url", "baseline_database"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
PAYLOAD = "x" * 64
HOTPATH_TARGET = "<= 1.05"
ACCOUNTING_TARGET = 0.1


def server_url() -> str:
    """The server the benchmark uses (see the module docstring)."""
    return (os.environ.get("CORESTORE_BENCH_POSTGRES_URL") or os.environ.get("CORESTORE_TEST_POSTGRES_URL")
            or DEFAULT_URL)


def _unavailable(url: str) -> str | None:
    """None when psycopg 3, a server at ``url`` and the PostgreSQL backend are all there, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg 3 is not installed (pip install 'corestore[postgresql]')"
    from corestore.doctor_postgres import redact_url

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as err:
        return f"no PostgreSQL server at {redact_url(url)} ({type(err).__name__})"
    try:
        import corestore.backends.postgresql  # noqa: F401
    except ImportError as err:
        return f"this checkout has no PostgreSQL backend ({err})"
    return None


def baseline_database(url: str) -> peewee.Database:
    """Bare peewee on psycopg 3, as a user would write it, from the URL's parts."""
    parts = urllib.parse.urlsplit(url)
    params: dict[str, Any] = {k: v for k, v in (("host", parts.hostname), ("port", parts.port),
                                                ("user", parts.username), ("password", parts.password)) if v}
    name = parts.path.lstrip("/") or "postgres"
    if int(peewee.__version__.split(".")[0]) >= 4:
        return peewee.PostgresqlDatabase(name, prefer_psycopg3=True, **params)
    from playhouse.psycopg3_ext import Psycopg3Database

    return Psycopg3Database(name, **params)


class _Schema:
    """A schema of the benchmark's own on the server, dropped at the end."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.name = f"corestore_bench_{os.getpid()}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
            conn.execute(f"CREATE SCHEMA {self.name}")

    @property
    def scoped_url(self) -> str:
        """The URL with ``search_path`` set to this schema: whatever a store creates on its own
        (the accounting plugin's batch table) lands here and is dropped with it."""
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, v) for k, v in query if k != "options"] + [("options", f"-csearch_path={self.name}")]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def table(self, name: str, columns: str) -> str:
        import psycopg

        qualified = f"{self.name}.{name}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {qualified}")
            conn.execute(f"CREATE TABLE {qualified} ({columns})")
        return qualified

    def count(self, qualified: str) -> int:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM {qualified}").fetchone()
        return int(row[0]) if row else -1

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")


# -- the hot path ---------------------------------------------------------------------------------------
_EVENT = "id bigserial PRIMARY KEY, kind text NOT NULL, n integer NOT NULL, payload text"


def _profiles(url: str, label: str, *, durable: bool) -> Any:
    """The store's profile for a hot-path row: the built-in ``postgresql`` profile (``minimal``:
    without its plugins), with ``synchronous_commit=off`` unless ``durable``."""
    import attrs

    from corestore.profiles import resolve_profile

    profile = resolve_profile("postgresql", config=None, path=url)
    if label == "minimal":
        profile = attrs.evolve(profile, name="bench-minimal", plugins=())
    if not durable:
        profile = attrs.evolve(profile, server_settings={**profile.server_settings, "synchronous_commit": "off"})
    return profile


def _hotpath(url: str, schema: _Schema, label: str, *, durable: bool, n: int, pairs: int,
             target: str) -> list[dict[str, Any]]:
    """The wall-time row and the client-CPU row of one hot-path comparison."""
    import corestore

    table_b = schema.table(f"event_{label}_peewee", _EVENT)
    table_c = schema.table(f"event_{label}_corestore", _EVENT)
    db = baseline_database(url)
    db.connect()
    profile = _profiles(schema.scoped_url, "minimal" if label == "minimal" else "default", durable=durable)
    store = corestore.open(profile)
    try:
        if not durable:
            db.execute_sql("SET synchronous_commit = off")
        sync_b = db.execute_sql("SHOW synchronous_commit").fetchone()[0]
        sync_c = store.database.execute_sql("SHOW synchronous_commit").fetchone()[0]
        if sync_b != sync_c:
            raise RuntimeError(f"synchronous_commit differs: peewee {sync_b}, corestore {sync_c}")
        insert_b = f"INSERT INTO {table_b} (kind, n, payload) VALUES (%s, %s, %s)"
        insert_c = f"INSERT INTO {table_c} (kind, n, payload) VALUES (%s, %s, %s)"

        cpu = PairSamples()  # this process's CPU time per sample, beside the wall time

        def baseline() -> float:
            atomic, execute = db.atomic, db.execute_sql
            cpu0, start = time.process_time(), time.perf_counter()
            for i in range(n):
                with atomic():
                    execute(insert_b, ("hot", i, PAYLOAD))
            elapsed = time.perf_counter() - start
            cpu.baseline.append(time.process_time() - cpu0)
            return elapsed

        def with_corestore() -> float:
            transaction, execute = store.transaction, store.database.execute_sql
            cpu0, start = time.process_time(), time.perf_counter()
            for i in range(n):
                with transaction():
                    execute(insert_c, ("hot", i, PAYLOAD))
            elapsed = time.perf_counter() - start
            cpu.corestore.append(time.process_time() - cpu0)
            return elapsed

        samples = measure_pairs(baseline, with_corestore, pairs=pairs)
        cpu.baseline, cpu.corestore = cpu.baseline[-pairs:], cpu.corestore[-pairs:]  # without the warm-up
        cpu.baseline_first = list(samples.baseline_first)
        expected = n * (pairs + 1)  # + the warm-up pair
        rows_b, rows_c = schema.count(table_b), schema.count(table_c)
        if rows_b != expected or rows_c != expected:
            raise RuntimeError(f"row counts: peewee {rows_b}, corestore {rows_c}, expected {expected}")
    finally:
        store.close()
        db.close()
    row = pair_row(
        f"postgres.hotpath.{label}", samples, target=target, unit="µs/tx", scale=1e6 / n,
        baseline=f"peewee {type(db).__name__}.atomic(), psycopg 3, synchronous_commit={sync_b}",
        corestore=f"store.transaction(), {profile.name} profile, synchronous_commit={sync_c}",
        transactions_per_sample=n, plugins=list(profile.plugins),
    )
    cpu_row = pair_row(
        f"postgres.hotpath.{label}.client_cpu", cpu, target="report", unit="µs CPU/tx", scale=1e6 / n,
        baseline="peewee: this process's CPU time (time.process_time)", corestore="corestore: the same",
        note="the client's share of the transaction; the rest is the server and the round trips",
        transactions_per_sample=n,
    )
    return [row, cpu_row]


# -- accounting -------------------------------------------------------------------------------------------
_USAGE = "id bigserial PRIMARY KEY, kind text NOT NULL, model text, tokens integer, cost double precision, ts double precision"


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"kind": "chat", "model": "m-1", "tokens": i, "cost": i * 1e-5} for i in range(n)]


def _row_per_txn(url: str, table: str, rows: list[dict[str, Any]]) -> tuple[float, float, int]:
    """Incident 004's pattern on PostgreSQL: put_nowait on a queue.Queue, one writer thread,
    a transaction per row (psycopg, BEGIN/INSERT/COMMIT)."""
    import psycopg

    conn = psycopg.connect(url, autocommit=False)
    insert = f"INSERT INTO {table} (kind, model, tokens, cost, ts) VALUES (%s, %s, %s, %s, %s)"
    q: queue.Queue[Any] = queue.Queue()

    def writer() -> None:
        while True:
            item = q.get()
            if item is None:
                q.task_done()
                return
            row, ts = item
            conn.execute(insert, (row["kind"], row["model"], row["tokens"], row["cost"], ts))
            conn.commit()
            q.task_done()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    put, now = q.put_nowait, time.time
    start = time.perf_counter()
    for row in rows:
        put((row, now()))
    produced = time.perf_counter()
    remaining = q.qsize()
    q.put(None)
    q.join()
    done = time.perf_counter()
    thread.join(60)
    conn.close()
    return done - produced, done - start, remaining


def _accounting_model(table: str) -> type[peewee.Model]:
    schema, name = table.split(".", 1)

    class Usage(peewee.Model):
        kind = peewee.TextField()
        model = peewee.TextField(null=True)
        tokens = peewee.IntegerField(null=True)
        cost = peewee.FloatField(null=True)
        ts = peewee.FloatField(null=True)

        class Meta:
            table_name = name

    Usage._meta.schema = schema
    return Usage


def _accounting(url: str, table: str, rows: list[dict[str, Any]]) -> tuple[float, float, int]:
    """corestore: ``acc.submit(Model, row)`` on a PostgreSQL store with the accounting plugin,
    then ``flush()``."""
    import corestore

    profile = corestore.Profile(url=url, name="bench-accounting", plugins=("accounting",),
                                settings={"accounting": {"queue_size": len(rows) + 1, "ts_column": "ts"}})
    store = corestore.open(profile)
    try:
        acc = store.plugin("accounting")
        submit, model = acc.submit, _accounting_model(table)
        start = time.perf_counter()
        for row in rows:
            submit(model, row)
        produced = time.perf_counter()
        remaining = acc.stats()["pending"]
        if not acc.flush(120):
            raise RuntimeError("accounting: flush() timed out")
        done = time.perf_counter()
    finally:
        store.close()
    return done - produced, done - start, remaining


class _Sampler:
    """One flavour per call on an emptied table; the value is seconds per row drained."""

    def __init__(self, url: str, schema: _Schema, label: str, n: int,
                 fn: Callable[[str, str, list[dict[str, Any]]], tuple[float, float, int]]) -> None:
        self.url, self.schema, self.label, self.n, self.fn = url, schema, label, n, fn
        self.rows = _rows(n)
        self.end_to_end: list[float] = []

    def __call__(self) -> float:
        table = self.schema.table(f"usage_{self.label}", _USAGE)
        drain_s, total_s, remaining = self.fn(self.url, table, self.rows)
        written = self.schema.count(table)
        if written != self.n:
            raise RuntimeError(f"{self.label}: {written} rows written, expected {self.n}")
        self.end_to_end.append(total_s / self.n)
        return drain_s / max(1, remaining)


def _accounting_row(url: str, schema: _Schema, *, n: int, pairs: int) -> dict[str, Any]:
    name = "postgres.accounting.vs_row_per_txn"
    target = f"<= {ACCOUNTING_TARGET}"
    try:
        _accounting(schema.scoped_url, schema.table("usage_probe", _USAGE), _rows(10))
    except Exception as err:  # the plugin is not ready for PostgreSQL: say so, measure the rest
        return skipped_row(name, f"accounting on PostgreSQL does not run here: {type(err).__name__}: {err}",
                           target=target)
    base = _Sampler(url, schema, "base", n, _row_per_txn)
    ours = _Sampler(schema.scoped_url, schema, "acc", n, _accounting)
    samples = measure_pairs(base, ours, pairs=pairs)
    e2e = PairSamples()
    e2e.baseline, e2e.corestore = base.end_to_end[-pairs:], ours.end_to_end[-pairs:]
    e2e.baseline_first = list(samples.baseline_first)
    return pair_row(
        name, samples, target=target, unit="µs/row (drain)", scale=1e6,
        baseline="queue.Queue + one transaction per row (psycopg)", corestore="accounting.submit(Model, row) + flush()",
        note=f"target >= {1 / ACCOUNTING_TARGET:.0f}x writer throughput", rows_per_sample=n,
        speedup=1 / statistics.median(samples.ratios),
        end_to_end_speedup=1 / statistics.median(e2e.ratios),
    )


def run(quick: bool) -> dict[str, Any]:
    url = server_url()
    names = (("postgres.hotpath.minimal", HOTPATH_TARGET), ("postgres.hotpath.default", HOTPATH_TARGET),
             ("postgres.hotpath.default_durable", "report"),
             ("postgres.accounting.vs_row_per_txn", f"<= {ACCOUNTING_TARGET}"))
    why = _unavailable(url)
    if why:
        return {"rows": [skipped_row(name, why, target=t) for name, t in names], "notes": []}
    # a durable commit waits for the server's WAL flush (milliseconds on a virtual disk): those
    # samples are short, and the quick run keeps to a few hundred of them
    n = 100 if quick else 2000
    n_durable = 15 if quick else 200
    n_acc = 60 if quick else 3000
    pairs = 7 if quick else 11
    schema = _Schema(url)
    rows: list[dict[str, Any]] = []
    try:
        rows += _hotpath(url, schema, "minimal", durable=False, n=n, pairs=pairs, target=HOTPATH_TARGET)
        rows += _hotpath(url, schema, "default", durable=False, n=n, pairs=pairs, target=HOTPATH_TARGET)
        rows += _hotpath(url, schema, "default_durable", durable=True, n=n_durable, pairs=pairs, target="report")[:1]
        rows.append(_accounting_row(url, schema, n=n_acc, pairs=pairs))
    finally:
        schema.drop()
    return {"rows": rows, "notes": [
        f"{n} single-row transactions per hot-path sample ({n_durable} durable), one INSERT each through "
        "execute_sql; "
        f"{n_acc} rows per accounting sample; server {_server_version(url)}, over TCP to the URL's host",
    ]}


def _server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0]}" if row else "PostgreSQL"
