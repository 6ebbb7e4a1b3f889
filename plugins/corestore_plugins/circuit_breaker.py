"""circuit_breaker: stop hammering a database file that keeps failing.

When a file's storage breaks (a disk returning EIO, a full volume, a damaged file), every worker
that keeps calling it turns one fault into thousands of errors: the incident this plugin comes from
(openhuman, site/plugins/circuit_breaker.md) flooded error reporting with ~19K events in four days from
one code path. Its upstream fix was a per-path breaker (3 failures -> 30 s), which first forgot to
re-arm after a failed post-cooldown retry, and which flapping storage kept resetting.

This plugin keeps **one breaker per database file (real path) per process**, shared by every store
and thread on that file. It counts only storage faults whose classification ``trips_breaker``, one
outcome per operation, reads and writes apart; after ``failure_threshold`` consecutive faults (or a
failure rate over a sliding window) it opens and refuses every operation at once with
:class:`~corestore.CircuitOpenError`, before any connection is touched; after the cooldown it admits
``half_open_probes`` probes, closes after ``success_threshold`` proving successes and re-arms a
longer cooldown when a probe fails. ``isolate()`` / ``reset()`` force it open / closed.

On PostgreSQL the breaker is keyed by the server and database, ``host:port/dbname`` (no user,
no password: two stores reaching one database with different credentials share it), and counts
what the SQLSTATE table marks ``trips_breaker``: lost connections, a server shutting down or
refusing connections (class 08, 57P01-57P03), disk full, I/O errors, corruption.

The state machine is :class:`Breaker` (in ``_breaker_state``) (thread-safe; its ``clock`` can be replaced by tests);
:class:`CircuitBreaker` is the plugin that feeds it from the core's hooks.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from corestore import hookimpl, opengate
from corestore.errors import ConfigError, PluginError
from corestore.health import HealthComponent
from corestore.settings import at_least_field, integer_at_least, number, optional

from ._breaker_records import _CLOSED, _DONE, _READ_KINDS, LANES, BreakerState, Transition, _Flight
from ._breaker_state import Breaker, _lock, _registry, breaker_for
from ._server import is_postgres, server_key

if TYPE_CHECKING:  # pragma: no cover
    from corestore.errors import Classification
    from corestore.operation import Operation
    from corestore.store import Store

__all__ = [
    "CircuitBreaker",
    "Breaker",
    "BreakerState",
    "Transition",
    "breaker_for",
    "LANES",
]

logger = logging.getLogger(__name__)

def _describe(store: Any) -> str:
    profile = store.profile
    return f"profile {profile.name!r} ({profile.origin})"


def _differences(a: Any, b: Any) -> tuple[str, str]:
    fields = [f.name for f in attrs.fields(type(a)) if getattr(a, f.name) != getattr(b, f.name)]
    return (", ".join(f"{n}={getattr(a, n)!r}" for n in fields), ", ".join(f"{n}={getattr(b, n)!r}" for n in fields))


# -- the plugin ----------------------------------------------------------------------------------
class CircuitBreaker:
    """Refuse operations on a database file while its storage keeps failing (site/plugins/circuit_breaker.md).

    One :class:`Breaker` per database file (real path) per process — per server and database
    (``host:port/dbname``) on PostgreSQL — shared by every store and thread on it; every store
    that enables the plugin on one file must give it the same settings (else
    :class:`~corestore.ConfigError` naming both profiles). A ``:memory:`` store gets
    a breaker of its own.

    ================== ============ ========= =========================================================
    setting            type         default   meaning
    ================== ============ ========= =========================================================
    failure_threshold  int          3         consecutive faults of one direction (reads or writes)
                                              that open the breaker
    cooldown_s         float        30        seconds an opened breaker refuses everything before it
                                              admits a probe
    backoff_factor     float        2         the cooldown is multiplied by this on each consecutive
                                              re-trip (a failed probe, or a trip within one cooldown
                                              of the last close); 1 keeps it constant
    max_cooldown_s     float        300       upper bound of the grown cooldown
    half_open_probes   int          1         operations admitted at once while half-open; everyone
                                              else is still refused
    success_threshold  int          1         successful probes (of the direction that tripped it)
                                              that close the breaker
    window_s           float | None None      sliding window for the failure-rate rule; unset = rule off
    min_calls          int          10        calls of one direction in the window before the rate
                                              rule can trip
    failure_rate       float        0.5       fraction of failed calls in the window that trips it
    ================== ============ ========= =========================================================

    Manual control: :meth:`isolate` (forced open until :meth:`reset`) and :meth:`reset`.
    ``store.plugin("circuit_breaker").breaker`` is the shared :class:`Breaker` (state, counters,
    transitions, replaceable ``clock``).
    """

    name: ClassVar[str] = "circuit_breaker"

    @attrs.frozen(kw_only=True)
    class Settings:
        failure_threshold: int = attrs.field(default=3, validator=integer_at_least(1), metadata={
            "help": "consecutive faults of one direction (reads or writes) that open the breaker"})
        cooldown_s: float = attrs.field(default=30.0, validator=number(0, low_inclusive=False, noun="a number"), metadata={
            "help": "seconds an open breaker refuses everything before admitting a probe"})
        backoff_factor: float = attrs.field(default=2.0, validator=number(1, noun="a number"), metadata={
            "help": "cooldown multiplier on each consecutive re-trip (1 = constant cooldown)"})
        max_cooldown_s: float = attrs.field(default=300.0, validator=attrs.validators.and_(
            number(0, low_inclusive=False, noun="a number"), at_least_field("cooldown_s")), metadata={
            "help": "upper bound of the grown cooldown"})
        half_open_probes: int = attrs.field(default=1, validator=integer_at_least(1), metadata={
            "help": "operations admitted at once while half-open"})
        success_threshold: int = attrs.field(default=1, validator=integer_at_least(1), metadata={
            "help": "successful probes (of the direction that tripped it) that close the breaker"})
        window_s: float | None = attrs.field(
            default=None, validator=optional(number(0, low_inclusive=False, noun="a number")), metadata={
                "help": "sliding window (seconds) of the failure-rate rule; unset turns the rule off"})
        min_calls: int = attrs.field(default=10, validator=integer_at_least(1), metadata={
            "help": "calls of one direction in the window before the rate rule can trip"})
        failure_rate: float = attrs.field(default=0.5, validator=number(
            0, 1, low_inclusive=False, what="a fraction in (0, 1], e.g. 0.5 for half of the calls"), metadata={
            "help": "fraction of failed calls in the window that opens the breaker"})

    def __init__(self, settings: CircuitBreaker.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`) is what the
        plugin's time-based rules read: the same keyword, and the same ``clock`` attribute, on
        every shipped plugin that reads the time."""
        self.settings = settings if settings is not None else CircuitBreaker.Settings()
        self.clock: Callable[[], float] = clock
        self._breaker: Breaker | None = None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._breaker!r}>"

    # -- public --------------------------------------------------------------------------------
    @property
    def breaker(self) -> Breaker:
        """The shared :class:`Breaker` of this store's file (or PostgreSQL database)."""
        if self._breaker is None:
            raise PluginError("circuit_breaker: this plugin instance is not attached to a store yet")
        return self._breaker

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def stats(self) -> dict[str, Any]:
        """The breaker's state and counters (:meth:`Breaker.snapshot`): the same ``stats()`` every
        shipped plugin has."""
        return self.breaker.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The same as :meth:`stats` (kept for existing callers)."""
        return self.stats()

    @property
    def transitions(self) -> list[Transition]:
        """The most recent transitions, oldest first."""
        return list(self.breaker.transitions)

    def isolate(self, reason: str = "isolated by the operator") -> None:
        """Force the file's breaker open until :meth:`reset` (every store on the file in this
        process is refused)."""
        self.breaker.isolate(reason)

    def reset(self) -> None:
        """Force the file's breaker closed and forget its streaks."""
        self.breaker.reset()

    # -- attaching ------------------------------------------------------------------------------
    def _attach(self, store: Store) -> Breaker:
        who = _describe(store)
        # the key: the file's real path on SQLite, host:port/dbname on PostgreSQL (no credentials)
        postgres = is_postgres(store)
        key = server_key(store) if postgres else store.path
        what = "database" if postgres else "file"
        with _lock():
            if self._breaker is not None:
                return self._breaker
            breaker: Breaker | None
            if getattr(store, "memory", False):
                breaker = Breaker(store.path, self.settings, owner=who, clock=self.clock)
            else:
                breaker = _registry.get(key)
                if breaker is not None and breaker.settings != self.settings:
                    if breaker._attached():
                        mine, theirs = _differences(self.settings, breaker.settings)
                        raise ConfigError(
                            f"{key}: {who} enables circuit_breaker with {mine}, but {breaker.owner} already "
                            f"uses this {what} with {theirs}; one breaker guards a {what} per process, so every profile "
                            "that opens it must give circuit_breaker the same settings"
                        )
                    logger.info("%s: circuit_breaker settings changed by %s (no store was using the old breaker)",
                                key, who)
                    breaker = None
                if breaker is None:
                    breaker = _registry[key] = Breaker(key, self.settings, owner=who, clock=self.clock)
                    if postgres:
                        breaker.target = "the server"
                # the open gate is looked up by the profile's path (on PostgreSQL its redacted URL,
                # which differs per user): every store's path gets it
                opengate.register(store.path, CircuitBreaker.name, breaker.refuse_open)
            breaker._attach_store(store)
            self._breaker = breaker
        return breaker

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def on_store_open(self, store: Store) -> None:
        if self._breaker is None:
            self._attach(store)  # conflicting settings fail corestore.open() itself

    @hookimpl
    def on_fork_child(self, store: Store) -> None:
        """In a forked child (the core calls it): new registry lock, inherited breakers reset."""
        _lock()
        if self._breaker is not None:
            self._breaker._after_fork_in_child()

    # The three per-operation hooks run the breaker's steady state (closed, no streak, no
    # window) inline, exactly as Breaker.admit / record_success / finish do it, and call those
    # methods for everything else: one Python call less each on every operation (issue 18).
    @hookimpl
    def before_operation(self, store: Store, operation: Operation) -> None:
        breaker = self._breaker
        if breaker is not None and breaker._state is _CLOSED:
            breaker._flights[id(operation)] = breaker._epoch  # Breaker.admit's hot path
            return
        (breaker or self._attach(store)).admit(operation)

    @hookimpl
    def on_success(self, operation: Operation) -> None:
        breaker = self._breaker
        if breaker is None:
            return
        lane = breaker._read if operation._kind in _READ_KINDS else breaker._write
        if breaker._state is _CLOSED and lane.consecutive == 0 and lane.window is None:
            key = id(operation)  # Breaker.record_success's hot path
            if breaker._flights.get(key).__class__ is int:
                lane.successes += 1
                breaker._flights[key] = _DONE
                return
        breaker.record_success(operation)

    @hookimpl
    def on_fatal(self, classification: Classification, operation: Operation | None) -> None:
        breaker = self._breaker
        if breaker is not None and classification.trips_breaker:
            breaker.record_fault(operation, classification)

    @hookimpl
    def after_operation(self, operation: Operation) -> None:
        breaker = self._breaker
        if breaker is not None:  # Breaker.finish, inlined
            flight = breaker._flights.pop(id(operation), None)
            if flight.__class__ is _Flight and not flight.released:
                with breaker._lock:
                    breaker._release(flight)
            if breaker._events:
                breaker._announce()

    @hookimpl
    def on_health(self, store: Store) -> HealthComponent | None:
        breaker = self._breaker
        if breaker is None:
            return None
        return breaker.component()

    @hookimpl
    def on_close(self, store: Store) -> None:
        breaker = self._breaker
        if breaker is not None:
            breaker._detach_store(store)
