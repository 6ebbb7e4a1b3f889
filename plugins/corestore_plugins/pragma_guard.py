"""pragma_guard: a pragma changed after open is a health finding (site/plugins/pragma_guard.md).

**When.** Enable it wherever a setting matters enough to be in the profile: ``synchronous``,
``busy_timeout``, ``foreign_keys``... **Why.** Teams raised ``busy_timeout`` three times with no
effect because the setting never reached the connection, and application code (an ORM's
"speed-up" recipe, a migration) can run ``PRAGMA synchronous=OFF`` on a connection the store
handed out; nothing notices until the data is lost. ``wal_guard`` reads every profile pragma back
when a connection opens; this plugin keeps reading them back afterwards.

How: a counter on the commit path (``on_commit_invariant``, which receives the connection that
just committed; no system call). Every ``check_every`` commits the pragmas the profile sets are
read back on that connection (:mod:`corestore_plugins._pragma_readback`: a few ``PRAGMA`` reads,
no I/O). A difference is a finding naming the pragma, the wanted and the actual value: WARNING
once, health DEGRADED. It is not corrected and not raised (the commit is durable; changing a
setting under the application's feet is its decision to fix): a later read-back of the same
connection that agrees clears it. The write gate's shortened ``busy_timeout`` during an operation
whose gate wait timed out is not drift.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

import attrs

from corestore import HealthComponent, HealthStatus, hookimpl
from corestore.settings import integer_at_least

from ._pragma_readback import describe, expected_pragmas, read_back

__all__ = ["PragmaGuard"]

logger = logging.getLogger(__name__)


class PragmaGuard:
    """Reads the profile's pragmas back every ``check_every`` commits and reports drift.

    Settings (``[profiles.NAME.settings.pragma_guard]``):

    | name | type | default | meaning |
    |---|---|---|---|
    | ``check_every`` | int | 100 | commits between two read-backs on the committing connection |
    """

    name: ClassVar[str] = "pragma_guard"
    #: SQLite only: a PostgreSQL profile that lists it is refused at open (corestore.registry.check_engine)
    engines: ClassVar[tuple[str, ...]] = ("sqlite",)

    @attrs.frozen(kw_only=True)
    class Settings:
        """pragma_guard's settings (see the class docstring's table)."""

        check_every: int = attrs.field(default=100, validator=integer_at_least(1), metadata={
            "help": "commits between two read-backs of the profile's pragmas on the committing connection"})

    def __init__(self, settings: PragmaGuard.Settings | None = None) -> None:
        self.settings = settings if settings is not None else PragmaGuard.Settings()
        self._lock = threading.Lock()
        self._commits = 0
        self._checks = 0
        self._expected: dict[str, Any] | None = None
        self._drift: dict[tuple[int, str], dict[str, Any]] = {}  # (connection id, pragma) -> finding

    def drift(self) -> list[dict[str, Any]]:
        """The current findings: ``{"pragma", "wanted", "actual", "since"}`` (wall clock)."""
        with self._lock:
            return [dict(f) for f in self._drift.values()]

    def check(self, store: Any, connection: Any, operation: Any = None) -> list[dict[str, Any]]:
        """Read the pragmas back on ``connection`` now; returns the drift found on it."""
        if self._expected is None:
            self._expected = expected_pragmas(store, wal_guard_defaults="wal_guard" in store.plugins)
        found = read_back(connection, self._expected)
        if found and _gate_shortened(store, operation):
            found = [f for f in found if f[0] != "busy_timeout"]
        key = id(connection)
        out = []
        with self._lock:
            self._checks += 1
            for k in [k for k in self._drift if k[0] == key]:
                if k[1] not in {f[0] for f in found}:
                    del self._drift[k]
            for name, want, got in found:
                entry = self._drift.get((key, name))
                if entry is None or entry["actual"] != got:
                    entry = {"pragma": name, "wanted": want, "actual": got, "since": time.time()}
                    self._drift[(key, name)] = entry
                    logger.warning("%s: PRAGMA %s drifted: profile %r wants %s, the connection reports %s "
                                   "(changed after open, e.g. by application code)", store.path, name,
                                   store.profile.name, describe(name, want), describe(name, got))
                out.append(dict(entry))
        return out

    @hookimpl
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> None:
        """The hot path: one counter; every ``check_every`` commits a read-back. Never a violation."""
        self._commits += 1
        if self._commits >= self.settings.check_every:
            self._commits = 0
            try:
                self.check(store, connection, operation)
            except Exception:  # a read-back that fails must never turn a durable commit into an error
                logger.debug("%s: pragma read-back failed", store.path, exc_info=True)
        return None

    @hookimpl
    def on_fork_child(self, store: Any) -> None:
        """In a forked child (the core calls it): a new lock; the drift found on the parent's
        connections is the parent's (the child opens connections of its own)."""
        self._lock = threading.Lock()
        self._drift = {}

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """DEGRADED while any connection reports a pragma other than the profile's (no I/O)."""
        drift = self.drift()
        with self._lock:
            checks = self._checks
        details = {"drift": drift, "checks": checks, "check_every": self.settings.check_every}
        if not drift:
            return HealthComponent(name=self.name, status=HealthStatus.UP,
                                   summary=f"profile pragmas read back as set ({checks} checks)", details=details)
        text = "; ".join(f"PRAGMA {d['pragma']}: wanted {describe(d['pragma'], d['wanted'])}, actual "
                         f"{describe(d['pragma'], d['actual'])}" for d in drift)
        return HealthComponent(name=self.name, status=HealthStatus.DEGRADED, summary=f"pragma drift: {text}",
                               details=details)


def _gate_shortened(store: Any, operation: Any) -> bool:
    """True when the write gate shortened this operation's busy timeout (its gate wait timed out)."""
    shortened_for = getattr(store.plugins.get("write_gate"), "shortened_for", None)
    return shortened_for is not None and bool(shortened_for(operation))
