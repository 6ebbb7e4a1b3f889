"""Values passed through hooks: the unit of work (:class:`Operation`) and a failed invariant
(:class:`Violation`)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["Operation", "Outcome", "Violation", "SUCCEEDED", "new_operation"]


class Operation:
    """One unit of work as plugins see it.

    ``kind`` is ``"read" | "write" | "open" | "checkpoint" | "backup"`` (``backup``: a copy of
    the database through the backup API, which only reads it); ``name`` an optional label
    from the caller; ``attempt`` counts from 1 across ``run()`` retries; ``started`` and
    ``deadline`` are ``time.monotonic()`` values (``deadline`` None when unbounded): ``started``
    is when this operation (this attempt, in ``run()``) began, just before ``before_operation``,
    so ``time.monotonic() - operation.started`` in ``after_operation`` is its duration.

    Immutable: its attributes are read-only (assigning one raises ``AttributeError``), it
    compares and hashes by value. Built with keywords (``Operation(kind="write")``; ``started``
    defaults to now). Since issue 18 it is a plain class with read-only properties instead of an
    attrs frozen class: the core builds one per operation, and attrs' frozen ``__init__`` cost
    about 7,000 instructions there against about 1,500 now (:func:`new_operation`).
    """

    __slots__ = ("_kind", "_name", "_attempt", "_started", "_deadline")

    def __init__(self, *, kind: str, name: str | None = None, attempt: int = 1, started: float | None = None,
                 deadline: float | None = None) -> None:
        self._kind = kind  # one of the kinds above; not validated per instance (hot path)
        self._name = name
        self._attempt = attempt
        self._started = _monotonic() if started is None else started
        self._deadline = deadline

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def started(self) -> float:
        return self._started

    @property
    def deadline(self) -> float | None:
        return self._deadline

    @property
    def is_write(self) -> bool:
        return self._kind != "read"

    def _fields(self) -> tuple[Any, ...]:
        return (self._kind, self._name, self._attempt, self._started, self._deadline)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Operation(kind={self._kind!r}, name={self._name!r}, attempt={self._attempt!r}, "
                f"started={self._started!r}, deadline={self._deadline!r})")


_monotonic = time.monotonic
_new = object.__new__


def new_operation(kind: str, name: str | None, attempt: int = 1, deadline: float | None = None) -> Operation:
    """``Operation(kind=kind, name=name, ...)`` started now, for the core's hot path: positional
    arguments (no keyword dict) and plain slot stores."""
    op: Operation = _new(Operation)
    op._kind = kind
    op._name = name
    op._attempt = attempt
    op._started = _monotonic()
    op._deadline = deadline
    return op


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
