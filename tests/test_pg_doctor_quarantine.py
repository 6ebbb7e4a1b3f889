"""``corestore doctor [--clear-quarantine] URL`` and the PostgreSQL quarantine marker row
(review of issue 22: the doctor refused ``--clear-quarantine`` for a URL and did not report the
marker). Against the real server, each test in a schema of its own (the marker table lives in the
first schema of the ``search_path``). The real-corruption drill (a throwaway cluster, a heap page
overwritten on disk) is in tests/test_postgres_drills.py."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from pgserver import admin_connect

import corestore
from corestore.quarantine_table import read_table_marker, write_table_marker

from helpers import child_env

CLI = [sys.executable, "-m", "corestore"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=child_env())


def _findings(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert proc.stdout, proc.stderr
    return {f["check"]: f for f in json.loads(proc.stdout)["findings"]}


def _record(schema_table: tuple[str, str] | None, message: str) -> dict[str, Any]:
    """A marker as the quarantine plugin writes it (its keys; the evidence as pg_evidence records it)."""
    diag: dict[str, Any] = {"message_primary": message}
    if schema_table:
        diag.update(schema_name=schema_table[0], table_name=schema_table[1])
    return {"format": "corestore-quarantine/1", "reason": f"CORRUPT: DATA_CORRUPTED: {message}",
            "since": "2026-12-05T12:00:00+00:00", "database": "drill", "marker": "table _corestore_quarantine",
            "classification": {"kind": "CORRUPT", "name": "DATA_CORRUPTED", "source": "core", "message": message},
            "evidence": {"server": "127.0.0.1:5432/test", "sqlstate": "XX001", "diag": diag}}


def _schema(url: str) -> str:
    with admin_connect(url) as conn:
        return str(conn.execute("SELECT current_schema()").fetchone()[0])


def test_doctor_reports_the_marker_and_clears_it_after_a_clean_recheck(pg_url: str) -> None:
    schema = _schema(pg_url)
    with admin_connect(pg_url) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        conn.execute("INSERT INTO ledger SELECT generate_series(1, 50)")
        write_table_marker(conn, _record((schema, "ledger"), 'invalid page in block 0 of relation "ledger"'))
    proc = run_cli("doctor", pg_url, "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # DOWN
    found = _findings(proc)["quarantine"]
    assert found["severity"] == "error" and "DATA_CORRUPTED" in found["message"]
    assert found["details"]["evidence"]["evidence"]["sqlstate"] == "XX001"
    # a store with the quarantine plugin refuses writes while the row is there
    store = corestore.open(corestore.Profile(url=pg_url, plugins=("quarantine",)))
    try:
        assert store.plugin("quarantine").quarantined
    finally:
        store.close()

    proc = run_cli("doctor", "--clear-quarantine", pg_url)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "quarantine evidence (table _corestore_quarantine in " in out and "sqlstate: XX001" in out
    assert "recheck" in out and "re-read " in out and "50 rows" in out and "quarantine marker removed" in out
    with admin_connect(pg_url) as conn:
        assert read_table_marker(conn) is None
    proc = run_cli("doctor", pg_url, "--json")
    assert proc.returncode == 0 and _findings(proc)["quarantine"]["severity"] == "ok", proc.stdout
    proc = run_cli("doctor", "--clear-quarantine", pg_url)
    assert proc.returncode == 0 and "no quarantine marker to clear" in proc.stdout, proc.stdout + proc.stderr


def test_clear_is_refused_while_the_recheck_finds_damage_and_forced_with_force(pg_url: str) -> None:
    """The damaged relation is a view whose read raises XX001 on the server (a real server error;
    real page corruption needs a throwaway cluster, see tests/test_postgres_drills.py): the marker
    stays, as on SQLite when quick_check finds damage; --force removes it."""
    schema = _schema(pg_url)
    with admin_connect(pg_url) as conn:
        conn.execute("CREATE FUNCTION damaged() RETURNS SETOF int LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'invalid page in block 0' USING ERRCODE = 'XX001'; END $$")
        conn.execute("CREATE VIEW ledger AS SELECT * FROM damaged() AS d(id)")
        write_table_marker(conn, _record((schema, "ledger"), "invalid page in block 0"))
    proc = run_cli("doctor", "--clear-quarantine", pg_url)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "the damage is still there" in out and "refused: the recheck check found damage; the marker stays" in out
    with admin_connect(pg_url) as conn:
        assert read_table_marker(conn) is not None
    proc = run_cli("doctor", "--clear-quarantine", "--force", pg_url, "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the recheck still reports the damage (ERROR)
    found = _findings(proc)
    assert found["clear-quarantine"]["message"] == "quarantine marker removed (forced despite damage)"
    assert "quarantine" not in found
    with admin_connect(pg_url) as conn:
        assert read_table_marker(conn) is None


def test_no_relation_named_is_cleared_with_a_note(pg_url: str) -> None:
    with admin_connect(pg_url) as conn:
        write_table_marker(conn, _record(None, "could not read block 7"))
    proc = run_cli("doctor", "--clear-quarantine", pg_url, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = _findings(proc)
    assert found["recheck"]["severity"] == "info" and "names no relation" in found["recheck"]["message"]
    assert found["clear-quarantine"]["severity"] == "ok"


def test_force_without_clear_and_integrity_stay_usage_errors(pg_url: str) -> None:
    for extra in (["--force"], ["--integrity"]):
        proc = run_cli("doctor", pg_url, *extra)
        assert proc.returncode == 64 and "only for a SQLite file" in proc.stderr, proc.stdout + proc.stderr
