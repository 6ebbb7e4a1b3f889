"""The benchmark runner: discovery, paired measurement, statistics, the table and the JSON file.

Each ``benchmarks/bench_<name>.py`` module exposes ``run(quick: bool) -> dict`` and is run in its
own child process (``python -m benchmarks --child PATH``), so one benchmark's threads, open
stores or forked workers never disturb the next one, and a crash or a hang is reported as that
benchmark's error instead of ending the run.

A module returns ``{"rows": [row, ...], "notes": [...]}``; a row is a plain mapping, normally
built with :func:`pair_row` from :func:`measure_pairs` samples, or with :func:`value_row`,
:func:`skipped_row`. A module that returns some other mapping is still shown: each entry that is
a mapping becomes a row named after its key, each scalar a ``value`` row.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import logging
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "EXPECTED",
    "HEADER",
    "PairSamples",
    "measure_pairs",
    "pair_row",
    "value_row",
    "skipped_row",
    "error_row",
    "evaluate",
    "missing_plugins",
    "bench_dir",
    "machine_info",
    "discover",
    "table",
    "markdown_table",
    "main",
]

#: The benchmarks a complete checkout has; one that is absent is reported as missing.
EXPECTED: tuple[str, ...] = ("hotpath", "accounting", "multiprocess", "open", "breaker", "recovery", "asyncio")

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
MIN_PAIRS = 7
_QUICK_TIMEOUT_S = 120.0
_FULL_TIMEOUT_S = 1800.0


# -- measurement ---------------------------------------------------------------------------------
class PairSamples:
    """Samples of one baseline / corestore comparison, pair by pair, and who ran first."""

    __slots__ = ("baseline", "corestore", "baseline_first")

    def __init__(self) -> None:
        self.baseline: list[float] = []
        self.corestore: list[float] = []
        self.baseline_first: list[bool] = []

    @property
    def ratios(self) -> list[float]:
        """corestore / baseline for each pair (the pairing cancels slow drift of the machine)."""
        return [c / b if b else math.inf for b, c in zip(self.baseline, self.corestore, strict=True)]


def _timed(fn: Callable[[], float | None], gc_paused: bool = True) -> float:
    """Run one sample, with the garbage collector paused unless ``gc_paused`` is False; its
    value is what ``fn`` returns, or the wall time of the call when it returns None."""
    gc.collect()
    if gc_paused:
        gc.disable()
    try:
        start = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed if value is None else float(value)


def measure_pairs(baseline: Callable[[], float | None], corestore: Callable[[], float | None], *,
                  pairs: int = MIN_PAIRS, warmup: int = 1, gc_paused: bool = True) -> PairSamples:
    """Run ``pairs`` baseline/corestore pairs, alternating which side goes first.

    Each callable runs one sample and returns its measured value (seconds, or any "lower is
    better" number), or None to be timed as a whole. ``warmup`` unrecorded pairs run first (page
    cache, imports, first connections). Samples run with the garbage collector paused (less
    noise), unless ``gc_paused`` is False: for work whose cost includes what it leaves the
    collector, such as a queue of rows (``bench_accounting``).
    """
    if pairs < MIN_PAIRS:
        raise ValueError(f"at least {MIN_PAIRS} pairs are needed, got {pairs}")
    for _ in range(warmup):
        _timed(baseline, gc_paused)
        _timed(corestore, gc_paused)
    out = PairSamples()
    for i in range(pairs):
        first_baseline = i % 2 == 0
        if first_baseline:
            b = _timed(baseline, gc_paused)
            c = _timed(corestore, gc_paused)
        else:
            c = _timed(corestore, gc_paused)
            b = _timed(baseline, gc_paused)
        out.baseline.append(b)
        out.corestore.append(c)
        out.baseline_first.append(first_baseline)
    return out


# -- statistics ----------------------------------------------------------------------------------
def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _spread_pct(values: Sequence[float]) -> float:
    """The interquartile range as a percentage of the median."""
    med = statistics.median(values)
    q1, q3 = _quartiles(values)
    return 100.0 * (q3 - q1) / med if med else 0.0


def _parse_target(target: str | None) -> tuple[str, float] | None:
    if not target:
        return None
    parts = target.replace("≤", "<=").replace("≥", ">=").split()
    if len(parts) >= 2 and parts[0] in ("<=", ">=", "<", ">"):
        try:
            return parts[0], float(parts[1].rstrip("x×"))
        except ValueError:
            return None
    return None


def evaluate(value: float | None, target: str | None) -> bool | None:
    """Whether ``value`` meets ``target`` (``"<= 1.05"``, ``">= 10"``); None when either is
    missing or the target is not a comparison (``"report"``)."""
    parsed = _parse_target(target)
    if parsed is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    op, bound = parsed
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]


def pair_row(name: str, samples: PairSamples, *, target: str | None = None, unit: str = "s",
             scale: float = 1.0, baseline: str = "baseline", corestore: str = "corestore",
             note: str = "", **extra: Any) -> dict[str, Any]:
    """A table row from paired samples: medians (times ``scale``, in ``unit``), IQR spreads, the
    median of the per-pair ratios corestore / baseline, and whether ``target`` is met."""
    ratios = samples.ratios
    ratio = statistics.median(ratios)
    row: dict[str, Any] = {
        "name": name,
        "status": "ok",
        "pairs": len(ratios),
        "unit": unit,
        "baseline_label": baseline,
        "corestore_label": corestore,
        "baseline_median": statistics.median(samples.baseline) * scale,
        "corestore_median": statistics.median(samples.corestore) * scale,
        "baseline_spread_pct": _spread_pct(samples.baseline),
        "corestore_spread_pct": _spread_pct(samples.corestore),
        "ratio": ratio,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "target": target,
        "met": evaluate(ratio, target),
        "note": note,
        "samples": {
            "baseline": [v * scale for v in samples.baseline],
            "corestore": [v * scale for v in samples.corestore],
            "baseline_first": list(samples.baseline_first),
            "ratios": ratios,
        },
    }
    row.update(extra)
    return row


def value_row(name: str, values: Sequence[float], *, target: str | None = None, unit: str = "s",
              scale: float = 1.0, label: str = "corestore", note: str = "", **extra: Any) -> dict[str, Any]:
    """A row for a measurement with no baseline (a latency, a recovery time): the median of
    ``values`` (times ``scale``) is checked against ``target``."""
    vals = [v * scale for v in values]
    med = statistics.median(vals)
    row: dict[str, Any] = {
        "name": name,
        "status": "ok",
        "pairs": len(vals),
        "unit": unit,
        "corestore_label": label,
        "corestore_median": med,
        "corestore_spread_pct": _spread_pct(vals),
        "value": med,
        "target": target,
        "met": evaluate(med, target),
        "note": note,
        "samples": {"corestore": vals},
    }
    row.update(extra)
    return row


def skipped_row(name: str, reason: str, *, target: str | None = None) -> dict[str, Any]:
    """A row for a comparison that could not run here (a plugin not importable yet...)."""
    return {"name": name, "status": "skipped", "reason": reason, "target": target, "met": None}


def error_row(name: str, reason: str, *, target: str | None = None) -> dict[str, Any]:
    """A row for a benchmark that failed (counts as a failure of the run)."""
    return {"name": name, "status": "error", "reason": reason, "target": target, "met": None}


def missing_plugins(names: Iterable[str]) -> str | None:
    """None when every plugin in ``names`` imports, else "plugin X not importable: why"."""
    from corestore.errors import PluginError
    from corestore.registry import load_plugin_class

    for name in names:
        try:
            load_plugin_class(name)
        except PluginError as err:
            cause = err.__cause__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
            return f"plugin {name} not importable ({why})"
    return None


def bench_dir(prefix: str) -> str:
    """A fresh directory for a benchmark's database files, under ``$CORESTORE_BENCH_TMPDIR`` (set
    from ``--tmpdir``) or the system temporary directory."""
    return tempfile.mkdtemp(prefix=f"corestore-bench-{prefix}-", dir=os.environ.get("CORESTORE_BENCH_TMPDIR") or None)


# -- machine -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _filesystem(path: str) -> str:
    """The file system type holding ``path`` (Linux /proc/mounts), or "unknown"."""
    try:
        real = os.path.realpath(path)
        best, fstype = "", "unknown"
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    mnt = parts[1].replace("\\040", " ")
                    if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                        best, fstype = mnt, parts[2]
        return fstype
    except OSError:
        return "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine shows up as noise)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(tmpdir: str | None = None) -> dict[str, Any]:
    """Where the numbers come from: platform, CPU, Python, SQLite, peewee, the file system."""
    import sqlite3

    import peewee

    import corestore

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "peewee": peewee.__version__,
        "corestore": corestore.__version__,
        "git_commit": _git_commit(),
    }
    try:
        import apsw

        info["apsw"] = apsw.apsw_version()
        info["apsw_sqlite"] = apsw.sqlite_lib_version()
    except ImportError:
        info["apsw"] = None
    tmp = tmpdir or tempfile.gettempdir()
    info["bench_tmpdir"] = tmp
    info["bench_filesystem"] = _filesystem(tmp)
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


# -- discovery and running -------------------------------------------------------------------------
def discover(directory: pathlib.Path = HERE) -> dict[str, pathlib.Path]:
    """``bench_<name>.py`` files in ``directory``, by name, in the conventional order."""
    found = {p.stem[len("bench_"):]: p for p in sorted(directory.glob("bench_*.py"))}
    order = {name: i for i, name in enumerate(EXPECTED)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _normalise(name: str, result: Any) -> dict[str, Any]:
    """Accept what a module returned: the documented shape, or any mapping (shown as rows)."""
    if not isinstance(result, Mapping):
        return {"rows": [error_row(name, f"run() returned {type(result).__name__}, not a dict")], "notes": []}
    rows_in = result.get("rows")
    rows: list[dict[str, Any]] = []
    if isinstance(rows_in, (list, tuple)):
        for i, r in enumerate(rows_in):
            row = dict(r) if isinstance(r, Mapping) else {"name": f"{name}.{i}", "status": "ok", "value": r}
            row.setdefault("name", f"{name}.{i}")
            rows.append(row)
    else:
        for key, value in result.items():
            if key == "notes":
                continue
            if isinstance(value, Mapping):
                row = dict(value)
                row.setdefault("name", f"{name}.{key}")
            else:
                row = {"name": f"{name}.{key}", "value": value}
            rows.append(row)
    for row in rows:
        row.setdefault("status", "ok")
        if "met" not in row:
            row["met"] = evaluate(row.get("ratio", row.get("value")), row.get("target"))
    notes = result.get("notes") or []
    if isinstance(notes, str):
        notes = [notes]
    return {"rows": rows, "notes": [str(n) for n in notes]}


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _child(path: str, quick: bool, out: str, verbose: bool = False) -> int:
    """Import one benchmark module and run it; write its normalised result to ``out``.

    Library logging is shown from ERROR up (``-v``: WARNING): benchmarks inject faults on purpose,
    and the WARNING each one logs is expected."""
    sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.WARNING if verbose else logging.ERROR, format="  %(levelname)s %(name)s: %(message)s")
    name = pathlib.Path(path).stem[len("bench_"):]
    started = time.monotonic()
    try:
        if pathlib.Path(path).resolve().parent == HERE:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        else:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        run = getattr(module, "run", None)
        if not callable(run):
            raise TypeError(f"{path} has no run(quick) function")
        result = _normalise(name, run(quick))
        status = 0
    except BaseException as err:  # reported, never fatal to the whole run
        import traceback

        traceback.print_exc()
        result = {"rows": [error_row(name, f"{type(err).__name__}: {err}")], "notes": []}
        status = 1
    result["seconds"] = time.monotonic() - started
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, default=_json_default)
    return status


def _run_module(name: str, path: pathlib.Path, *, quick: bool, timeout_s: float, tmpdir: str | None,
                verbose: bool = False) -> dict[str, Any]:
    fd, out = tempfile.mkstemp(prefix=f"corestore-bench-{name}-", suffix=".json")
    os.close(fd)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "contrib")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if tmpdir:
        env["CORESTORE_BENCH_TMPDIR"] = tmpdir
    cmd = ([sys.executable, "-m", "benchmarks", "--child", str(path), "--out", out]
           + (["--quick"] if quick else []) + (["-v"] if verbose else []))
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout_s, stdout=sys.stderr)
        with open(out, encoding="utf-8") as fh:
            text = fh.read()
        if not text:
            return {"rows": [error_row(name, f"the benchmark process exited with {proc.returncode} and no result")],
                    "notes": [], "seconds": time.monotonic() - started}
        return json.loads(text)
    except subprocess.TimeoutExpired:
        return {"rows": [error_row(name, f"timed out after {timeout_s:.0f} s")], "notes": [],
                "seconds": time.monotonic() - started}
    finally:
        os.unlink(out)


# -- output --------------------------------------------------------------------------------------
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if math.isinf(v):
            return "inf"
        a = abs(v)
        text = f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
        return f"{text} {unit}".strip()
    return str(value)


def _met(row: Mapping[str, Any]) -> str:
    status = row.get("status", "ok")
    if status != "ok":
        return status
    met = row.get("met")
    return {True: "yes", False: "NO", None: "–"}[met]


HEADER = ("benchmark", "pairs", "baseline", "corestore", "spread b/c", "ratio c/b (min–max)", "target", "met")


def _ratio_text(value: float) -> str:
    if value >= 0.1 or value <= 0:
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{value:.2g} = 1/{1 / value:,.0f}"


def _cells(row: Mapping[str, Any], *, reason_width: int | None = None) -> tuple[str, ...]:
    """One row's cells, in :data:`HEADER` order."""
    status = row.get("status", "ok")
    target = str(row.get("target") or "–")
    if status != "ok":
        text = f"{status}: {row.get('reason', '')}"
        if reason_width is not None and len(text) > reason_width:
            text = text[: reason_width - 1] + "…"
        return (str(row.get("name")), "–", text, "", "", "", target, status)
    unit = str(row.get("unit", ""))
    spread = "/".join("–" if v is None else f"{v:.0f}%"
                      for v in (row.get("baseline_spread_pct"), row.get("corestore_spread_pct")))
    ratio = row.get("ratio")
    ratio_txt = "–" if ratio is None else _ratio_text(float(ratio))
    if ratio is not None and row.get("ratio_min") is not None:
        low, high = float(row["ratio_min"]), float(row["ratio_max"])
        ratio_txt += f" ({low:.2g}–{high:.2g})" if low < 0.1 else f" ({low:.2f}–{high:.2f})"
    return (
        str(row.get("name")),
        str(row.get("pairs", "–")),
        _fmt(row.get("baseline_median"), unit),
        _fmt(row.get("corestore_median", row.get("value")), unit),
        spread,
        ratio_txt,
        target,
        _met(row),
    )


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The compact table: benchmark, pairs, baseline and corestore medians, IQR spreads
    (baseline / corestore, % of median), the median of the per-pair ratios corestore/baseline
    (min–max over the pairs), target, met."""
    lines = [HEADER] + [_cells(row, reason_width=80) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The same table in Markdown, followed by what each row compares (for the site page)."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    legend = []
    for row in rows:
        if row.get("status", "ok") != "ok":
            continue
        parts = []
        if row.get("baseline_label"):
            parts.append(f"baseline: {row['baseline_label']}")
        if row.get("corestore_label"):
            parts.append(f"corestore: {row['corestore_label']}")
        if row.get("note"):
            parts.append(str(row["note"]))
        if parts:
            legend.append(f"- `{row.get('name')}`: " + "; ".join(parts))
    return "\n".join(out + ([""] + legend if legend else []))


# -- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Side-by-side benchmarks: corestore against what a user would otherwise use, "
                    "alternating pairs in one run, reported as ratios.",
    )
    p.add_argument("--quick", action="store_true",
                   help="small workloads (under 60 s in all); CI runs this so benchmarks never rot. "
                        "A benchmark that fails makes the exit code 1 in either mode; with --quick, "
                        "a missing one does too")
    p.add_argument("--json", metavar="OUT", help="write every number and the machine description to OUT")
    p.add_argument("--markdown", metavar="OUT", help="write the table as Markdown to OUT (for the site)")
    p.add_argument("--only", metavar="NAME", action="append", default=[],
                   help="run only this benchmark (repeatable, or comma-separated); e.g. --only hotpath")
    p.add_argument("--list", action="store_true", help="list the benchmarks found and exit")
    p.add_argument("--tmpdir", metavar="DIR",
                   help="where database files go (default: the system temporary directory; it must be a "
                        "real disk file system, not tmpfs, or fsync costs nothing)")
    p.add_argument("--dir", metavar="DIR", default=str(HERE), help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every pair's samples, and the library's WARNING logs (faults are injected on purpose)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks; print the table; return the exit code (0, or 1 when a
    benchmark failed or, with ``--quick``, is missing)."""
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args.child, args.quick, args.out, args.verbose)
    directory = pathlib.Path(args.dir).resolve()
    found = discover(directory)
    if args.list:
        for name, path in found.items():
            print(f"{name}\t{path.relative_to(directory.parent) if directory.parent in path.parents else path}")
        return 0
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in only if n not in found and n not in EXPECTED]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; found: {', '.join(found) or '(none)'}", file=sys.stderr)
        return 2
    selected = [n for n in found if not only or n in only]
    missing = [n for n in EXPECTED if n not in found and (not only or n in only)] if directory == HERE else []
    if args.tmpdir:
        os.makedirs(args.tmpdir, exist_ok=True)
    fstype = _filesystem(args.tmpdir or tempfile.gettempdir())
    if fstype in ("tmpfs", "ramfs"):
        print(f"[benchmarks] WARNING: database files go to a {fstype} file system, where fsync costs "
              "nothing; pass --tmpdir on a disk for numbers users will see", file=sys.stderr)
    timeout_s = _QUICK_TIMEOUT_S if args.quick else _FULL_TIMEOUT_S
    mode = "quick" if args.quick else "full"

    load_before = _loadavg()
    started = time.monotonic()
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in selected:
        print(f"[benchmarks] {name} ({mode}) ...", file=sys.stderr, flush=True)
        result = _run_module(name, found[name], quick=args.quick, timeout_s=timeout_s, tmpdir=args.tmpdir,
                             verbose=args.verbose)
        results[name] = result
        for row in result.get("rows", []):
            row["benchmark"] = name
            rows.append(row)
        print(f"[benchmarks] {name}: {result.get('seconds', 0):.1f} s", file=sys.stderr, flush=True)
    for name in missing:
        rows.append({"name": name, "benchmark": name, "status": "missing",
                     "reason": f"benchmarks/bench_{name}.py not found", "met": None})
    elapsed = time.monotonic() - started

    print()
    print(table(rows))
    for name, result in results.items():
        for note in result.get("notes", []):
            print(f"note [{name}]: {note}")
    if args.verbose:
        for row in rows:
            s = row.get("samples") or {}
            if "ratios" in s:
                print(f"\n{row['name']} ({row.get('unit', '')}): baseline-first per pair {s['baseline_first']}")
                for i, (b, c, r) in enumerate(zip(s["baseline"], s["corestore"], s["ratios"], strict=True)):
                    print(f"  pair {i + 1}: baseline {b:.4g}  corestore {c:.4g}  ratio {r:.3f}")
    print(f"\n{mode} run: {len(selected)} benchmark(s) in {elapsed:.1f} s", flush=True)

    failed = [r["name"] for r in rows if r.get("status") == "error" or (args.quick and r.get("status") == "missing")]
    if args.json or args.markdown:
        info = machine_info(args.tmpdir)
        info["loadavg_before"], info["loadavg_after"] = load_before, _loadavg()
        if args.json:
            doc = {
                "mode": mode,
                "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
                "started_unix": time.time() - elapsed,
                "seconds": elapsed,
                "machine": info,
                "rows": rows,
                "benchmarks": {k: {"seconds": v.get("seconds"), "notes": v.get("notes", [])} for k, v in results.items()},
                "failed": failed,
            }
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2, default=_json_default)
                fh.write("\n")
        if args.markdown:
            with open(args.markdown, "w", encoding="utf-8") as fh:
                fh.write(markdown_table(rows) + "\n")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
