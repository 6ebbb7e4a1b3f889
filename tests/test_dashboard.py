"""The Grafana dashboard in contrib/: it loads, and every panel's query names a metric the
Prometheus exporter exports (a renamed metric must break this test, not the dashboard)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client", reason="needs prometheus_client (the test extra)")

import corestore_contrib  # noqa: E402
from corestore_contrib.prometheus import METRICS  # noqa: E402

DASHBOARD = Path(corestore_contrib.__file__).parent / "grafana" / "corestore-dashboard.json"
_SUFFIXES = ("_bucket", "_count", "_sum")


def exported_series() -> set[str]:
    names = set(METRICS)
    for name, (kind, *_rest) in METRICS.items():
        if kind == "histogram":
            names.update(name + s for s in _SUFFIXES)
    return names


def test_every_panel_queries_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    assert dashboard["panels"], "no panels"
    covered: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bcorestore_[a-z_]+", target["expr"]))
            assert names, f"panel {panel['title']!r}: query {target['expr']!r} names no corestore metric"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {unknown}, which the exporter does not export"
            covered |= names
    # the figures the issue asks the dashboard to show
    for needed in ("corestore_health_status", "corestore_operation_duration_seconds_bucket",
                   "corestore_breaker_transitions_total", "corestore_wal_bytes", "corestore_accounting_queue_depth",
                   "corestore_accounting_rows_total"):
        assert needed in covered, needed


def test_the_check_catches_a_wrong_name(tmp_path: Path) -> None:
    text = DASHBOARD.read_text().replace("corestore_wal_bytes", "corestore_wal_size_bytes")
    names = set(re.findall(r"\bcorestore_[a-z_]+", text))
    assert "corestore_wal_size_bytes" in names - exported_series()
