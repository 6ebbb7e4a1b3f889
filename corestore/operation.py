"""Values passed through hooks: the unit of work (:class:`Operation`) and a failed invariant
(:class:`Violation`)."""
from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Mapping

import attrs

__all__ = ["Operation", "Violation"]


@attrs.frozen(kw_only=True, slots=True)
class Operation:
    """One unit of work as plugins see it.

    ``kind`` is ``"read" | "write" | "open" | "checkpoint" | "backup"`` (``backup``: a copy of
    the database through the backup API, which only reads it); ``name`` an optional label
    from the caller; ``attempt`` counts from 1 across ``run()`` retries; ``started`` and
    ``deadline`` are ``time.monotonic()`` values (``deadline`` None when unbounded).
    """

    kind: str  # one of the kinds above; not validated per instance: the core builds one per operation (hot path)
    name: str | None = None
    attempt: int = 1
    started: float = attrs.field(factory=time.monotonic)
    deadline: float | None = None

    @property
    def is_write(self) -> bool:
        return self.kind != "read"


def _freeze_evidence(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen(kw_only=True)
class Violation:
    """A post-commit invariant that did not hold: which ``check``, a ``message``, and the
    ``evidence`` (numbers and modes) that shows it."""

    check: str
    message: str
    evidence: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_evidence, eq=False, hash=False)
