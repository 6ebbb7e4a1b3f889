"""The Observability page documents every instrument the telemetry plugin creates and every
metric the Prometheus exporter exports, in its tables (a new instrument without a row fails)."""
from __future__ import annotations

from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "site" / "observability.md"


def test_every_opentelemetry_instrument_has_a_row() -> None:
    from corestore_plugins.telemetry import INSTRUMENTS

    text = PAGE.read_text()
    for name, (_kind, unit, _desc) in INSTRUMENTS.items():
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} has no row on {PAGE.name}"
        assert f"`{unit}`" in row, f"{name}: unit {unit} not in its row"


def test_every_prometheus_metric_has_a_row() -> None:
    pytest.importorskip("prometheus_client", reason="needs prometheus_client (the test extra)")
    from corestore_contrib.prometheus import METRICS

    text = PAGE.read_text()
    for name, (_kind, _labels, mode, _doc) in METRICS.items():
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} has no row on {PAGE.name}"
        if mode:
            assert f"`{mode}`" in row, f"{name}: multiprocess mode {mode} not in its row"


def test_the_probe_semantics_and_deployment_snippets_are_there() -> None:
    text = PAGE.read_text()
    for needed in ("/livez", "/readyz", "/startupz", "/healthz", "/metrics", "readinessProbe", "livenessProbe",
                   "startupProbe", "mark_process_dead", "PROMETHEUS_MULTIPROC_DIR", "serve-health"):
        assert needed in text, needed


@pytest.mark.parametrize("snippet", ["observability_mount.py", "observability_gunicorn.py"])
def test_observability_snippets_run(snippet: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from helpers import child_env

    pytest.importorskip("prometheus_client", reason="needs prometheus_client (the test extra)")
    proc = subprocess.run([sys.executable, str(PAGE.parent / "snippets" / snippet)], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
