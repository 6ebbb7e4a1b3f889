"""``corestore doctor NAME|PATH|URL``: print :func:`corestore.doctor.diagnose` of a database file
(``--json``: :meth:`~corestore.findings.Diagnosis.to_dict`), and ``--clear-quarantine``: show
the quarantine evidence, then remove the marker unless the check finds damage (``--force``).
A PostgreSQL URL (or a name bound to one) goes to :func:`corestore.doctor_postgres.diagnose_postgres`
instead, with its session thresholds.

Exit codes: 0 UP, 1 DEGRADED, 2 DOWN, 64 usage or configuration error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping

import attrs

from ..doctor import diagnose
from ..doctor_postgres import Thresholds, diagnose_postgres, is_postgres_url
from ..errors import ConfigError
from ..findings import Diagnosis, Finding, Severity, format_diagnosis
from ..quarantine_table import QUARANTINE_TABLE
from ..redact import redact_text, redact_url
from ..sidecar_formats import clear_marker, format_marker, marker_path
from ._common import config_path

__all__ = ["HELP", "add_arguments", "run_doctor"]

logger = logging.getLogger(__name__)

HELP = ("diagnose a SQLite file read-only: header, -wal/-shm, locks, quick_check, permissions, space; "
        "or a PostgreSQL server (postgresql://...): role, connections, sessions, replication lag")


def _tty_progress(check: str) -> Callable[[float], None] | None:
    if not sys.stderr.isatty():
        return None
    last = [-1.0]

    def show(seconds: float) -> None:
        if last[0] < 0 or seconds - last[0] >= 0.2:
            last[0] = seconds
            sys.stderr.write(f"\r{check}: {seconds:6.1f} s ...")
            sys.stderr.flush()

    return show


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``corestore doctor``."""
    p.add_argument("path", metavar="NAME|PATH|URL",
                   help="a database bound in [databases] of the config, the database file (never created, never "
                        "written), or a postgresql:// URL (diagnosed from a read-only session)")
    p.add_argument("--integrity", action="store_true", help="run integrity_check (slow, thorough) instead of quick_check")
    p.add_argument("--clear-quarantine", action="store_true",
                   help="show the quarantine evidence, then remove the marker (refused when the check finds damage)")
    p.add_argument("--force", action="store_true", help="with --clear-quarantine: remove the marker even if the check fails")
    pg = p.add_argument_group("PostgreSQL", "thresholds in seconds for a postgresql:// target (defaults in brackets)")
    pg.add_argument("--long-running", type=_seconds, metavar="S", default=None,
                    help="warn on an active transaction older than S [300]")
    pg.add_argument("--idle-in-transaction", type=_seconds, metavar="S", default=None,
                    help="warn on a session idle inside a transaction for more than S [60]")
    pg.add_argument("--replication-lag", type=_seconds, metavar="S", default=None,
                    help="warn when a standby is more than S behind [30]")
    pg.add_argument("--connect-timeout", type=_seconds, metavar="S", default=None, help="connection timeout [5]")


_PG_OPTIONS = ("long_running", "idle_in_transaction", "replication_lag", "connect_timeout")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be a finite number >= 0, got {text!r}")
    return value


def _doctor_path(args: argparse.Namespace) -> str:
    """The file or URL for ``NAME|PATH|URL``: a name bound in ``[databases]`` (like ``corestore
    health``), else the path or URL as given."""
    from ..opening import looks_like_bare_name
    from ..profiles import load_config

    target: str = args.path
    if is_postgres_url(target):
        return target
    cfg = load_config(config_path(args))
    binding = cfg.databases.get(target) if cfg else None
    if binding is not None:
        url = getattr(binding, "url", None)
        return str(url) if isinstance(url, str) and url else binding.path
    if looks_like_bare_name(target) and not os.path.exists(target):
        known = ", ".join(sorted(cfg.databases)) if cfg and cfg.databases else "(none)"
        raise ConfigError(f"{cfg.source if cfg else 'no config file (pass --config or set CORESTORE_CONFIG)'}: "
                          f"{target!r} is not bound in [databases] (bound: {known}); give a file path "
                          f"(e.g. './{target}.db')")
    return target


