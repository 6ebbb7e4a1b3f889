"""Multiprocess writers: 20 processes × 220 single-row inserts through ``store.run()`` (default
profile) against raw ``sqlite3`` with the same pragmas and ``BEGIN IMMEDIATE``.

The workload of incident 003's smoke test. Every sample starts from a fresh database file (schema
created before the workers start), the workers open their connection or store, wait at a
barrier, then insert; the sample is the wall time from the first worker's start to the last
worker's end (``time.monotonic`` is system-wide on Linux and macOS). Process creation and opening
are outside the timed region. After each sample the row count and ``PRAGMA integrity_check`` are
verified. Run with ``synchronous`` NORMAL and FULL (the default profile's own setting).
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import sys
import time
from typing import Any

import attrs

import corestore
from corestore.profiles import resolve_profile

from ._runner import bench_dir, measure_pairs, missing_plugins, pair_row, skipped_row

__all__ = ["run"]

SCHEMA = "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, worker INTEGER NOT NULL, n INTEGER NOT NULL, payload TEXT)"
INSERT = "INSERT INTO event (worker, n, payload) VALUES (?, ?, ?)"
PAYLOAD = "y" * 64
_BARRIER_TIMEOUT_S = 60.0


def _ordered_pragmas(pragmas: Any) -> list[tuple[str, Any]]:
    """busy_timeout first, journal_mode last: the order the core applies them in."""
    items = dict(pragmas)
    first = [("busy_timeout", items.pop("busy_timeout"))] if "busy_timeout" in items else []
    last = [("journal_mode", items.pop("journal_mode"))] if "journal_mode" in items else []
    return first + sorted(items.items()) + last


def _raw_worker(path: str, pragmas: list[tuple[str, Any]], worker: int, n: int, barrier: Any, results: Any) -> None:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        for name, value in pragmas:
            conn.execute(f"PRAGMA {name} = {value}")
        barrier.wait(_BARRIER_TIMEOUT_S)
        start = time.monotonic()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(INSERT, (worker, i, PAYLOAD))
            conn.execute("COMMIT")
        end = time.monotonic()
        conn.close()
        results.put((worker, start, end, None))
    except BaseException as err:  # reported to the parent, which fails the sample
        results.put((worker, 0.0, 0.0, f"{type(err).__name__}: {err}"))


def _store_worker(profile: corestore.Profile, worker: int, n: int, barrier: Any, results: Any) -> None:
    try:
        store = corestore.open(profile)
        execute = store.database.execute_sql
        barrier.wait(_BARRIER_TIMEOUT_S)
        start = time.monotonic()
        for i in range(n):
            store.run(lambda i=i: execute(INSERT, (worker, i, PAYLOAD)))
        end = time.monotonic()
        retries = store.stats()["retries"]
        store.close()
        results.put((worker, start, end, None, retries))
    except BaseException as err:
        results.put((worker, 0.0, 0.0, f"{type(err).__name__}: {err}", 0))


class _Runner:
    """Runs one sample at a time for one side and one synchronous mode, in fresh files."""

    def __init__(self, root: str, profile: corestore.Profile, *, processes: int, inserts: int) -> None:
        self.root = root
        self.profile = profile
        self.processes = processes
        self.inserts = inserts
        self.ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.counter = 0
        self.retries = 0

    def _fresh(self, side: str) -> str:
        self.counter += 1
        path = os.path.join(self.root, f"{side}-{self.counter}.db")
        conn = sqlite3.connect(path, isolation_level=None)
        for name, value in _ordered_pragmas(self.profile.pragmas):
            conn.execute(f"PRAGMA {name} = {value}")
        conn.execute(SCHEMA)
        conn.close()
        return path

    def _sample(self, side: str) -> float:
        path = self._fresh(side)
        barrier = self.ctx.Barrier(self.processes)
        results = self.ctx.Queue()
        procs = []
        for w in range(self.processes):
            if side == "raw":
                args: tuple[Any, ...] = (path, _ordered_pragmas(self.profile.pragmas), w, self.inserts, barrier, results)
                target = _raw_worker
            else:
                args = (attrs.evolve(self.profile, path=path), w, self.inserts, barrier, results)
                target = _store_worker
            p = self.ctx.Process(target=target, args=args, daemon=True)
            p.start()
            procs.append(p)
        got = [results.get(timeout=_BARRIER_TIMEOUT_S + 120) for _ in procs]
        for p in procs:
            p.join(30)
        errors = [g[3] for g in got if g[3]]
        if errors:
            raise RuntimeError(f"{side} workers failed: {errors[:3]}")
        if side != "raw":
            self.retries += sum(g[4] for g in got)
        wall = max(g[2] for g in got) - min(g[1] for g in got)
        self._verify(path)
        self._remove(path)
        return wall

    def _verify(self, path: str) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            count = conn.execute("SELECT count(*) FROM event").fetchone()[0]
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        expected = self.processes * self.inserts
        if count != expected or check != "ok":
            raise RuntimeError(f"{path}: {count}/{expected} rows, integrity_check {check!r}")

    @staticmethod
    def _remove(path: str) -> None:
        for suffix in ("", "-wal", "-shm", ".corestore-lock"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass

    def raw(self) -> float:
        return self._sample("raw")

    def corestore(self) -> float:
        return self._sample("corestore")


def measure(profile: corestore.Profile, label: str, *, processes: int, inserts: int, pairs: int,
            target: str = "<= 1.3") -> dict[str, Any]:
    """One row: ``processes`` × ``inserts`` through ``store.run()`` against raw sqlite3."""
    root = bench_dir("multiprocess")
    sync = profile.pragmas.get("synchronous")
    try:
        runner = _Runner(root, profile, processes=processes, inserts=inserts)
        samples = measure_pairs(runner.raw, runner.corestore, pairs=pairs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return pair_row(
        label, samples, target=target, unit="s", baseline=f"raw sqlite3, BEGIN IMMEDIATE, synchronous={sync}",
        corestore=f"store.run(), {profile.name} profile, synchronous={sync}", processes=processes, inserts_per_process=inserts,
        pragmas=dict(profile.pragmas), plugins=list(profile.plugins), corestore_retries=runner.retries,
    )


def run(quick: bool) -> dict[str, Any]:
    processes, inserts = (8, 25) if quick else (20, 220)
    base = resolve_profile("default", config=None, path="")
    rows = []
    why = missing_plugins(base.plugins)
    for sync in ("normal", "full"):
        name = f"multiprocess.{sync}"
        if why:
            rows.append(skipped_row(name, why, target="<= 1.3"))
            continue
        profile = attrs.evolve(base, pragmas={**base.pragmas, "synchronous": sync})
        pairs = 15 if sync == "normal" and not quick else 7  # NORMAL samples are short and noisy: more pairs
        rows.append(measure(profile, name, processes=processes, inserts=inserts, pairs=pairs))
    return {"rows": rows, "notes": [f"{processes} processes × {inserts} single-row inserts per sample; "
                                    "wall time from the first worker's start to the last worker's end"]}
