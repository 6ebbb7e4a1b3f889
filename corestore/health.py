"""Health report types: a component per plugin plus the core's ``database`` probe, aggregated
into one :class:`HealthReport` whose status is the worst component's."""
from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["HealthStatus", "HealthComponent", "HealthReport", "worst_status", "to_jsonable", "EXIT_USAGE"]

#: The CLI exit code for a usage or configuration error (beside :attr:`HealthStatus.exit_code`:
#: 0 UP, 1 DEGRADED, 2 DOWN).
EXIT_USAGE = 64


class HealthStatus(str, enum.Enum):  # noqa: UP042 - StrEnum would format a member with a spec (f'{m:>9}') by value, not by __str__ (the name)
    """Status of a component or a whole store; ordered DOWN > DEGRADED > UP > UNKNOWN."""

    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def exit_code(self) -> int:
        """The CLI exit code for this status: 0 UP (and UNKNOWN), 1 DEGRADED, 2 DOWN."""
        return {HealthStatus.DEGRADED: 1, HealthStatus.DOWN: 2}.get(self, 0)

    def __str__(self) -> str:
        return self.name


_SEVERITY = {HealthStatus.UNKNOWN: 0, HealthStatus.UP: 1, HealthStatus.DEGRADED: 2, HealthStatus.DOWN: 3}


def worst_status(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The worst of ``statuses`` (UNKNOWN when there are none)."""
    return max(statuses, key=_SEVERITY.__getitem__, default=HealthStatus.UNKNOWN)


def _freeze(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen(kw_only=True)
class HealthComponent:
    """One plugin's (or the core's) view: a ``status``, a one-line ``summary`` and ``details``
    (JSON-friendly values; never SQL parameters)."""

    name: str
    status: HealthStatus = attrs.field(converter=HealthStatus)
    summary: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze, eq=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "summary": self.summary, "details": to_jsonable(dict(self.details))}


@attrs.frozen(kw_only=True)
class HealthReport:
    """The aggregate: ``status`` is the worst component's; ``components`` keyed by name."""

    status: HealthStatus
    components: Mapping[str, HealthComponent] = attrs.field(converter=_freeze, eq=False, hash=False)
    database: str
    profile: str
    checked_at: _dt.datetime

    @classmethod
    def from_components(
        cls, components: Iterable[HealthComponent], *, database: str, profile: str
    ) -> HealthReport:
        comps = {c.name: c for c in components}
        return cls(
            status=worst_status(c.status for c in comps.values()),
            components=comps,
            database=database,
            profile=profile,
            checked_at=_dt.datetime.now(_dt.UTC),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the schema is documented on the CLI page and stable."""
        return {
            "status": self.status.value,
            "database": self.database,
            "profile": self.profile,
            "checked_at": self.checked_at.isoformat(),
            "components": {name: c.to_dict() for name, c in self.components.items()},
        }


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: mappings to dicts, sequences to lists, enums to values,
    anything else to ``str``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
