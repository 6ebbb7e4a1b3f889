"""What the doctor reports: a :class:`Finding` per check, gathered in a :class:`Diagnosis`.

The ``--json`` document of ``corestore doctor`` is :meth:`Diagnosis.to_dict` (schema
:data:`DOCTOR_SCHEMA`, documented on the CLI page and stable).
"""
from __future__ import annotations

import datetime as _dt
import enum
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from .health import EXIT_USAGE, HealthStatus, to_jsonable, worst_status

__all__ = ["Severity", "Finding", "Diagnosis", "DOCTOR_SCHEMA", "format_diagnosis"]

logger = logging.getLogger(__name__)

DOCTOR_SCHEMA = 1


class Severity(enum.StrEnum):
    """How bad a finding is: ``error`` makes the diagnosis DOWN, ``warning`` DEGRADED."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def status(self) -> HealthStatus:
        return {Severity.ERROR: HealthStatus.DOWN, Severity.WARNING: HealthStatus.DEGRADED}.get(self, HealthStatus.UP)

    def __str__(self) -> str:
        return self.value


def _freeze(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen(kw_only=True)
class Finding:
    """One check's result: a severity, what was found, one line of advice (empty when all is well)."""

    check: str
    severity: Severity = attrs.field(converter=Severity)
    message: str
    advice: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze, eq=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity.value, "message": self.message,
                "advice": self.advice, "details": to_jsonable(self.details)}


@attrs.frozen(kw_only=True)
class Diagnosis:
    """Every finding for one path. ``status`` is the worst severity's status; ``usage_error``
    marks a PATH that is not something a database can be (a directory): exit 64."""

    path: str
    findings: tuple[Finding, ...]
    checked_at: _dt.datetime
    usage_error: bool = False

    @property
    def status(self) -> HealthStatus:
        return worst_status([f.severity.status for f in self.findings]) if self.findings else HealthStatus.UNKNOWN

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.usage_error else self.status.exit_code

    def finding(self, check: str) -> Finding | None:
        """The first finding of ``check`` (None when that check did not run)."""
        return next((f for f in self.findings if f.check == check), None)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document; the schema is documented on the CLI page and stable."""
        return {
            "schema": DOCTOR_SCHEMA,
            "command": "doctor",
            "path": self.path,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "checked_at": self.checked_at.isoformat(),
            "findings": [f.to_dict() for f in self.findings],
        }


# -- text output ------------------------------------------------------------------------------------------
def format_diagnosis(diag: Diagnosis) -> str:
    """The human table: one aligned line per finding, its advice under it."""
    width = max([len(f.check) for f in diag.findings] + [5])
    lines = [f"corestore doctor: {diag.path}", f"  {'SEVERITY':<8}  {'CHECK':<{width}}  FINDING"]
    for f in diag.findings:
        lines.append(f"  {f.severity.value:<8}  {f.check:<{width}}  {f.message}")
        if f.advice and f.severity in (Severity.WARNING, Severity.ERROR):
            lines.append(f"  {'':<8}  {'':<{width}}  -> {f.advice}")
    label = "USAGE ERROR" if diag.usage_error else diag.status.name
    lines.append(f"status: {label} (exit {diag.exit_code})")
    return "\n".join(lines)

