"""health: one report of how a database is doing, for the application, the CLI and monitors.

Incident 000 (screenpipe): a persistent disk I/O error made every write batch fail and be dropped
for 10-15 minutes while the application said "Running": nothing outside the write queue knew.
Incident 002 (openhuman): the fix surfaced the breaker through a health event and a doctor probe.

``store.health()`` (the core) aggregates the core's ``database`` component and every plugin's
``on_health`` into a :class:`~corestore.HealthReport` and fires ``on_health_changed`` exactly once
per change of status. This plugin adds what a deployment needs around that:

* ``probe_interval_s``: how often the core's ``database`` probe (the only I/O of ``health()``) may
  run; between probes a report carries the last result.
* ``snapshot_path``: the report, as JSON, written atomically (temporary file in the same
  directory, ``fsync``, ``rename``, directory ``fsync``) on every transition and once after the
  first report, so another process (``corestore health``, a container probe, a sidecar) can read
  it without opening the database. Writes happen on the plugin's own thread, never on the thread
  that saw the transition (that may be a failing caller's, on a failing disk); when transitions
  come faster than the disk, intermediate states are coalesced and the file always ends at the
  latest one. A reader sees the previous complete file or the next, never a partial one.
* ``watch_interval_s``: optionally, call ``store.health()`` on that thread every interval, so a
  transition (and the snapshot) happens even when the application never asks.
* its own ``health`` component: transitions seen, the last one, and whether the snapshot is
  being written (DEGRADED when the last write failed: a monitor would read a stale file).

On ``store.close()`` the last report is written once more with ``"closed": true``; a reader then
knows the process stopped using the database rather than trusting a stale UP. A forked child
takes the snapshot over (it is written with the child's pid): give each process its own
``snapshot_path`` when several processes share one database.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from corestore import ConfigError, HealthComponent, HealthReport, HealthStatus, hookimpl
from corestore.settings import boolean, non_empty_string, number, optional
from corestore.sidecar import sidecar_mode

# the snapshot format is the core's (the CLI reads it too); re-exported here for plugin users
from corestore.sidecar_formats import SNAPSHOT_SCHEMA, read_snapshot, resolve_snapshot_path, write_snapshot
from corestore.timefmt import iso as _iso

from ._health_server import ServerProbe
from ._server import is_postgres

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Profile, Store

__all__ = ["Health", "SNAPSHOT_SCHEMA", "read_snapshot", "resolve_snapshot_path", "snapshot_path_for"]

logger = logging.getLogger(__name__)

_REFRESH = object()  # a write request without a report: build one (no probe) on the writer thread


_SECONDS = number(0, what="a finite number of seconds >= 0")


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number of seconds, got {value!r}")
    return float(value)


def snapshot_path_for(profile: Profile) -> str | None:
    """Where a store opened with ``profile`` writes its snapshot (None: the profile writes none,
    or does not enable ``health``). Validates the settings like the store would."""
    if "health" not in profile.plugins:
        return None
    from corestore.registry import build_settings

    settings = build_settings(Health, profile.settings_for("health"), where=profile.origin)
    return resolve_snapshot_path(settings.snapshot_path, profile.path, profile.config_dir)


class Health:
    """Probe pacing, an atomic JSON snapshot of the report for other processes, an optional
    watcher thread, and the ``health`` component.

    ==================  ===========  =======  =========================================================
    setting             type         default  meaning
    ==================  ===========  =======  =========================================================
    probe_interval_s    float        5.0      minimum seconds between two ``database`` probes (0: every
                                              ``health()`` call probes)
    snapshot_path       str or None  None     JSON file written atomically on every transition and
                                              after the first report; relative to the database's
                                              directory; None: no snapshot
    snapshot_fsync      bool         true     fsync the snapshot file and its directory on each write
    watch_interval_s    float        0.0      when > 0, call ``store.health()`` on the plugin's thread
                                              every interval, so transitions happen even when the
                                              application never asks; 0: off
    server_timeout_s    float        2.0      PostgreSQL only: ``statement_timeout`` of the server probe
                                              (version, primary/standby, connections), run on the
                                              plugin's thread at most every ``probe_interval_s``
    ==================  ===========  =======  =========================================================
    """

    name: ClassVar[str] = "health"

    @attrs.frozen(kw_only=True)
    class Settings:
        probe_interval_s: float = attrs.field(
            default=5.0, converter=_to_float, validator=_SECONDS,
            metadata={"help": "minimum seconds between two database probes (0: every health() call)"},
        )
        snapshot_path: str | None = attrs.field(
            default=None, validator=optional(non_empty_string("a non-empty file path")),
            metadata={"help": "JSON report written atomically on each transition (relative to the database's directory)"},
        )
        snapshot_fsync: bool = attrs.field(
            default=True, validator=boolean,
            metadata={"help": "fsync the snapshot and its directory on each write"},
        )
        watch_interval_s: float = attrs.field(
            default=0.0, converter=_to_float, validator=_SECONDS,
            metadata={"help": "call store.health() on the plugin's thread every interval (0: off)"},
        )
        server_timeout_s: float = attrs.field(
            default=2.0, converter=_to_float, validator=number(0, low_inclusive=False, what="a number of seconds > 0"),
            metadata={"help": "PostgreSQL: statement_timeout of the server probe (version, role, connections)"},
        )
        snapshot_world_readable: bool = attrs.field(
            default=True, validator=boolean,
            metadata={"help": "snapshot mode 0644 so a monitor running as another user can read it (the one "
                              "sidecar allowed to be more permissive than the database); false: the database's mode"},
        )

    def __init__(self, settings: Health.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds on a monotonic scale; default :func:`time.monotonic`) is what the
        plugin's time-based rules read: the same keyword, and the same ``clock`` attribute, on
        every shipped plugin that reads the time."""
        self.settings = settings if settings is not None else Health.Settings()
        self.clock: Callable[[], float] = clock
        self._cond = threading.Condition(threading.Lock())
        self._store_ref: weakref.ref[Store] | None = None
        self._db_path: str | None = None
        self._snapshot_file: str | None = None
        self._pending: Any = None  # None, _REFRESH or a HealthReport: the latest write request
        self._busy = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._initial_requested = False
        self._last_written: HealthReport | None = None
        self._transitions = 0
        self._last_transition: tuple[HealthStatus, HealthStatus, float] | None = None
        self._writes = 0
        self._last_write_at: float | None = None
        self._last_error: str | None = None
        self._server: ServerProbe | None = None  # PostgreSQL: the server probe (run on the plugin's thread)
        self._server_wanted = False

    # -- public --------------------------------------------------------------------------------
    @property
    def snapshot_file(self) -> str | None:
        """The resolved snapshot path (None when no snapshot is configured or before open)."""
        return self._snapshot_file

    @property
    def transitions(self) -> int:
        """How many times ``on_health_changed`` reached this plugin."""
        return self._transitions

    def stats(self) -> dict[str, Any]:
        """No I/O: ``transitions`` (``on_health_changed`` calls that reached the plugin),
        ``last_transition`` (``{"previous", "current", "at"}`` or None), ``snapshot_path`` (None:
        no snapshot), ``writes``, ``last_write_at`` (ISO, or None) and ``last_error`` (the last
        snapshot write's failure, None once a write succeeded)."""
        last = self._last_transition
        return {
            "transitions": self._transitions,
            "last_transition": None if last is None else {"previous": last[0].value, "current": last[1].value,
                                                          "at": _iso(last[2])},
            "snapshot_path": self._snapshot_file,
            "writes": self._writes,
            "last_write_at": _iso(self._last_write_at) if self._last_write_at else None,
            "last_error": self._last_error,
        }

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every requested snapshot write is done; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def check_profile(self, profile: Profile) -> str | None:
        """The snapshot file ``profile`` would write (None: none), refused with a
        :class:`ConfigError` when its directory does not exist or it is a directory. Called by
        ``corestore.open()`` and ``corestore profiles --check`` alike, before the file is opened."""
        snapshot = resolve_snapshot_path(self.settings.snapshot_path, profile.path, profile.config_dir)
        if snapshot is not None:
            parent = os.path.dirname(snapshot)
            if not os.path.isdir(parent):
                raise ConfigError(
                    f"settings.health.snapshot_path: directory {parent} does not exist "
                    f"(database {profile.path}); corestore does not create directories"
                )
            if os.path.isdir(snapshot):
                raise ConfigError(f"settings.health.snapshot_path {snapshot} is a directory; give a file path")
        return snapshot

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def on_store_open(self, store: Store) -> None:
        """Once per store: the probe interval, the snapshot file, the watcher thread."""
        store.probe_interval_s = self.settings.probe_interval_s
        snapshot = self.check_profile(store.profile)
        self._snapshot_file = snapshot
        self._db_path = store.path
        self._store_ref = weakref.ref(store)
        if is_postgres(store):
            self._server = ServerProbe(timeout_s=self.settings.server_timeout_s)  # first run: the first health()
        if self.settings.watch_interval_s > 0:
            with self._cond:
                self._ensure_thread()

    @hookimpl
    def on_health(self, store: Store) -> HealthComponent:
        if self._snapshot_file is not None and not self._initial_requested:
            self._initial_requested = True
            self._request(_REFRESH)  # the first report has no transition: write it anyway
        elif self._last_error is not None and self._pending is None and not self._busy:
            self._request(_REFRESH)  # the last write failed: try again (at most once per report)
        last = self._last_transition
        st = self.stats()
        details: dict[str, Any] = {
            "transitions": st["transitions"],
            "probe_interval_s": self.settings.probe_interval_s,
            "watch_interval_s": self.settings.watch_interval_s,
        }
        if st["last_transition"] is not None:
            details["last_transition"] = st["last_transition"]
        status = HealthStatus.UP
        if self._snapshot_file is None:
            summary = f"{self._transitions} transition(s); no snapshot"
        else:
            details["snapshot"] = {
                "path": st["snapshot_path"],
                "writes": st["writes"],
                "last_write_at": st["last_write_at"],
                "last_error": st["last_error"],
            }
            if self._last_error is not None:
                status = HealthStatus.DEGRADED
                summary = f"snapshot write failed: {self._last_error}"
            elif self._writes == 0:
                summary = f"{self._transitions} transition(s); first snapshot pending"
            else:
                summary = f"{self._transitions} transition(s); snapshot written {self._writes} time(s)"
        if last is not None and status is HealthStatus.UP:
            summary += f"; last {last[0].name} -> {last[1].name} at {_iso(last[2])}"
        server = self._server
        if server is not None:
            if server.due(time.monotonic(), self.settings.probe_interval_s):
                self._want_server()
            server_status, server_summary, details["server"] = server.section(store)
            if server_summary:
                summary = f"{server_summary}; {summary}"
            if server_status is HealthStatus.DEGRADED and status is HealthStatus.UP:
                status = server_status
        return HealthComponent(name=self.name, status=status, summary=summary, details=details)

    @hookimpl
    def on_health_changed(self, store: Store, previous: HealthStatus, current: HealthStatus) -> None:
        with self._cond:
            self._transitions += 1
            self._last_transition = (HealthStatus(previous), HealthStatus(current), time.time())
        if self._snapshot_file is None:
            return
        report = store.last_health
        # Fired by store.health(): last_health is the report whose status is `current`. Fired by
        # a plugin on its own (a breaker trip): build a fresh report on the writer thread (no
        # probe), never here: this may be a failing caller's thread holding the plugin's lock.
        self._request(report if report is not None and report.status is current else _REFRESH)

    @hookimpl
    def on_close(self, store: Store) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():
                logger.warning("%s: health snapshot writer did not stop within 5 s; the final snapshot is not written",
                               store.path)
                return
        final = store.last_health
        if self._snapshot_file is not None and final is not None:
            self._write(final, closed=True)

    # -- the writer thread -----------------------------------------------------------------------
    def _want_server(self) -> None:
        """Ask the plugin's thread for a server probe (PostgreSQL); never waits for it."""
        with self._cond:
            if self._stopping or self._server_wanted:
                return
            self._server_wanted = True
            self._ensure_thread()
            self._cond.notify_all()

    def _request(self, job: Any) -> None:
        with self._cond:
            if self._stopping:
                return
            self._pending = job
            self._ensure_thread()
            self._cond.notify_all()

    def _ensure_thread(self) -> None:
        """Start the writer/watcher thread if it is not running (also after a fork). Holds _cond."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name=f"corestore-health:{os.path.basename(self._db_path or '')}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        watch = self.settings.watch_interval_s
        next_watch = self.clock() + watch if watch > 0 else math.inf
        while True:
            with self._cond:
                while self._pending is None and not self._server_wanted and not self._stopping:
                    timeout = next_watch - self.clock()
                    if timeout <= 0:
                        break
                    self._cond.wait(None if math.isinf(timeout) else timeout)
                if self._stopping:  # on_close writes the final snapshot itself
                    self._pending = None
                    self._cond.notify_all()
                    return
                job, self._pending = self._pending, None
                probe_server, self._server_wanted = self._server_wanted, False
                self._busy = True
            try:
                store = self._store_ref() if self._store_ref is not None else None
                if store is None or store.closed:
                    return  # nothing left to report on (close() writes the final snapshot)
                if probe_server and self._server is not None:
                    self._server.run(store)
                    if job is None:
                        continue
                if job is None:  # the watcher's turn
                    next_watch = self.clock() + watch
                    store.health()  # a transition requests its own write
                    continue
                report = store.health(probe=False) if job is _REFRESH else job
                if report is not self._last_written:
                    self._write(report)
            except Exception:  # never let the thread die: the component reports write errors
                logger.exception("%s: health writer thread", self._db_path)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, report: HealthReport, *, closed: bool = False) -> None:
        """Write ``report`` to the snapshot file atomically; record the outcome for the component."""
        path = self._snapshot_file
        assert path is not None
        try:
            mode = 0o644 if self.settings.snapshot_world_readable else sidecar_mode(self._db_path or "")
            write_snapshot(path, report.to_dict(), closed=closed, transitions=self._transitions,
                           fsync=self.settings.snapshot_fsync, mode=mode)
        except OSError as err:
            message = f"{type(err).__name__}: {err.strerror or err} ({path})"
            if message != self._last_error:
                logger.warning("%s: health snapshot not written: %s", self._db_path, message)
            self._last_error = message
            return
        if self._last_error is not None:
            logger.info("%s: health snapshot written again after: %s", self._db_path, self._last_error)
        self._last_error = None
        self._last_written = report
        self._writes += 1
        self._last_write_at = time.time()

    @hookimpl
    def on_fork_child(self, store: Store) -> None:
        """In a forked child (the core calls it): the writer thread and its lock belong to the parent."""
        self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._busy = False
        self._pending = None
        self._server_wanted = False


