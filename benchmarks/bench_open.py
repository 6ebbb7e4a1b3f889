"""Store open: what a call pays to get its database, against opening it the way incident 002's
service did on every call (a new peewee connection, the pragmas, the schema's ``CREATE ... IF NOT
EXISTS`` statements).

* ``open.cached``: ``corestore.open(path)`` while the store is already open in the process: the
  cache hit every call after the first one takes (resolve the path and profile, one dictionary
  lookup, one more reference).
* ``open.fresh``: ``corestore.open(path, setup=create_schema)`` of a database path this process
  has not opened before (a process that has opened others: imports, entry points and the plugin
  classes' hook tables are warm), on an existing WAL database with the schema (made beforehand
  with plain ``sqlite3``): plugins built, the first connection opened with the pragmas and
  ``on_open`` hooks, ``setup`` run under the cross-process init lock.

Both against the same baseline, on an existing WAL database; only the open is timed (closing is
not). Reported, no target: the point is the ratio between the two rows.

* ``open.breaker_rejected``: once a store is open, the cheapest thing it can do is refuse: a
  ``store.transaction()`` refused by an open circuit breaker (forced open with ``isolate()``), the
  whole caller's path timed (``bench_breaker.rejected_call_seconds``). Target <= 5 µs per call;
  the breaker benchmark compares the same refusal with a committed write.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import attrs
import peewee

import corestore
from corestore.profiles import resolve_profile

from ._runner import bench_dir, measure_pairs, missing_plugins, pair_row, skipped_row, value_row

__all__ = ["run", "DDL"]

DDL = (
    "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES account (id), "
    "kind TEXT NOT NULL, ts REAL NOT NULL, payload TEXT)",
    "CREATE INDEX IF NOT EXISTS event_account_ts ON event (account_id, ts)",
    "CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, tokens INTEGER NOT NULL)",
)


def create_schema(store: corestore.Store) -> None:
    """The ``setup=`` callable: the schema, idempotent."""
    for statement in DDL:
        store.database.execute_sql(statement)


def _peewee_open_factory(path: str, pragmas: dict[str, Any]) -> Callable[[], tuple[float, Any]]:
    ordered = sorted(pragmas.items(), key=lambda kv: kv[0] != "busy_timeout")

    def open_once() -> tuple[float, Any]:
        start = time.perf_counter()
        db = peewee.SqliteDatabase(path, pragmas=ordered)
        db.connect()
        for statement in DDL:
            db.execute_sql(statement)
        return time.perf_counter() - start, db

    return open_once


def _existing_databases(root: str, n: int) -> list[str]:
    """``n`` WAL databases with the schema, made with plain ``sqlite3`` (never opened by corestore)."""
    paths = []
    for i in range(n):
        path = os.path.join(root, f"fresh-{i}.db")
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = wal")
            for statement in DDL:
                conn.execute(statement)
        finally:
            conn.close()
        paths.append(path)
    return paths


def _measure(profile: corestore.Profile, *, quick: bool, root: str) -> list[dict[str, Any]]:
    peewee_open = _peewee_open_factory(os.path.join(root, "peewee.db"), dict(profile.pragmas))
    first = corestore.open(profile, setup=create_schema)  # creates the file, WAL, schema
    first.close()
    n_fresh = 10 if quick else 40
    n_cached = 500 if quick else 5000
    pairs = 7 if quick else 11

    def peewee_per_call(n: int) -> Callable[[], float]:
        def sample() -> float:
            total = 0.0
            for _ in range(n):
                elapsed, db = peewee_open()
                total += elapsed
                db.close()
            return total / n
        return sample

    fresh_paths = iter(_existing_databases(root, n_fresh * (pairs + 2)))

    def fresh() -> float:
        total = 0.0
        for _ in range(n_fresh):
            target = attrs.evolve(profile, path=next(fresh_paths))
            start = time.perf_counter()
            store = corestore.open(target, setup=create_schema)
            total += time.perf_counter() - start
            store.close()
        return total / n_fresh

    holder = corestore.open(profile, setup=create_schema)  # keeps the store cached

    def cached() -> float:
        opened = []
        start = time.perf_counter()
        for _ in range(n_cached):
            opened.append(corestore.open(profile, setup=create_schema))
        elapsed = time.perf_counter() - start
        for store in opened:
            store.close()
        return elapsed / n_cached

    try:
        cached_samples = measure_pairs(peewee_per_call(n_fresh), cached, pairs=pairs)
    finally:
        holder.close()
    fresh_samples = measure_pairs(peewee_per_call(n_fresh), fresh, pairs=pairs)
    common = dict(baseline="peewee connect + pragmas + schema", unit="µs/open", scale=1e6, target="report",
                  plugins=list(profile.plugins))
    return [
        pair_row("open.cached", cached_samples, corestore=f"corestore.open(), cached [{profile.name}]",
                 opens_per_sample=n_cached, **common),
        pair_row("open.fresh", fresh_samples, corestore=f"corestore.open(setup=), fresh [{profile.name}]",
                 opens_per_sample=n_fresh, **common),
    ]


def _breaker_rejected(profile: corestore.Profile, *, quick: bool) -> dict[str, Any]:
    from .bench_breaker import rejected_call_seconds

    calls = 2000 if quick else 20000
    repeats = 7 if quick else 11
    store = corestore.open(profile, setup=create_schema)
    try:
        breaker = store.plugin("circuit_breaker")
        breaker.isolate("bench_open: measuring refusals")
        try:
            rejected_call_seconds(store, calls)  # warm-up
            values = [rejected_call_seconds(store, calls) for _ in range(repeats)]
        finally:
            breaker.reset()
    finally:
        store.close()
    return value_row("open.breaker_rejected", values, target="<= 5", unit="µs/call", scale=1e6,
                     label=f"store.transaction() refused by an open breaker [{profile.name}]", calls_per_sample=calls)


def run(quick: bool) -> dict[str, Any]:
    root = bench_dir("open")
    try:
        profile = resolve_profile("default", config=None, path=os.path.join(root, "corestore.db"))
        why = missing_plugins(profile.plugins)
        if why:
            rows = [skipped_row(name, why, target=target) for name, target in
                    (("open.cached", "report"), ("open.fresh", "report"), ("open.breaker_rejected", "<= 5"))]
        else:
            rows = _measure(profile, quick=quick, root=root)
            rows.append(_breaker_rejected(profile, quick=quick))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    notes = []
    if rows[0].get("status") == rows[1].get("status") == "ok":
        notes.append(f"a cached open costs {rows[0]['corestore_median']:.1f} µs, a fresh one "
                     f"{rows[1]['corestore_median']:.0f} µs ({rows[1]['corestore_median'] / rows[0]['corestore_median']:.0f}x)")
    return {"rows": rows, "notes": notes}
