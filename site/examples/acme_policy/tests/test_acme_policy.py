"""Tests for the acme fault budget, with corestore's pytest fixtures.

``tmp_store`` opens a store on a temporary file with the profile the
``corestore_profile`` marker describes; ``failpoint=True`` runs it over the
``failpoint`` fixture's VFS, so the faults below are real SQLite I/O errors,
not mocks.
"""
from __future__ import annotations

import time

import pytest
from acme_policy import FaultBudget

import corestore
from corestore import ErrorKind, HealthStatus

WINDOW_S = 0.5
BUDGET = {"acme_fault_budget": {"max_faults": 1, "window_s": WINDOW_S}}


def budget_status(store):
    return store.health().components["acme_fault_budget"].status


@pytest.mark.corestore_profile("minimal", plugins=["acme_fault_budget"],
                               settings=BUDGET, failpoint=True)
def test_faults_over_budget_degrade_health(tmp_store, failpoint):
    tmp_store.database.execute_sql("CREATE TABLE t (x)")
    budget = tmp_store.plugin(FaultBudget)
    assert budget.settings.max_faults == 1
    assert budget_status(tmp_store) is HealthStatus.UP

    first_fault = time.monotonic()
    # every write fails with a disk I/O error
    with failpoint.armed(op="write", code="IOERR_WRITE"):
        for _ in range(2):
            with pytest.raises(corestore.FatalError) as info:
                with tmp_store.transaction():
                    tmp_store.database.execute_sql("INSERT INTO t VALUES (1)")
            assert info.value.kind is ErrorKind.FATAL_IO
            assert info.value.committed is False

    report = tmp_store.health()
    component = report.components["acme_fault_budget"]
    assert component.status is HealthStatus.DEGRADED
    assert component.details["faults_by_kind"] == {"FATAL_IO": 2}
    assert report.status is HealthStatus.DEGRADED

    with tmp_store.transaction():  # healed: writes work again
        tmp_store.database.execute_sql("INSERT INTO t VALUES (2)")
    # The faults leave the window: wait for it with a deadline (a fixed
    # sleep then an assert fails on a slow machine and proves nothing on a
    # fast one), then check it did not happen before the window was over.
    deadline = time.monotonic() + 10
    while budget_status(tmp_store) is not HealthStatus.UP:
        assert time.monotonic() < deadline, "the faults never left the window"
        time.sleep(0.02)
    assert time.monotonic() - first_fault >= WINDOW_S
    assert budget_status(tmp_store) is HealthStatus.UP


@pytest.mark.corestore_profile("minimal", plugins=["acme_fault_budget"])
def test_contention_and_caller_errors_are_not_faults(tmp_store):
    tmp_store.database.execute_sql("CREATE TABLE t (x UNIQUE)")
    tmp_store.database.execute_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(corestore.ConstraintError):
        tmp_store.database.execute_sql("INSERT INTO t VALUES (1)")
    component = tmp_store.health().components["acme_fault_budget"]
    assert component.status is HealthStatus.UP
    assert component.details["faults_by_kind"] == {}


def test_settings_are_validated(tmp_path):
    profile = corestore.Profile(
        path=str(tmp_path / "x.db"), plugins=("acme_fault_budget",),
        settings={"acme_fault_budget": {"max_faults": 0}})
    with pytest.raises(corestore.ConfigError,
                       match="max_faults = 0 must be an integer >= 1"):
        corestore.open(profile)
    wrong_type = corestore.Profile(
        path=str(tmp_path / "x.db"), plugins=("acme_fault_budget",),
        settings={"acme_fault_budget": {"max_faults": "3"}})
    with pytest.raises(corestore.ConfigError,
                       match="max_faults = '3' must be an integer >= 1"):
        corestore.open(wrong_type)
