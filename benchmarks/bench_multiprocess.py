"""Multiprocess writers: 20 processes × 220 single-row inserts through ``store.run()`` (default
profile) against raw ``sqlite3`` with the same pragmas and ``BEGIN IMMEDIATE``.

The workload of incident 003's smoke test. Every sample starts from a fresh database file (schema
created before the workers start), the workers open their connection or store, wait at a
barrier, then insert; the sample is the wall time from the first worker's start to the last
worker's end (``time.monotonic`` is system-wide on Linux and macOS). Process creation and opening
are outside the timed region. After each sample the row count and ``PRAGMA integrity_check`` are
verified. Run with ``synchronous`` NORMAL and FULL (the default profile's own setting).

The ``contention.*`` rows (issue 19) compare raw ``sqlite3`` (``busy_timeout=5000``, ``BEGIN
IMMEDIATE``) with the default profile plus the ``write_gate`` plugin, for 20×220 and 4×5000 and both
``synchronous`` modes, and report for each side: throughput, the per-transaction latency measured
inside each worker (p50, p99, p99.9, max, over every transaction of the sample) and fairness, the
spread of the processes' finish times over the wall time (0: all finish together). Each figure is
the median over alternated pairs of its per-pair ratio (or, for the spread, of its per-sample value).
"""
from __future__ import annotations

import array
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import sys
import time
from typing import Any

import attrs

import corestore
from corestore.profiles import resolve_profile

from ._runner import PairSamples, bench_dir, evaluate, measure_pairs, missing_plugins, pair_row, skipped_row

__all__ = ["run"]

SCHEMA = "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, worker INTEGER NOT NULL, n INTEGER NOT NULL, payload TEXT)"
INSERT = "INSERT INTO event (worker, n, payload) VALUES (?, ?, ?)"
PAYLOAD = "y" * 64
_BARRIER_TIMEOUT_S = 60.0


def _with_gate(plugins: Any) -> tuple[str, ...]:
    """``plugins`` plus ``write_gate`` (already there in ``default`` on a SQLite with the WAL-reset bug)."""
    return tuple(plugins) + (() if "write_gate" in plugins else ("write_gate",))


def _without_gate(plugins: Any) -> tuple[str, ...]:
    return tuple(p for p in plugins if p != "write_gate")


def _ordered_pragmas(pragmas: Any) -> list[tuple[str, Any]]:
    """busy_timeout first, journal_mode last: the order the core applies them in."""
    items = dict(pragmas)
    first = [("busy_timeout", items.pop("busy_timeout"))] if "busy_timeout" in items else []
    last = [("journal_mode", items.pop("journal_mode"))] if "journal_mode" in items else []
    return first + sorted(items.items()) + last


def _begin_immediate(conn: sqlite3.Connection) -> int:
    """``BEGIN IMMEDIATE``, tried again after a BUSY that outlasted busy_timeout (what an
    application does; on a loaded machine SQLite's busy handler can starve a writer for 5 s).
    Returns how many BUSY errors it took."""
    busy = 0
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return busy
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", None) != 5:  # SQLITE_BUSY
                raise
            busy += 1


def _raw_worker(path: str, pragmas: list[tuple[str, Any]], worker: int, n: int, barrier: Any, results: Any) -> None:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        for name, value in pragmas:
            conn.execute(f"PRAGMA {name} = {value}")
        barrier.wait(_BARRIER_TIMEOUT_S)
        start = time.monotonic()
        for i in range(n):
            _begin_immediate(conn)
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


