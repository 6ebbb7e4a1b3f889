"""The error taxonomy: what kind of failure happened, and the exceptions callers see.

Every exception corestore raises to a caller derives from :class:`StoreError`, carries the
:class:`Classification` that decided what the core did with it, keeps the driver error as
``__cause__``, and says whether the transaction ``committed`` (True, False, or None when the
outcome is unknown: an error from the COMMIT statement itself).

Caller errors (:class:`ConstraintError`, :class:`QueryError`) also subclass the peewee exception
peewee itself would have raised, so ``except peewee.IntegrityError`` in existing code keeps
working while one ``except StoreError`` catches everything.
"""
from __future__ import annotations

import enum
from types import EllipsisType
from typing import Any

import attrs
import peewee

__all__ = [
    "ErrorKind",
    "Classification",
    "StoreError",
    "BusyError",
    "TransientError",
    "FatalError",
    "CorruptionError",
    "CircuitOpenError",
    "InvariantViolation",
    "ConfigError",
    "PluginError",
    "ConstraintError",
    "QueryError",
    "ReadOnlyError",
    "StoreClosedError",
    "UnsavedDataError",
]


class ErrorKind(str, enum.Enum):  # noqa: UP042 - StrEnum would format a member with a spec (f'{m:>9}') by value, not by __str__ (the name)
    """What a database error means for the core (the taxonomy: site/concepts/errors.md)."""

    BUSY = "busy"
    TRANSIENT_IO = "transient_io"
    FATAL_IO = "fatal_io"
    CORRUPT = "corrupt"
    FULL = "full"
    READONLY = "readonly"
    ENVIRONMENT = "environment"
    CONSTRAINT = "constraint"
    PROGRAMMING = "programming"
    INVARIANT = "invariant"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.name


@attrs.frozen(kw_only=True)
class Classification:
    """The verdict on one error: its kind, codes and what the core should do about it.

    ``source`` names the plugin whose ``classify_error`` answered (``"core"`` for the built-in
    code tables: SQLite's result codes, PostgreSQL's SQLSTATEs in :mod:`corestore.classify_pg`).
    """

    kind: ErrorKind
    code: int | None = None
    extended_code: int | None = None
    name: str = ""
    message: str = ""
    retryable: bool = False
    trips_breaker: bool = False
    reopen: bool = False
    source: str = "core"
    #: the PostgreSQL SQLSTATE behind the error (None on SQLite, or when the driver gave none)
    sqlstate: str | None = None

    @property
    def is_fault(self) -> bool:
        """True for storage faults (what ``on_fatal`` hears about): not contention, not caller errors."""
        return self.kind not in _NOT_FAULTS


_NOT_FAULTS = frozenset({ErrorKind.BUSY, ErrorKind.CONSTRAINT, ErrorKind.PROGRAMMING, ErrorKind.UNKNOWN})


class StoreError(Exception):
    """Base of every error corestore raises.

    ``classification`` is the verdict (None for configuration errors), ``committed`` whether the
    unit of work is durable: True, False, or None when unknown. ``path`` names the database file.
    """

    default_committed: bool | None = False

    def __init__(
        self,
        message: str,
        *,
        classification: Classification | None = None,
        committed: bool | None | EllipsisType = ...,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.classification = classification
        self.committed: bool | None = self.default_committed if committed is ... else committed
        self.path = path

    @property
    def kind(self) -> ErrorKind | None:
        return self.classification.kind if self.classification else None


class BusyError(StoreError):
    """The database stayed locked by another connection past the busy timeout and retry budget."""


class TransientError(StoreError):
    """A storage fault that usually heals by itself (shared-memory, truncate, WAL lock races)."""


class FatalError(StoreError):
    """A storage fault that did not heal: disk I/O, a full disk, a read-only file, permissions."""


class CorruptionError(StoreError):
    """The database file is damaged (or quarantined because it was): do not write to it."""


class CircuitOpenError(StoreError):
    """The circuit breaker for this file is open: the call was refused without touching the file.

    ``retry_after`` is the number of seconds until the breaker admits a probe (None if isolated).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InvariantViolation(StoreError):
    """A post-commit invariant failed. The data IS durable (``committed=True``): do not retry.

    ``result`` is the unit of work's return value; ``violations`` the collected
    :class:`~corestore.Violation` values.
    """

    default_committed = True

    def __init__(self, message: str, *, result: Any = None, violations: tuple[Any, ...] = (), **kwargs: Any) -> None:
        kwargs.setdefault("committed", True)
        super().__init__(message, **kwargs)
        self.result = result
        self.violations = tuple(violations)


class ConfigError(StoreError, ValueError):
    """Bad configuration: the message names the file, table, key and what is allowed."""


class PluginError(StoreError):
    """A plugin could not be found, imported, built or asked for."""


class ReadOnlyError(StoreError, peewee.OperationalError):
    """A write was refused before it changed the file: the store's profile is read-only, or the
    statement ran inside ``store.read()`` / ``store.run(fn, read=True)``.

    A caller error: never counted by the circuit breaker, never passed to ``on_fatal``. Also a
    ``peewee.OperationalError`` (what peewee raises for a write to a read-only database).
    """


class StoreClosedError(StoreError, peewee.InterfaceError):
    """The store was closed; it never reconnects silently."""


class UnsavedDataError(StoreError):
    """Accepted data reached neither the database nor its durable fallback (e.g. accounting's
    dead-letter file on a full disk) and exists only in this process's memory.

    Raised by ``store.close()`` (after every plugin's ``on_close`` ran and every connection was
    closed) and by the plugin's own ``close()``. ``rows`` holds every such item (for accounting:
    :class:`~corestore_plugins.accounting.DeadLetter` records); save them elsewhere before the
    process exits, or they are lost.
    """

    def __init__(self, message: str, *, rows: Any = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.rows = list(rows)


class ConstraintError(StoreError, peewee.IntegrityError):
    """A constraint failed (UNIQUE, NOT NULL, CHECK, FOREIGN KEY...): the caller's data is at fault."""


class QueryError(StoreError, peewee.OperationalError, peewee.ProgrammingError):
    """The statement itself is wrong (syntax, missing table, misuse): the caller's code is at fault.

    Subclasses both peewee exceptions a driver may have raised for it (sqlite3 raises
    ``OperationalError`` for "no such table" and ``ProgrammingError`` for misuse).
    """
