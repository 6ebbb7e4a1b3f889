"""Test plugins, installed by the ``install_plugins`` fixture through real entry points."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from corestore import Classification, ErrorKind, HealthComponent, HealthStatus, Violation, hookimpl


class EventLog(list[tuple[Any, ...]]):
    """The hook calls the test plugins saw, in order, as ``(plugin, hook, ...)`` tuples.

    One per test: the ``events`` fixture (conftest.py, autouse) makes a fresh log and
    :func:`activate` s it, so no test sees another's calls and none clears a shared list by hand.
    Appends are thread-safe (hooks run on the threads that use the store).
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def record(self, *event: Any) -> None:
        with self._lock:
            self.append(tuple(event))


_active = EventLog()  # a child process that imports the test plugins records here


def activate(log: EventLog) -> EventLog:
    """Make ``log`` the one the test plugins write to; returns the one it replaces."""
    global _active
    previous, _active = _active, log
    return previous


def active() -> EventLog:
    """The log the test plugins write to now (the current test's ``events``)."""
    return _active


class _ActiveEvents:
    """:data:`EVENTS`: a read view of the current test's log, for modules that filter it in
    module-level helpers (the ``events`` fixture is the same object as ``active()``)."""

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(list(_active))

    def __len__(self) -> int:
        return len(_active)

    def __contains__(self, item: object) -> bool:
        return item in _active

    def __getitem__(self, index: Any) -> Any:
        return _active[index]

    def clear(self) -> None:
        """Forget what was recorded so far in this test (to look at one later step alone)."""
        _active.clear()


EVENTS = _ActiveEvents()


def record(*event: Any) -> None:
    _active.record(*event)


class Recorder:
    """Records every hook call into the current test's :class:`EventLog` as ``(plugin, hook, ...)``."""

    name = "t_recorder"

    @attrs.frozen(kw_only=True)
    class Settings:
        label: str = attrs.field(default="rec", validator=attrs.validators.instance_of(str),
                                 metadata={"help": "a label"})
        fail_open: bool = attrs.field(default=False, metadata={"help": "raise in on_open"})
        fail_store_open: bool = attrs.field(default=False, metadata={"help": "raise in on_store_open"})

    def __init__(self, settings: Recorder.Settings) -> None:
        self.settings = settings

    @hookimpl
    def on_store_open(self, store: Any) -> None:
        record(self.name, "on_store_open", store.stats()["connections_opened"])
        if self.settings.fail_store_open:
            raise RuntimeError("store refused by t_recorder")

    @hookimpl
    def on_open(self, store: Any, connection: Any) -> None:
        record(self.name, "on_open", type(connection).__module__)
        if self.settings.fail_open:
            raise RuntimeError("refused by t_recorder")

    @hookimpl
    def before_operation(self, store: Any, operation: Any) -> None:
        record(self.name, "before_operation", operation.kind, operation.name)

    @hookimpl
    def on_success(self, store: Any, operation: Any) -> None:
        record(self.name, "on_success", operation.kind, operation.name)

    @hookimpl
    def after_operation(self, store: Any, operation: Any) -> None:
        record(self.name, "after_operation", operation.kind, operation.name, operation.attempt)

    @hookimpl
    def on_fatal(self, store: Any, error: Any, classification: Classification, operation: Any) -> None:
        record(self.name, "on_fatal", classification.kind.name, operation.kind if operation else None)

    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> None:
        record(self.name, "on_commit_invariant", operation.kind if operation else None)

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        return HealthComponent(name=self.name, status=HealthStatus.UP, summary=self.settings.label)

    @hookimpl
    def on_health_changed(self, store: Any, previous: HealthStatus, current: HealthStatus) -> None:
        record(self.name, "on_health_changed", previous.name, current.name)

    @hookimpl
    def on_persistent_failure(self, store: Any, report: Any) -> None:
        record(self.name, "on_persistent_failure", report.status.name)

    @hookimpl
    def on_close(self, store: Any) -> None:
        record(self.name, "on_close")


class Raiser:
    """Raises in every isolated hook; the next plugin must still run."""

    name = "t_raiser"

    @hookimpl
    def on_success(self, store: Any, operation: Any) -> None:
        raise RuntimeError("t_raiser on_success")

    @hookimpl
    def on_health(self, store: Any) -> None:
        raise RuntimeError("t_raiser on_health")

    @hookimpl
    def on_health_changed(self, store: Any, previous: Any, current: Any) -> None:
        raise RuntimeError("t_raiser on_health_changed")

    @hookimpl
    def on_persistent_failure(self, store: Any, report: Any) -> None:
        raise RuntimeError("t_raiser on_persistent_failure")

    @hookimpl
    def on_close(self, store: Any) -> None:
        raise RuntimeError("t_raiser on_close")


