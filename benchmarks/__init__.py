"""corestore benchmarks: side-by-side ratios against what a user would otherwise use.

Run them with ``python -m benchmarks [--quick] [--json out.json] [--only NAME]`` from the project
root. Absolute times on a shared two-core machine are noise; what is reported is the ratio of
corestore to the alternative, measured in the same run on the same machine, in alternating pairs
(at least seven, the side that goes first alternating too). ``--quick`` shrinks every workload so
the whole run takes under a minute; CI runs it so the benchmarks never rot, and asserts no time.

Writing a benchmark: add ``benchmarks/bench_<name>.py`` with ``run(quick: bool) -> dict`` returning
``{"rows": [...], "notes": [...]}``. Build rows with the helpers here::

    from benchmarks import measure_pairs, pair_row, skipped_row

    def run(quick: bool) -> dict:
        samples = measure_pairs(baseline_once, corestore_once, pairs=7)
        return {"rows": [pair_row("thing", samples, target="<= 1.05", unit="µs/op", scale=1e6 / n)]}

Each callable runs one sample and returns a "lower is better" number (or None: its wall time is
used). A module that raises, or cannot be imported, is reported as an error row and makes the
exit code 1; the other benchmarks still run (each in its own process).
"""
from __future__ import annotations

from ._runner import (
    EXPECTED,
    PairSamples,
    bench_dir,
    error_row,
    evaluate,
    machine_info,
    measure_pairs,
    missing_plugins,
    pair_row,
    skipped_row,
    value_row,
)

__all__ = [
    "EXPECTED",
    "PairSamples",
    "bench_dir",
    "error_row",
    "evaluate",
    "machine_info",
    "measure_pairs",
    "missing_plugins",
    "pair_row",
    "skipped_row",
    "value_row",
]
