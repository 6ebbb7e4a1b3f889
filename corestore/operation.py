"""Values passed through hooks: the unit of work (:class:`Operation`) and a failed invariant
(:class:`Violation`)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["Operation", "Outcome", "Violation", "SUCCEEDED"]


@attrs.frozen(kw_only=True, slots=True)
class Operation:
    """One unit of work as plugins see it.

    ``kind`` is ``"read" | "write" | "open" | "checkpoint" | "backup"`` (``backup``: a copy of
    the database through the backup API, which only reads it); ``name`` an optional label
    from the caller; ``attempt`` counts from 1 across ``run()`` retries; ``started`` and
    ``deadline`` are ``time.monotonic()`` values (``deadline`` None when unbounded): ``started``
    is when this operation (this attempt, in ``run()``) began, just before ``before_operation``,
    so ``time.monotonic() - operation.started`` in ``after_operation`` is its duration.
    """

    kind: str  # one of the kinds above; not validated per instance: the core builds one per operation (hot path)
    name: str | None = None
    attempt: int = 1
    started: float = attrs.field(factory=time.monotonic)
    deadline: float | None = None

    @property
    def is_write(self) -> bool:
        return self.kind != "read"


@attrs.frozen(kw_only=True, slots=True)
class Outcome:
    """How one operation ended, as ``after_operation`` receives it (its ``outcome`` argument).

    ``error`` is the exception the caller saw (a :class:`~corestore.StoreError` with its
    ``classification`` for database errors; the caller's own exception as raised; a
    :class:`~corestore.CircuitOpenError` when a ``before_operation`` refused it), None on success.
    ``retrying`` is True when ``run()`` will try the unit again: an attempt whose error the caller
    never sees (BUSY, TRANSIENT_IO within the retry budget). Built only when some plugin asks for
    the ``outcome`` argument; every success shares :data:`SUCCEEDED`.
    """

    error: BaseException | None = None
    retrying: bool = False

    @property
    def ok(self) -> bool:
        """True when the operation succeeded (committed, or the read finished)."""
        return self.error is None

    @property
    def classification(self) -> Any:
        """The error's :class:`~corestore.Classification` (None on success or for an error that is
        not the database's, e.g. the caller's own exception)."""
        return getattr(self.error, "classification", None)

    @property
    def committed(self) -> bool | None:
        """True on success (a write committed, a read finished); else the error's ``committed``
        (False when it has none: nothing was committed)."""
        if self.error is None:
            return True
        return getattr(self.error, "committed", False)


#: The outcome of every operation that succeeded.
SUCCEEDED = Outcome()


def _freeze_evidence(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen(kw_only=True)
class Violation:
    """A post-commit invariant that did not hold: which ``check``, a ``message``, and the
    ``evidence`` (numbers and modes) that shows it."""

    check: str
    message: str
    evidence: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_evidence, eq=False, hash=False)
