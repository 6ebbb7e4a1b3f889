"""Smoke tests of the benchmark runner (``python -m benchmarks``): it imports, selects, alternates,
reports, and fails the quick run when a benchmark breaks. No time is asserted: benchmarks are
not tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import _runner
from benchmarks._runner import evaluate, measure_pairs, pair_row

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout,
                          env={**os.environ,
                               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "contrib")])})


def test_quick_only_hotpath_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--only", "hotpath", "--json", str(out), "--tmpdir", str(tmp_path / "db"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick"
    for key in ("platform", "python", "sqlite", "peewee", "cpu_count", "bench_filesystem"):
        assert doc["machine"][key], key
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"hotpath.minimal", "hotpath.default", "hotpath.default_full"}, "--only hotpath ran something else"
    minimal = rows["hotpath.minimal"]
    assert minimal["status"] == "ok"
    assert minimal["pairs"] >= 7 and len(minimal["samples"]["ratios"]) == minimal["pairs"]
    assert minimal["samples"]["baseline_first"][:4] == [True, False, True, False]
    assert minimal["ratio"] > 0 and minimal["target"] == "<= 1.05" and minimal["met"] in (True, False)
    assert minimal["pragmas"]["journal_mode"] == "wal" and minimal["pragmas"]["synchronous"] == 1  # NORMAL
    assert rows["hotpath.default"]["status"] in ("ok", "skipped")
    if rows["hotpath.default"]["status"] == "ok":
        assert rows["hotpath.default"]["pragmas"]["synchronous"] == 1  # evolved from the profile's FULL
        assert rows["hotpath.default_full"]["pragmas"]["synchronous"] == 2
    assert "hotpath.minimal" in proc.stdout and "ratio" in proc.stdout  # the printed table
    assert not list((tmp_path / "db").iterdir()), "database files were left behind"


def test_failing_benchmark_is_reported_and_fails_quick_run(tmp_path: Path) -> None:
    (tmp_path / "bench_boom.py").write_text("def run(quick):\n    raise RuntimeError('kaboom')\n")
    (tmp_path / "bench_fine.py").write_text(textwrap.dedent("""
        def run(quick):
            return {"latency_us": {"value": 3.0, "target": "<= 5"}, "count": 7}
    """))
    proc = _run("--quick", "--dir", str(tmp_path), "--json", str(tmp_path / "out.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "kaboom" in proc.stdout and "FAILED: boom" in proc.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert rows["boom"]["status"] == "error"
    assert rows["fine.latency_us"]["met"] is True  # the other benchmark still ran and was shown
    assert rows["fine.count"]["value"] == 7


def test_only_unknown_name_is_a_usage_error() -> None:
    proc = _run("--only", "nosuchbench")
    assert proc.returncode == 2 and "nosuchbench" in proc.stderr


def test_list_finds_the_benchmarks() -> None:
    proc = _run("--list")
    assert proc.returncode == 0
    names = {line.split("\t")[0] for line in proc.stdout.splitlines()}
    assert {"hotpath", "multiprocess", "open", "recovery"} <= names


def test_measure_pairs_alternates_and_pairs_ratios() -> None:
    calls: list[str] = []

    def baseline() -> float:
        calls.append("b")
        return 2.0

    def corestore() -> float:
        calls.append("c")
        return 3.0

    samples = measure_pairs(baseline, corestore, pairs=7, warmup=1)
    assert calls[:2] == ["b", "c"]  # the warm-up pair
    assert calls[2:6] == ["b", "c", "c", "b"]  # who goes first alternates
    assert samples.ratios == [1.5] * 7
    row = pair_row("x", samples, target="<= 1.05", unit="µs", scale=1e6)
    assert row["ratio"] == 1.5 and row["met"] is False and row["baseline_median"] == 2e6
    with pytest.raises(ValueError):
        measure_pairs(baseline, corestore, pairs=3)


@pytest.mark.parametrize(("value", "target", "met"), [
    (1.04, "<= 1.05", True), (1.06, "<= 1.05", False), (12.0, ">= 10x", True), (3.0, "report", None), (None, "<= 1", None),
])
def test_evaluate_targets(value: float | None, target: str, met: bool | None) -> None:
    assert evaluate(value, target) is met


def test_markdown_table_states_skips() -> None:
    rows = [_runner.skipped_row("recovery.drained", "plugin accounting not importable", target="<= 2")]
    text = _runner.markdown_table(rows)
    assert "skipped: plugin accounting not importable" in text and "<= 2" in text


@pytest.mark.parametrize("case", ["+circuit_breaker.write", "default.run", "minimal.read"])
def test_instruction_cases_run_without_valgrind(tmp_path: Path, case: str) -> None:
    """Issue 18: every kind of case of ``benchmarks.instructions`` (a policy alone on minimal,
    ``store.run()``, a read) runs its workload; the child writes the rows it was asked for."""
    import sqlite3

    proc = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--child", case, "7", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), str(ROOT / "plugins"), str(ROOT / "contrib")])})
    assert proc.returncode == 0, proc.stderr
    who = case.split(".")[0]
    conn = sqlite3.connect(tmp_path / f"{who}.db")
    try:
        rows = conn.execute("SELECT count(*) FROM event").fetchone()[0]
    finally:
        conn.close()
    assert rows == 50 + (0 if case.endswith(".read") else 7)  # the warm-up, then the measured writes