class Toggle:
    """A health component whose status the test sets; fires persistent failure on demand."""

    name = "t_toggle"

    def __init__(self) -> None:
        self.status = HealthStatus.UP

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        return HealthComponent(name=self.name, status=self.status, summary="toggle")


class BusyIsFatal:
    """Overrides the core table: BUSY becomes FATAL_IO (to show first-non-None-wins)."""

    name = "t_busy_is_fatal"

    @hookimpl
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Classification | None:
        from corestore.classify import classify_exception

        base = classify_exception(error)
        if base.kind is ErrorKind.BUSY:
            return attrs.evolve(base, kind=ErrorKind.FATAL_IO, retryable=False, trips_breaker=True)
        return None


class Gate:
    """Refuses operations named 'forbidden' before they touch a connection."""

    name = "t_gate"

    @hookimpl
    def before_operation(self, store: Any, operation: Any) -> None:
        if operation.name == "forbidden":
            raise PermissionError("t_gate refuses 'forbidden'")


class Checker:
    """Reports a violation after every commit; raises it when asked."""

    name = "t_checker"

    @attrs.frozen(kw_only=True)
    class Settings:
        raise_it: bool = attrs.field(default=False, metadata={"help": "raise the violation"})

    def __init__(self, settings: Checker.Settings) -> None:
        self.settings = settings

    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> list[Violation]:
        count = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        v = Violation(check="t_checker.tables", message=f"{count} objects", evidence={"objects": count})
        if self.settings.raise_it:
            from corestore import InvariantViolation

            raise InvariantViolation("t_checker", violations=(v,))
        return [v]


class Wrapper:
    """A wrapper implementation on an isolated hook: must be refused."""

    name = "t_wrapper"

    @hookimpl(wrapper=True)
    def on_close(self, store: Any) -> Any:
        return (yield)


AFTER_COMMIT: list[Callable[[], Any]] = []


class CommitCallback:
    """Runs the callables queued in :data:`AFTER_COMMIT` right after a COMMIT, before the plugins
    listed after it in the profile (peewee 3.17 has no ``after_commit``)."""

    name = "t_commit_callback"

    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> None:
        while AFTER_COMMIT:
            AFTER_COMMIT.pop(0)()


class ForeignKeysOff:
    """Turns foreign_keys off in on_open, before wal_guard's read-back (tests the generalised read-back)."""

    name = "t_fk_off"

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    @hookimpl(tryfirst=True)
    def on_open(self, store: Any, connection: Any) -> None:
        connection.execute("PRAGMA foreign_keys = 0")


OUTCOME_CALLBACKS: list = []


class OutcomeRecorder:
    """Records ``after_operation``'s ``outcome`` (the extended contract); calls the callables in
    :data:`OUTCOME_CALLBACKS` with each outcome (a test releases a lock holder there)."""

    name = "t_outcome"

    @hookimpl
    def after_operation(self, operation: Any, outcome: Any) -> None:
        c = outcome.classification
        record(self.name, "after_operation", operation.name, operation.attempt, outcome.ok,
               c.kind.name if c is not None else (type(outcome.error).__name__ if outcome.error else None),
               outcome.retrying, outcome.committed)
        for fn in list(OUTCOME_CALLBACKS):
            fn(outcome)


class OutcomeRaiser:
    """``after_operation`` with ``outcome`` that raises: the implementations after it still run
    (isolated, in the generated dispatch as in the general one)."""

    name = "t_outcome_raiser"

    @hookimpl(tryfirst=True)
    def after_operation(self, store: Any, operation: Any, outcome: Any) -> None:
        record(self.name, "after_operation", operation.name, outcome.ok)
        raise RuntimeError("t_outcome_raiser after_operation")


class PgChecker:
    """``t_checker`` for a PostgreSQL store: counts the tables of the connection's schema."""

    name = "t_pg_checker"

    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> list[Violation]:
        count = connection.execute("SELECT count(*) FROM information_schema.tables "
                                   "WHERE table_schema = current_schema()").fetchone()[0]
        return [Violation(check="t_pg_checker.tables", message=f"{count} tables", evidence={"tables": count})]


class EngineBusyIsFatal:
    """Like ``t_busy_is_fatal``, through the store's engine's own table (SQLSTATEs on PostgreSQL)."""

    name = "t_engine_busy_is_fatal"

    @hookimpl
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Classification | None:
        base = store.backend.classify_exception(error)
        if base.kind is ErrorKind.BUSY:
            return attrs.evolve(base, kind=ErrorKind.FATAL_IO, retryable=False, trips_breaker=True)
        return None