def _timed_raw_worker(path: str, pragmas: list[tuple[str, Any]], worker: int, n: int, barrier: Any, results: Any,
                      done: Any) -> None:
    """The raw side of the contention rows: every transaction timed inside the worker. A worker
    that has finished waits for the others (``done``) before it closes and exits, so its teardown
    (closing, interpreter exit: CPU) never competes with the writers still timed."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        for name, value in pragmas:
            conn.execute(f"PRAGMA {name} = {value}")
        lat = array.array("d", bytes(8 * n))
        clock = time.monotonic
        barrier.wait(_BARRIER_TIMEOUT_S)
        busy = 0
        start = clock()
        for i in range(n):
            t0 = clock()
            busy += _begin_immediate(conn)
            conn.execute(INSERT, (worker, i, PAYLOAD))
            conn.execute("COMMIT")
            lat[i] = clock() - t0
        end = clock()
        done.wait(_BARRIER_TIMEOUT_S + 120)
        conn.close()
        results.put((worker, start, end, None, busy, lat.tobytes()))
    except BaseException as err:  # reported to the parent, which fails the sample
        results.put((worker, 0.0, 0.0, f"{type(err).__name__}: {err}", 0, b""))


def _timed_store_worker(profile: corestore.Profile, worker: int, n: int, barrier: Any, results: Any,
                        done: Any) -> None:
    """The corestore side of the contention rows: ``store.run()`` per insert, each timed (and
    the same wait for the others before closing as the raw side)."""
    try:
        store = corestore.open(profile)
        execute = store.database.execute_sql
        lat = array.array("d", bytes(8 * n))
        clock = time.monotonic
        barrier.wait(_BARRIER_TIMEOUT_S)
        start = clock()
        for i in range(n):
            t0 = clock()
            store.run(lambda i=i: execute(INSERT, (worker, i, PAYLOAD)))
            lat[i] = clock() - t0
        end = clock()
        done.wait(_BARRIER_TIMEOUT_S + 120)
        retries = store.stats()["retries"]
        gate = store.plugin("write_gate") if "write_gate" in profile.plugins else None
        admitted = {k: gate.stats()[k] for k in _ADMISSIONS} if gate is not None else {}
        store.close()
        results.put((worker, start, end, None, retries, lat.tobytes(), admitted))
    except BaseException as err:
        results.put((worker, 0.0, 0.0, f"{type(err).__name__}: {err}", 0, b"", {}))


#: write_gate's admission counters summed over a sample's workers: ``waited`` is the number of
#: hand-offs (a writer woken for its turn), ``resumed`` the writes that kept their place.
_ADMISSIONS = ("immediate", "resumed", "waited", "timeouts")


def _percentile(sorted_values: Any, q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


class _Runner:
    """Runs one sample at a time for one side and one synchronous mode, in fresh files."""

    def __init__(self, root: str, profile: corestore.Profile, *, processes: int, inserts: int,
                 timed: bool = False) -> None:
        self.root = root
        self.profile = profile
        self.timed = timed
        self.metrics: dict[str, list[dict[str, float]]] = {"raw": [], "corestore": []}
        self.processes = processes
        self.inserts = inserts
        self.ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.counter = 0
        self.retries = 0
        self.raw_busy = 0  # raw BEGIN IMMEDIATE that failed with BUSY after busy_timeout (then tried again)

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
        done = self.ctx.Barrier(self.processes)
        results = self.ctx.Queue()
        procs = []
        for w in range(self.processes):
            if side == "raw":
                args: tuple[Any, ...] = (path, _ordered_pragmas(self.profile.pragmas), w, self.inserts, barrier, results)
                target = _timed_raw_worker if self.timed else _raw_worker
            else:
                args = (attrs.evolve(self.profile, path=path), w, self.inserts, barrier, results)
                target = _timed_store_worker if self.timed else _store_worker
            if self.timed:
                args += (done,)
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
        elif self.timed:
            self.raw_busy += sum(g[4] for g in got)
        wall = max(g[2] for g in got) - min(g[1] for g in got)
        if self.timed:
            self.metrics[side].append(self._metrics(got, wall))
        self._verify(path)
        self._remove(path)
        return wall

    def _metrics(self, got: list[Any], wall: float) -> dict[str, float]:
        lat = array.array("d")
        for g in got:
            lat.frombytes(g[5])
        ordered = sorted(lat)
        ends = [g[2] for g in got]
        admitted = {f"gate_{k}": float(sum(g[6].get(k, 0) for g in got if len(g) > 6)) for k in _ADMISSIONS}
        return {**admitted,
            "wall_s": wall,
            "throughput_tps": len(ordered) / wall if wall else float("nan"),
            "p50_ms": _percentile(ordered, 0.50) * 1e3,
            "p99_ms": _percentile(ordered, 0.99) * 1e3,
            "p999_ms": _percentile(ordered, 0.999) * 1e3,
            "max_ms": ordered[-1] * 1e3 if ordered else float("nan"),
            "spread": (max(ends) - min(ends)) / wall if wall else float("nan"),
        }

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
        for suffix in ("", "-wal", "-shm", ".corestore-lock", ".corestore-gate"):
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


#: The issue-19 targets: figure -> (target on the median of the per-pair ratio gate/raw, or on the
#: gate's own median for ``spread``). NORMAL and FULL differ only in the wall-time target.
_CONTENTION_TARGETS = {"p999_ms": "<= 0.2", "max_ms": "<= 0.2", "spread": "<= 0.3"}
_WALL_TARGET = {"normal": "<= 0.8", "full": "<= 1.0"}
_FIGURES = ("wall_s", "throughput_tps", "p50_ms", "p99_ms", "p999_ms", "max_ms", "spread")


def measure_contention(profile: corestore.Profile, sync: str, *, processes: int, inserts: int,
                       pairs: int, prefix: str = "contention") -> list[dict[str, Any]]:
    """Rows ``<prefix>.<sync>.<P>x<N>.<figure>``: raw sqlite3 against ``profile`` (a profile with
    ``write_gate``), alternated pairs, every figure from the same samples."""
    root = bench_dir("contention")
    try:
        runner = _Runner(root, profile, processes=processes, inserts=inserts, timed=True)
        measure_pairs(runner.raw, runner.corestore, pairs=pairs, warmup=0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raw, gate = runner.metrics["raw"], runner.metrics["corestore"]
    shape = f"{processes}x{inserts}"
    common = {"processes": processes, "inserts_per_process": inserts, "pragmas": dict(profile.pragmas),
              "plugins": list(profile.plugins), "corestore_retries": runner.retries,
              "raw_busy_errors": runner.raw_busy,
              "raw_medians": {f: statistics.median(m[f] for m in raw) for f in _FIGURES},
              "corestore_medians": {f: statistics.median(m[f] for m in gate) for f in _FIGURES},
              "gate_admissions_median": {f"{k}": statistics.median(m[f"gate_{k}"] for m in gate) for k in _ADMISSIONS},
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    base_label = f"raw sqlite3, busy_timeout=5000, BEGIN IMMEDIATE, synchronous={sync}"
    cs_label = f"store.run(), {profile.name} profile + write_gate, synchronous={sync}"
    rows: list[dict[str, Any]] = []
    units = {"wall_s": "s", "throughput_tps": "tx/s", "p50_ms": "ms", "p99_ms": "ms", "p999_ms": "ms",
             "max_ms": "ms", "spread": ""}
    for figure in _FIGURES:
        name = f"{prefix}.{sync}.{shape}.{figure}"
        target = _WALL_TARGET[sync] if figure == "wall_s" else _CONTENTION_TARGETS.get(figure)
        samples = PairSamples()
        for i, (b, c) in enumerate(zip(raw, gate, strict=True)):
            samples.baseline.append(b[figure])
            samples.corestore.append(c[figure])
            samples.baseline_first.append(i % 2 == 0)
        row = pair_row(name, samples, target=None if figure == "spread" else target, unit=units[figure],
                       baseline=base_label, corestore=cs_label,
                       note="higher is better" if figure == "throughput_tps" else "", **common)
        if figure == "spread":  # fairness is judged on the gate's own value, not on a ratio
            row["target"] = target
            row["met"] = evaluate(row["corestore_median"], target)
        rows.append(row)
    return rows


def measure_serial_floor(cases: dict[str, corestore.Profile | None], *, transactions: int, pairs: int,
                         raw_wall_s: float, wall_target: float, label: str, raw_pragmas: Any) -> dict[str, Any]:
    """Row ``<label>.serial_floor``: what the wall-time target asks of one writer at a time.

    With turns the gate admits one writer at a time for the whole of each ``store.run()`` (its
    place is kept between transactions), so a contention sample cannot take less than the time one
    process needs for all of its transactions in a row. This measures that, in one process on a
    fresh file, for raw sqlite3 (``None``) and each profile of ``cases`` (alternated rounds), and
    reports the floor ``transactions × µs/tx`` of the first gated case against ``wall_target`` ×
    ``raw_wall_s`` (the raw side's contention wall time of the same run): met means the target is
    within reach, not met shows it is out of reach before a single hand-off is paid.
    """
    root = bench_dir("gate-floor")
    per_tx: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for r in range(pairs):
            order = list(cases.items())
            order = order[r % len(order):] + order[:r % len(order)]
            for name, profile in order:
                per_tx[name].append(_serial_sample(root, profile, transactions, raw_pragmas))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {name: statistics.median(v) for name, v in per_tx.items()}
    gated = next(name for name, p in cases.items() if p is not None and "write_gate" in p.plugins)
    floor = medians[gated] * transactions
    target = wall_target * raw_wall_s
    return {
        "name": f"{label}.serial_floor", "status": "ok", "pairs": pairs, "unit": "s",
        "corestore_label": f"{gated}: {transactions} store.run() inserts by one process, in a row",
        "corestore_median": floor, "value": floor, "target": f"<= {target:.4g}", "met": floor <= target,
        "note": (f"wall-time target = {wall_target} x raw's contention wall time of this run ({raw_wall_s:.4g} s); "
                 "not met: out of reach with one writer admitted at a time"),
        "per_tx_us": {name: v * 1e6 for name, v in medians.items()},
        "floor_s": {name: v * transactions for name, v in medians.items()},
        "samples": {name: [x * 1e6 for x in v] for name, v in per_tx.items()},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _serial_sample(root: str, profile: corestore.Profile | None, transactions: int, raw_pragmas: Any) -> float:
    """Seconds per single-row insert transaction, one writer, a fresh file (raw sqlite3 if
    ``profile`` is None)."""
    path = os.path.join(root, f"floor-{time.monotonic_ns()}.db")
    try:
        if profile is None:
            conn = sqlite3.connect(path, isolation_level=None, timeout=0)
            for name, value in _ordered_pragmas(raw_pragmas):
                conn.execute(f"PRAGMA {name} = {value}")
            conn.execute(SCHEMA)
            start = time.perf_counter()
            for i in range(transactions):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(INSERT, (0, i, PAYLOAD))
                conn.execute("COMMIT")
            elapsed = time.perf_counter() - start
            conn.close()
            return elapsed / transactions
        store = corestore.open(attrs.evolve(profile, path=path))
        try:
            execute = store.database.execute_sql
            execute(SCHEMA)
            store.run(lambda: execute(INSERT, (0, -1, PAYLOAD)))  # the gate's sidecar and first turn
            start = time.perf_counter()
            for i in range(transactions):
                store.run(lambda i=i: execute(INSERT, (0, i, PAYLOAD)))
            return (time.perf_counter() - start) / transactions
        finally:
            store.close()
    finally:
        _Runner._remove(path)


def measure_single_writer(base: corestore.Profile, *, transactions: int, pairs: int,
                          sync: str = "normal") -> dict[str, Any]:
    """Row ``contention.single_writer[.full]``: what the gate costs one uncontended writer (default
    profile with and without ``write_gate``, ``store.run()`` per insert)."""
    root = bench_dir("gate-single")
    stores = []
    try:
        for name, plugins in (("plain", _without_gate(base.plugins)), ("gated", _with_gate(base.plugins))):
            profile = attrs.evolve(base, path=os.path.join(root, f"{name}.db"), plugins=plugins,
                                   pragmas={**base.pragmas, "synchronous": sync})
            store = corestore.open(profile)
            store.database.execute_sql(SCHEMA)
            stores.append(store)

        def sample(store: corestore.Store) -> float:
            execute = store.database.execute_sql
            store.checkpoint("TRUNCATE")
            start = time.perf_counter()
            for i in range(transactions):
                store.run(lambda i=i: execute(INSERT, (0, i, PAYLOAD)))
            return (time.perf_counter() - start) / transactions

        samples = measure_pairs(lambda: sample(stores[0]), lambda: sample(stores[1]), pairs=pairs)
        gate_stats = stores[1].plugin("write_gate").stats()
    finally:
        for store in stores:
            store.close()
        shutil.rmtree(root, ignore_errors=True)
    name = "contention.single_writer" + ("" if sync == "normal" else f".{sync}")
    return pair_row(name, samples, target="report", unit="µs/tx", scale=1e6,
                    baseline=f"default profile, one writer, synchronous={sync}",
                    corestore=f"default profile + write_gate, one writer, synchronous={sync}",
                    transactions=transactions, gate_waits=gate_stats["waited"])


def _gated_profile(name: str, sync: str) -> corestore.Profile:
    """Profile ``name``'s plugins plus ``write_gate``, with the default profile's pragmas (WAL,
    ``busy_timeout``: the same as the raw side's) and ``synchronous=sync``."""
    base = resolve_profile(name, config=None, path="")
    pragmas = resolve_profile("default", config=None, path="").pragmas
    return attrs.evolve(base, plugins=_with_gate(base.plugins), pragmas={**pragmas, "synchronous": sync})


def _floor_row(wall_row: dict[str, Any], sync: str, processes: int, inserts: int, quick: bool) -> dict[str, Any]:
    """The serial floor of one contention shape, against that shape's raw wall time."""
    cases: dict[str, corestore.Profile | None] = {
        "default + write_gate": _gated_profile("default", sync),
        "raw sqlite3": None,
        "minimal + write_gate": _gated_profile("minimal", sync),
    }
    cases["default without write_gate"] = attrs.evolve(cases["default + write_gate"],  # type: ignore[misc]
                                                       plugins=_without_gate(cases["default + write_gate"].plugins))  # type: ignore[union-attr]
    return measure_serial_floor(cases, transactions=processes * inserts, pairs=3 if quick else 7,
                                raw_wall_s=wall_row["baseline_median"], wall_target=float(_WALL_TARGET[sync].split()[-1]),
                                label=f"contention.{sync}.{processes}x{inserts}",
                                raw_pragmas=cases["default + write_gate"].pragmas)  # type: ignore[union-attr]


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
    gated = attrs.evolve(base, plugins=_with_gate(base.plugins))
    why = missing_plugins(gated.plugins)
    if why:
        rows.append(skipped_row("contention.single_writer", why))
    else:
        rows.append(measure_single_writer(base, transactions=300 if quick else 2000, pairs=7 if quick else 11))
        if not quick:
            rows.append(measure_single_writer(base, transactions=300, pairs=11, sync="full"))
    for sync in ("normal", "full"):
        # quick (CI): a smoke run of every row, a few seconds; full: the two shapes
        shapes = [(4, 25 if sync == "normal" else 10)] if quick else [(20, 220), (4, 5000)]
        for procs, n in shapes:
            if why:
                rows.append(skipped_row(f"contention.{sync}.{procs}x{n}", why))
                continue
            profile = attrs.evolve(gated, pragmas={**gated.pragmas, "synchronous": sync})
            pairs = 11 if not quick and sync == "normal" and n <= 1000 else 7
            got = measure_contention(profile, sync, processes=procs, inserts=n, pairs=pairs)
            rows.extend(got)
            if sync == "normal":
                rows.append(_floor_row(got[0], sync, procs, n, quick))
                if not quick:  # the gate without the rest of the default profile
                    minimal = _gated_profile("minimal", sync)
                    rows.extend(measure_contention(minimal, sync, processes=procs, inserts=n, pairs=pairs,
                                                   prefix="contention.minimal"))
    return {"rows": rows, "notes": [f"{processes} processes × {inserts} single-row inserts per sample; "
                                    "wall time from the first worker's start to the last worker's end",
                                    "contention.*: raw sqlite3 vs the default profile + write_gate; latency per "
                                    "transaction measured inside each worker; spread = (last finish - first "
                                    "finish) / wall time (0: all finish together)"]}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench_multiprocess``: the ``contention.*`` rows alone (issue 19),
    for a quiet window or to compare write_gate settings, without the rest of ``--only
    multiprocess`` (which also runs the ``multiprocess.*``, single-writer and serial-floor rows)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_multiprocess", description=main.__doc__)
    parser.add_argument("--sync", choices=("normal", "full"), action="append",
                        help="synchronous mode (repeatable; default: normal)")
    parser.add_argument("--shape", action="append", metavar="PxN",
                        help="processes x inserts per process (repeatable; default: 20x220)")
    parser.add_argument("--profile", action="append", choices=("default", "minimal"),
                        help="the gated side's profile, plus write_gate (repeatable; default: default)")
    parser.add_argument("--pairs", type=int, default=11, help="alternated pairs per row (at least 7; default 11)")
    parser.add_argument("--gate", default="", metavar="K=V,...",
                        help="write_gate settings for the gated side, e.g. turn_s=0.0015,round_s=0.02 (default: the plugin's)")
    parser.add_argument("--governor", default="", metavar="K=V,...",
                        help="checkpoint_governor settings for the gated side (default profile), e.g. defer_max_s=0 "
                             "(no deferral under contention) or target_wal_bytes=1073741824 (default: the plugin's)")
    parser.add_argument("--json", metavar="OUT", help="write the rows to OUT")
    args = parser.parse_args(argv)
    settings = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.gate.split(",") if kv)}
    governor = {k: (int(v) if v.isdigit() else float(v))
                for k, v in (kv.split("=", 1) for kv in args.governor.split(",") if kv)}
    rows: list[dict[str, Any]] = []
    for sync in args.sync or ["normal"]:
        for shape in args.shape or ["20x220"]:
            procs, n = (int(x) for x in shape.lower().split("x"))
            for name in args.profile or ["default"]:
                profile = _gated_profile(name, sync)
                if settings:
                    profile = attrs.evolve(profile, settings={**profile.settings, "write_gate": settings})
                if governor and "checkpoint_governor" in profile.plugins:
                    profile = attrs.evolve(profile, settings={**profile.settings, "checkpoint_governor": governor})
                prefix = "contention" if name == "default" else f"contention.{name}"
                got = measure_contention(profile, sync, processes=procs, inserts=n, pairs=args.pairs, prefix=prefix)
                rows.extend(got)
                head = got[0]
                print(f"{prefix}.{sync}.{shape}: load average {head['load_average']}, gate settings {settings or 'defaults'}, "
                      f"governor settings {governor or 'defaults'}, "
                      f"admissions (median per sample) {head['gate_admissions_median']}, corestore retries "
                      f"{head['corestore_retries']}, raw busy errors {head['raw_busy_errors']}", flush=True)
                for row in got:
                    ratio = row.get("ratio")
                    print(f"  {row['name']:44s} raw {row['baseline_median']:<10.4g} gate {row['corestore_median']:<10.4g} "
                          f"ratio {ratio if ratio is None else format(ratio, '.3g'):<8} ({row.get('ratio_min', float('nan')):.2g}"
                          f"-{row.get('ratio_max', float('nan')):.2g}) target {row.get('target')} met {row.get('met')}",
                          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
