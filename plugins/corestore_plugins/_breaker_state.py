"""The circuit breaker's state machine: :class:`Breaker` (one per database file per process,
thread-safe), its :class:`BreakerState` and :class:`Transition` records, and the process-wide
registry :func:`breaker_for` reads. :class:`~corestore_plugins.circuit_breaker.CircuitBreaker` is
the plugin that feeds it from the core's hooks (moved verbatim out of ``circuit_breaker.py``).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corestore.errors import CircuitOpenError, Classification
from corestore.health import HealthComponent
from corestore.timefmt import iso as _iso

from ._breaker_records import (
    _CLOSED,
    _DONE,
    _READ_KINDS,
    _TRANSITIONS_KEPT,
    LANES,
    NAME,
    BreakerState,
    Transition,
    _Flight,
    _Lane,
    _lane_of,
)

# re-exported: the plugin and older imports find the registry here
from ._breaker_registry import _lock as _lock
from ._breaker_registry import _registry as _registry
from ._breaker_registry import breaker_for

if TYPE_CHECKING:  # pragma: no cover
    from .circuit_breaker import CircuitBreaker

__all__ = ["Breaker", "breaker_for"]

# Transitions are logged on the plugin's channel, as before the split (log filters keep working).
logger = logging.getLogger("corestore_plugins.circuit_breaker")


# -- the breaker ---------------------------------------------------------------------------------
class Breaker:
    """The state machine of one database file, shared by every store on it in this process.

    Thread-safe (one lock). ``clock`` (default ``time.monotonic``) is read for every time-based
    rule and may be replaced by a test: ``breaker.clock = fake``. The plugin feeds it through
    :meth:`admit` (``before_operation``), :meth:`record_success` (``on_success``),
    :meth:`record_fault` (``on_fatal``) and :meth:`finish` (``after_operation``).

    Transitions are queued under the lock and announced after it is released, in order: one
    WARNING log each and, when the breaker's health status changes, ``store.health(probe=False)``
    for every store attached to the breaker, which fires ``on_health_changed`` once per change
    of that store's aggregate status (no I/O). They are announced from :meth:`admit` (before a
    connection is touched), :meth:`finish` (after the operation released its connection) and the
    public methods, never from inside ``on_fatal``/``on_success``.
    """

    target = "the file"  #: what a refusal did not touch ("the server" for a PostgreSQL database)

    def __init__(self, path: str, settings: CircuitBreaker.Settings, *, owner: str = "",
                 clock: Callable[[], float] | None = None) -> None:
        self.path = path
        self.settings = settings
        self.owner = owner
        self.clock: Callable[[], float] = clock or time.monotonic
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._messages: dict[int, str] = {}  # epoch -> the refusal message of that state
        self._flights: dict[int, Any] = {}  # id(op) -> admitting epoch | _Flight (probe) | _DONE
        self._lanes = {name: _Lane(name, settings.window_s) for name in LANES}
        self._write, self._read = self._lanes["write"], self._lanes["read"]
        self._open_until = 0.0
        self._cooldown = float(settings.cooldown_s)
        self._retrips = 0
        self._closed_at: float | None = None
        self._trips = 0
        self._probes = 0
        self._probe_successes = 0
        self._trip_lane: str | None = None
        self._reason = ""
        self._isolated_reason: str | None = None
        self._rejected = 0
        self._last_fault: tuple[float, str, Classification] | None = None
        self._events: collections.deque[Transition] = collections.deque()
        self.transitions: collections.deque[Transition] = collections.deque(maxlen=_TRANSITIONS_KEPT)
        self._stores: dict[int, weakref.ref[Any]] = {}

    def __repr__(self) -> str:
        return f"<Breaker {self.path!r} {self._state.name}>"

    # -- reading -------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker whose cooldown is over reads HALF_OPEN)."""
        self.poll()
        return self._state

    def poll(self) -> BreakerState:
        """Apply the time-based transition (OPEN -> HALF_OPEN once the cooldown is over) and
        announce pending transitions; returns the state."""
        with self._lock:
            if self._state is BreakerState.OPEN and self.clock() >= self._open_until:
                self._transition(BreakerState.HALF_OPEN, self.clock(), "cooldown over: admitting probes")
            state = self._state
        self._announce()
        return state

    def retry_after(self) -> float | None:
        """Seconds until a probe is admitted: 0 when closed or half-open, None when isolated."""
        with self._lock:
            if self._state is BreakerState.ISOLATED:
                return None
            if self._state is BreakerState.OPEN:
                return max(0.0, self._open_until - self.clock())
            return 0.0

    def snapshot(self) -> dict[str, Any]:
        """The counters and state as a JSON-friendly dict (what ``on_health`` reports)."""
        self.poll()
        with self._lock:
            now = self.clock()
            state = self._state
            out: dict[str, Any] = {
                "state": state.value,
                "path": self.path,
                "failure_threshold": self.settings.failure_threshold,
                "lanes": {},
                "rejected": self._rejected,
                "trips": self._trips,
                "retrips": self._retrips,
                "cooldown_s": self._cooldown,
                "probes_in_flight": self._probes if state is BreakerState.HALF_OPEN else 0,
                "in_flight": len(self._flights),
                "stores": sum(1 for ref in self._stores.values() if ref() is not None),
            }
            for name, lane in self._lanes.items():
                entry: dict[str, Any] = {
                    "consecutive_failures": lane.consecutive,
                    "failures": lane.failures,
                    "successes": lane.successes,
                }
                if lane.window is not None:
                    calls, failures = lane.window.counts(now)
                    entry["window_calls"] = calls
                    entry["window_failures"] = failures
                out["lanes"][name] = entry
            if state is BreakerState.OPEN:
                left = max(0.0, self._open_until - now)
                out["next_probe_in_s"] = round(left, 3)
                out["next_probe_at"] = _iso(time.time() + left)
            elif state is BreakerState.HALF_OPEN:
                out["next_probe_in_s"] = 0.0
            if state is not BreakerState.CLOSED:
                out["reason"] = self._reason
                out["trip_lane"] = self._trip_lane
            if self._isolated_reason is not None:
                out["isolated_reason"] = self._isolated_reason
            if self._last_fault is not None:
                wall, lane_name, c = self._last_fault
                out["last_fault"] = {"at": _iso(wall), "lane": lane_name, "kind": c.kind.name,
                                     "name": c.name, "code": c.extended_code or c.code}
            if self.transitions:
                out["last_transition"] = self.transitions[-1].to_dict()
        return out

    def component(self) -> HealthComponent:
        """The ``circuit_breaker`` health component: UP closed, DEGRADED half-open, DOWN open or
        isolated, with :meth:`snapshot` as details."""
        details = self.snapshot()
        state = BreakerState(details["state"])
        writes, reads = details["lanes"]["write"], details["lanes"]["read"]
        threshold = details["failure_threshold"]
        if state is BreakerState.CLOSED:
            summary = (f"closed (consecutive faults: writes {writes['consecutive_failures']}/{threshold}, "
                       f"reads {reads['consecutive_failures']}/{threshold}; {details['rejected']} rejected so far)")
        elif state is BreakerState.OPEN:
            summary = f"OPEN: {details['reason']}; next probe in {details['next_probe_in_s']:.1f} s"
        elif state is BreakerState.HALF_OPEN:
            summary = f"HALF_OPEN: probing ({details['probes_in_flight']}/{self.settings.half_open_probes} probe(s) in flight)"
        else:
            summary = f"ISOLATED: {details.get('isolated_reason')}; refusing everything until reset()"
        return HealthComponent(name=NAME, status=state.health, summary=summary, details=details)

    # -- the hooks' side -----------------------------------------------------------------------
    # In-flight operations are keyed by id(op) (the core keeps the object alive until
    # after_operation). The value is the epoch the operation was admitted in (an int: the cheap
    # closed-state path), a _Flight for a half-open probe, or _DONE once its outcome was counted
    # (a reported post-commit violation reaches on_fatal and then on_success: the first counts).
    def admit(self, op: Any) -> None:
        """Let ``op`` start, or raise :class:`~corestore.CircuitOpenError` (nothing touched)."""
        state = self._state
        if state is _CLOSED:  # the hot path: one dict store, no lock (see the notes above)
            self._flights[id(op)] = self._epoch
            return
        if state is BreakerState.ISOLATED or state is BreakerState.OPEN:
            # Refusing is the other hot path (a broken file is hammered by every caller): no
            # lock while the state says "refuse"; a transition racing with it can only refuse one
            # more operation, never admit one. The count is a lock-free total.
            now = self.clock()
            if state is BreakerState.ISOLATED or now < self._open_until:
                self._rejected += 1
                raise self._rejection(state, now)
        error: CircuitOpenError | None = None
        with self._lock:
            state = self._state
            if state is _CLOSED:
                self._flights[id(op)] = self._epoch
                return
            now = self.clock()
            if state is BreakerState.OPEN and now >= self._open_until:
                self._transition(BreakerState.HALF_OPEN, now, "cooldown over: admitting probes")
                state = BreakerState.HALF_OPEN
            if state is BreakerState.HALF_OPEN and self._probes < self.settings.half_open_probes:
                self._probes += 1
                self._flights[id(op)] = _Flight(op, self._epoch)
            else:
                self._rejected += 1
                error = self._rejection(state, now)
        if self._events:
            self._announce()
        if error is not None:
            raise error

    def refuse_open(self, profile: Any) -> None:
        """The open gate (:mod:`corestore.opengate`): while this breaker is OPEN (cooldown not
        over) or ISOLATED, ``corestore.open()`` of a profile that enables the plugin is refused
        with :class:`~corestore.CircuitOpenError` before a store is built or the file touched.
        Otherwise it admits nothing: the open goes on as an operation of kind ``"open"``
        through :meth:`admit` (a half-open breaker's probe), and its failure counts."""
        state = self._state
        if state is _CLOSED or state is BreakerState.HALF_OPEN:
            return
        if NAME not in profile.plugins and NAME not in _env_plugins():
            return
        now = self.clock()
        if state is BreakerState.ISOLATED or (state is BreakerState.OPEN and now < self._open_until):
            self._rejected += 1
            raise self._rejection(state, now)

    def record_success(self, op: Any) -> None:
        """Count a successful outcome of ``op`` (once per operation)."""
        key = id(op)
        read = op.kind in _READ_KINDS
        lane = self._read if read else self._write
        if self._state is _CLOSED and lane.consecutive == 0 and lane.window is None:
            # The steady state, without the lock: nothing to reset, nothing to record but the
            # success count (a lost increment under a thread race would only skew that total).
            flight = self._flights.get(key)
            if flight.__class__ is int:
                lane.successes += 1
                self._flights[key] = _DONE
                return
        with self._lock:
            flight = self._flights.get(key)
            if flight is _DONE:
                return
            lane = self._read if read else self._write
            lane.successes += 1
            state = self._state
            if state is _CLOSED:
                if flight is None or flight == self._epoch:  # not a straggler from an older epoch
                    lane.consecutive = 0
                    if lane.window is not None:
                        lane.window.add(self.clock(), False)
                return
            if flight is None or flight.__class__ is not _Flight:
                return
            if flight.done:
                return
            flight.done = True
            if state is BreakerState.HALF_OPEN and flight.epoch == self._epoch:
                self._release(flight)
                if lane.window is not None:
                    lane.window.add(self.clock(), False)
                if self._trip_lane is None or lane.name == self._trip_lane:
                    self._probe_successes += 1
                    if self._probe_successes >= self.settings.success_threshold:
                        self._transition(BreakerState.CLOSED, self.clock(),
                                         f"{self._probe_successes} successful {lane.name} probe(s)")

    def record_fault(self, op: Any, classification: Classification) -> None:
        """Count a storage fault of ``op`` (once per operation); may open the breaker. An
        operation this breaker never admitted (``op`` None: a plugin reporting on its own) counts
        as a write admitted now."""
        lane_name = _lane_of(op)
        with self._lock:
            key = id(op)
            flight: Any = self._flights.get(key) if op is not None else None  # a _Flight when `probe` below
            if flight is _DONE:
                return
            probe = flight.__class__ is _Flight
            if probe:
                if flight.done:
                    return
                flight.done = True
                epoch = flight.epoch
            else:
                epoch = self._epoch if flight is None else flight
                if op is not None and flight is not None:
                    self._flights[key] = _DONE
            lane = self._lanes[lane_name]
            lane.failures += 1
            self._last_fault = (time.time(), lane_name, classification)
            current = epoch == self._epoch
            state = self._state
            what = classification.name or classification.kind.name
            if state is _CLOSED and current:
                now = self.clock()
                lane.consecutive += 1
                if lane.window is not None:
                    lane.window.add(now, True)
                reason = None
                if lane.consecutive >= self.settings.failure_threshold:
                    reason = f"{lane.consecutive} consecutive {lane_name} faults (last: {what})"
                elif lane.window is not None:
                    calls, failures = lane.window.counts(now)
                    if calls >= self.settings.min_calls and failures >= self.settings.failure_rate * calls:
                        reason = (f"{failures} of the last {calls} {lane_name} operations failed within "
                                  f"{self.settings.window_s:g} s (last: {what})")
                if reason is not None:
                    # A trip soon after the last close (within its cooldown) is a re-trip too:
                    # flapping storage does not get the short cooldown back by one lucky probe.
                    recent = self._closed_at is not None and now - self._closed_at < self._cooldown
                    self._retrips = self._retrips + 1 if recent else 0
                    self._trip(now, lane, reason)
            elif state is BreakerState.HALF_OPEN and probe and current:
                now = self.clock()
                self._release(flight)
                lane.consecutive += 1
                if lane.window is not None:
                    lane.window.add(now, True)
                self._retrips += 1
                self._trip(now, lane, f"a half-open {lane_name} probe failed ({what})")

    def finish(self, op: Any) -> None:
        """``op`` is over, however it ended: forget it and free its probe slot if it held one."""
        flight = self._flights.pop(id(op), None)
        if flight.__class__ is _Flight and not flight.released:
            with self._lock:
                self._release(flight)
        if self._events:
            self._announce()

    # -- manual control ------------------------------------------------------------------------
    def isolate(self, reason: str = "isolated by the operator") -> None:
        """Force the breaker open until :meth:`reset`: every operation on the file is refused."""
        with self._lock:
            self._isolated_reason = reason
            if self._state is not BreakerState.ISOLATED:
                self._transition(BreakerState.ISOLATED, self.clock(), f"isolate(): {reason}")
        self._announce()

    def reset(self) -> None:
        """Force the breaker closed: forget the streaks, the windows and the cooldown growth
        (lifetime totals are kept). Operations in flight from before are no longer counted."""
        with self._lock:
            self._isolated_reason = None
            if self._state is not BreakerState.CLOSED:
                self._transition(BreakerState.CLOSED, self.clock(), "reset()")
            for lane in self._lanes.values():
                lane.consecutive = 0
                if lane.window is not None:
                    lane.window.clear()
            self._retrips = 0
            self._cooldown = float(self.settings.cooldown_s)
            self._closed_at = None
        self._announce()

    # -- internals (lock held) -----------------------------------------------------------------
    def _release(self, flight: _Flight) -> None:
        if not flight.released:
            flight.released = True
            if flight.epoch == self._epoch and self._probes > 0:
                self._probes -= 1

    def _trip(self, now: float, lane: _Lane, reason: str) -> None:
        settings = self.settings
        cooldown = min(float(settings.max_cooldown_s), settings.cooldown_s * settings.backoff_factor ** self._retrips)
        self._cooldown = cooldown
        self._open_until = now + cooldown
        self._trip_lane = lane.name
        self._trips += 1
        self._reason = reason
        calls, failures = lane.window.counts(now) if lane.window is not None else (0, 0)
        self._transition(BreakerState.OPEN, now, reason, lane=lane.name, consecutive=lane.consecutive,
                         window_calls=calls, window_failures=failures, cooldown_s=cooldown)

    def _transition(self, new: BreakerState, now: float, reason: str, **extra: Any) -> None:
        record = Transition(previous=self._state, current=new, reason=reason, at=now, wall=time.time(), **extra)
        self._state = new
        self._epoch += 1
        self._probes = 0
        self._probe_successes = 0
        if new is BreakerState.CLOSED:
            # The streaks restart; the sliding windows keep what they saw (they forget by time).
            for lane in self._lanes.values():
                lane.consecutive = 0
            self._trip_lane = None
            self._closed_at = now
            self._reason = ""
        elif new is BreakerState.ISOLATED:
            self._reason = reason
        self.transitions.append(record)
        self._events.append(record)

    def _rejection(self, state: BreakerState, now: float) -> CircuitOpenError:
        # The message text is built once per state (per epoch): a refused call must cost
        # microseconds. The seconds to the next probe are in ``retry_after``.
        message = self._messages.get(self._epoch)
        if message is None:
            if state is BreakerState.ISOLATED:
                message = (f"{self.path}: circuit breaker ISOLATED ({self._isolated_reason}); every operation is "
                           f"refused without touching {self.target} until store.plugin('circuit_breaker').reset()")
            elif state is BreakerState.OPEN:
                message = (f"{self.path}: circuit breaker OPEN after {self._reason}; refused without touching "
                           f"{self.target} until the cooldown ({self._cooldown:g} s) is over (retry_after: seconds to the "
                           "next probe); store.health() shows the breaker")
            else:
                message = (f"{self.path}: circuit breaker HALF_OPEN: the probe(s) in flight decide whether it "
                           f"closes; refused without touching {self.target}, retry shortly")
            self._messages = {self._epoch: message}
        if state is BreakerState.OPEN:
            retry_after: float | None = max(0.0, self._open_until - now)
        else:
            retry_after = None if state is BreakerState.ISOLATED else 0.0
        return CircuitOpenError(message, retry_after=retry_after, committed=False, path=self.path)

    # -- announcing ----------------------------------------------------------------------------
    def _announce(self) -> None:
        """Log and fire ``on_health_changed`` for queued transitions, in order, outside the
        breaker's lock; one thread at a time (another thread's later call picks up the rest)."""
        while self._events:
            if not self._notify_lock.acquire(blocking=False):
                return
            try:
                while True:
                    with self._lock:
                        if not self._events:
                            break
                        record = self._events.popleft()
                        stores = [ref() for ref in self._stores.values()]
                    self._deliver(record, [s for s in stores if s is not None and not s.closed])
            finally:
                self._notify_lock.release()

    def _deliver(self, record: Transition, stores: list[Any]) -> None:
        logger.warning("%s: circuit breaker %s -> %s: %s%s", self.path, record.previous.name, record.current.name,
                       record.reason, f" (cooldown {record.cooldown_s:g} s)" if record.cooldown_s is not None else "")
        previous, current = record.previous.health, record.current.health
        if previous is current:
            return  # OPEN <-> ISOLATED: DOWN either way
        for store in stores:
            # The store's own aggregation fires on_health_changed, exactly once per change of the
            # aggregate status (no I/O: probe=False). A store that never computed a report has no
            # status to change from: then the breaker's own statuses are announced.
            try:
                first = store.last_health is None
                store.health(probe=False)
                if first:
                    store.hooks.on_health_changed(store, previous, current)
            except Exception:
                logger.exception("%s: announcing a breaker transition to %r failed", self.path, store)

    # -- stores --------------------------------------------------------------------------------
    def _attach_store(self, store: Any) -> None:
        with self._lock:
            self._stores[id(store)] = weakref.ref(store)

    def _detach_store(self, store: Any) -> None:
        with self._lock:
            ref = self._stores.get(id(store))
            if ref is not None and ref() is store:
                del self._stores[id(store)]

    def _attached(self) -> int:
        with self._lock:
            return sum(1 for ref in self._stores.values() if (s := ref()) is not None and not s.closed)

    def _after_fork_in_child(self) -> None:
        # The parent's other threads do not exist here: their operations never end in this process.
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._flights = {}
        self._probes = 0


def _env_plugins() -> tuple[str, ...]:
    from corestore.registry import env_plugins

    return env_plugins()