def _run_postgres(args: argparse.Namespace, url: str) -> int:
    given = [f"--{name.replace('_', '-')}" for name in ("integrity",) if getattr(args, name, False)]
    if args.force and not args.clear_quarantine:
        given.append("--force without --clear-quarantine")
    if given:
        raise ConfigError(f"{', '.join(given)}: only for a SQLite file, not for a PostgreSQL server ({redact_url(url)})")
    defaults = Thresholds()
    limits = Thresholds(
        long_running_s=_given(args.long_running, defaults.long_running_s),
        idle_in_transaction_s=_given(args.idle_in_transaction, defaults.idle_in_transaction_s),
        replication_lag_s=_given(args.replication_lag, defaults.replication_lag_s))
    connect_timeout = _given(args.connect_timeout, 5.0)
    diag = diagnose_postgres(url, thresholds=limits, connect_timeout_s=connect_timeout)
    if args.clear_quarantine and not diag.usage_error:
        diag = _clear_postgres_quarantine(diag, url, force=args.force, as_json=getattr(args, "json", False),
                                          connect_timeout_s=connect_timeout)
    if getattr(args, "json", False):
        print(json.dumps(diag.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_diagnosis(diag))
    return diag.exit_code


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def run_doctor(args: argparse.Namespace) -> int:
    """Run ``corestore doctor``; returns the exit code."""
    target = _doctor_path(args)
    if is_postgres_url(target):
        return _run_postgres(args, target)
    given = [f"--{name.replace('_', '-')}" for name in _PG_OPTIONS if getattr(args, name, None) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for a PostgreSQL server (postgresql://...), not for the file {target}")
    check = "integrity_check" if args.integrity else "quick_check"
    progress = _tty_progress(check)
    diag = diagnose(target, integrity=args.integrity, progress=progress)
    if progress is not None:
        sys.stderr.write("\r" + " " * 40 + "\r")
        sys.stderr.flush()
    if getattr(args, "clear_quarantine", False) and not diag.usage_error:
        diag = _clear_quarantine(diag, force=args.force, as_json=getattr(args, "json", False))
    if getattr(args, "json", False):
        print(json.dumps(diag.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_diagnosis(diag))
    return diag.exit_code


def _clear_quarantine(diag: Diagnosis, *, force: bool, as_json: bool) -> Diagnosis:
    found = diag.finding("quarantine")
    if found is None or found.severity is Severity.OK:
        note = Finding(check="clear-quarantine", severity=Severity.INFO, message="no quarantine marker to clear")
        return attrs.evolve(diag, findings=diag.findings + (note,))
    evidence = found.details.get("evidence")
    if not as_json:
        print(f"quarantine evidence ({marker_path(diag.path)}):")
        if isinstance(evidence, Mapping):
            print(format_marker(evidence))
        else:
            print(json.dumps(evidence, indent=2, sort_keys=True, default=str))
    damage = [f for f in diag.findings
              if f.check in ("quick_check", "integrity_check", "header") and f.severity is Severity.ERROR]
    if damage and not force:
        note = Finding(check="clear-quarantine", severity=Severity.ERROR,
                       message=f"refused: the {damage[0].check} check found damage; the marker stays",
                       advice="recover the data first; --force removes the marker anyway", details={"evidence": evidence})
        return attrs.evolve(diag, findings=diag.findings + (note,))
    try:
        cleared = clear_marker(diag.path)
    except OSError as err:  # SidecarError: the "marker" is a database, or not ours to remove
        note = Finding(check="clear-quarantine", severity=Severity.ERROR, message=f"refused: {err}",
                       advice="inspect the file by hand; corestore never removes a database", details={"evidence": evidence})
        return attrs.evolve(diag, findings=diag.findings + (note,))
    findings = tuple(f for f in diag.findings if f.check != "quarantine")
    note = Finding(check="clear-quarantine", severity=Severity.OK,
                   message="quarantine marker removed" + (" (forced despite damage)" if damage else ""),
                   details={"evidence": cleared if cleared is not None else evidence})
    return attrs.evolve(diag, findings=findings + (note,))


def _clear_postgres_quarantine(diag: Diagnosis, url: str, *, force: bool, as_json: bool,
                               connect_timeout_s: float) -> Diagnosis:
    """The SQLite flow on PostgreSQL (:mod:`corestore.doctor_pg_quarantine`): show the evidence,
    re-read the damaged relation, remove the marker row unless the re-read finds damage."""
    import psycopg

    from ..doctor_pg_quarantine import RECHECK, clear_server_marker, recheck_finding

    found = diag.finding("quarantine")
    if found is None or found.severity is not Severity.ERROR or not isinstance(found.details.get("evidence"), Mapping):
        why = "no quarantine marker to clear" if found is not None and found.severity is Severity.OK else \
            "the marker table could not be read (see the findings); nothing cleared"
        note = Finding(check="clear-quarantine", severity=Severity.INFO if found is not None and
                       found.severity is Severity.OK else Severity.ERROR, message=why)
        return attrs.evolve(diag, findings=diag.findings + (note,))
    evidence = found.details["evidence"]
    if not as_json:
        print(f"quarantine evidence ({found.details.get('marker')} in {diag.path}):")
        print(format_marker(evidence))
    check = recheck_finding(url, evidence, connect_timeout_s=connect_timeout_s)
    findings = diag.findings + (check,)
    damaged = check.check == RECHECK and check.severity is Severity.ERROR
    if damaged and not force:
        note = Finding(check="clear-quarantine", severity=Severity.ERROR,
                       message=f"refused: the {RECHECK} check found damage; the marker stays",
                       advice="recover the data first; --force removes the marker anyway", details={"evidence": evidence})
        return attrs.evolve(diag, findings=findings + (note,))
    try:
        cleared = clear_server_marker(url, connect_timeout_s=connect_timeout_s)
    except psycopg.Error as err:
        note = Finding(check="clear-quarantine", severity=Severity.ERROR,
                       message=f"refused: {redact_text(f'{type(err).__name__}: {err}')}",
                       advice=f"the role needs DELETE on {QUARANTINE_TABLE} (a standby cannot be written: use the primary)",
                       details={"evidence": evidence, "sqlstate": getattr(err, "sqlstate", None)})
        return attrs.evolve(diag, findings=findings + (note,))
    kept = tuple(f for f in findings if f.check != "quarantine")
    note = Finding(check="clear-quarantine", severity=Severity.OK,
                   message="quarantine marker removed" + (" (forced despite damage)" if damaged else ""),
                   details={"evidence": cleared if cleared is not None else evidence})
    return attrs.evolve(diag, findings=kept + (note,))
