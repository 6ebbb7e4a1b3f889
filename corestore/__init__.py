"""corestore: SQLite storage that survives the failures real applications meet.

A core store (peewee over SQLite) owns connections and transactions and asks plugins, through
pluggy hooks, what to do at each moment that matters. This module is the only import users need.
"""
from __future__ import annotations

from .aio import aopen
from .errors import (
    BusyError,
    CircuitOpenError,
    Classification,
    ConfigError,
    ConstraintError,
    CorruptionError,
    ErrorKind,
    FatalError,
    InvariantViolation,
    PluginError,
    QueryError,
    ReadOnlyError,
    StoreClosedError,
    StoreError,
    TransientError,
    UnsavedDataError,
)
from .health import HealthComponent, HealthReport, HealthStatus
from .hookspecs import hookimpl, hookspec
from .operation import Operation, Outcome, Violation
from .profiles import Profile, RetryPolicy
from .store import Store, open

__version__ = "0.1.0"

__all__ = [
    "open",
    "aopen",
    "Store",
    "Profile",
    "RetryPolicy",
    "hookimpl",
    "hookspec",
    "Operation",
    "Outcome",
    "Violation",
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
    "HealthStatus",
    "HealthComponent",
    "HealthReport",
    "__version__",
]
