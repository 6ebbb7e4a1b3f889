"""The Store: one database file under one profile, its connections, transactions and policies.

``corestore.open`` (:mod:`corestore.opening`) returns the same :class:`Store` for the same real
path and the same resolved profile value in one process (reference-counted; ``close()`` releases
one reference) and initialises it exactly once, however many threads race. The store owns the
connections (see :mod:`corestore.database`), runs transactions, and asks its plugins, through the
:class:`~corestore.registry.HookCaller`, what to do at each moment that matters.

This module is the store's public face. The machinery behind it lives beside it, split along its
seams: :mod:`corestore.transaction` (transactions, their outcomes, ``run()`` and its retry rules),
:mod:`corestore.peeweetxn` (peewee's transaction API on a store), :mod:`corestore.statements`
(work outside a transaction), :mod:`corestore.raising` (from a database error to the caller's
exception and the fault it counts), :mod:`corestore.opening` (``open()``, the cache, driver
claims, fork reset), :mod:`corestore.link` (what the database may ask of its store) and
:mod:`corestore.backends` (everything specific to SQLite).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import aio
from .backends import Backend, backend_for
from .errors import CircuitOpenError, Classification, ConfigError, PluginError, StoreError
from .health import HealthComponent, HealthReport, HealthStatus
from .link import LINK
from .opening import open, open_stores, release
from .operation import Operation
from .profiles import Profile
from .raising import note_fault
from .registry import build_hook_caller, env_plugins
from .statements import with_connection
from .transaction import BEGIN, _Txn, lock_name, noop, run

__all__ = ["Store", "open", "open_stores"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Store:
    """One database under one profile. Thread-safe; get it from :func:`corestore.open`.

    Attributes: ``database`` (the peewee database: bind models to it), ``profile`` (the resolved,
    frozen :class:`~corestore.Profile`), ``path`` (absolute path, or ``":memory:"``),
    ``plugins`` (instances by name), ``hooks`` (the :class:`~corestore.registry.HookCaller`).
    """

    def __init__(self, profile: Profile, *, setup: Callable[[Store], Any] | None = None, key: Any = None) -> None:
        self.profile = profile
        self.path = profile.path
        self._key = key
        self._setup = setup
        self._refs = 1
        self._closed = False
        self._draining = False  # True while on_close hooks run: they may still write (accounting drains)
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = {
            "transactions": 0, "reads": 0, "statements": 0, "rollbacks": 0, "retries": 0,
            "busy_waits": 0, "faults": 0, "reopens": 0, "uncertain_commits": 0, "violations": 0,
            "connections_opened": 0, "health_probes": 0,
        }
        self._faults_by_kind: dict[str, int] = {}
        self._last_fault: tuple[float, Classification] | None = None
        # health(): reports are computed and transitions fired under one re-entrant lock (a
        # report computed outside it could be swapped in after a newer one: a false transition);
        # the probe runs outside it, under its own lock, so no caller waits for another's probe.
        self._health_lock = threading.RLock()
        self._probe_lock = threading.Lock()
        self._last_status: HealthStatus | None = None
        self._last_report: HealthReport | None = None
        self._probe: tuple[float, float, HealthStatus, str] | None = None  # (monotonic, wall, status, summary)
        self._fault_scope = threading.local()  # depth > 0 while this thread reports a fault (on_fatal)
        self.probe_interval_s = 5.0
        self.memory = profile.path == ":memory:"
        self.backend: Backend = backend_for(profile)
        self.init_lock_obj = self.backend.init_lock(profile.url or self.path)
        self._begin_write = self.backend.begin_write
        self._begin_read = self.backend.begin_read
        self._query_only_sql = self.backend.query_only_sql
        self.hooks, self.plugins = build_hook_caller(profile, extra=env_plugins())
        self.database, self._anchor = self.backend.make_database(self, LINK)
        self._in_txn: Callable[[Any], bool] = self.backend.in_transaction_test(profile.driver)
        self._run_callbacks: Callable[[], None] = getattr(self.database, "_run_commit_callbacks", noop)  # peewee >= 4
        self._clear_callbacks: Callable[[], None] = getattr(self.database, "_clear_commit_callbacks", noop)
        self._aio: Any = None  # the asyncio executor (corestore.aio), created by the first aopen()/arun()

    # -- public API ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def closed(self) -> bool:
        return self._closed

    def transaction(self, *, name: str | None = None, lock_type: str = "IMMEDIATE") -> _Txn:
        """A write transaction (``BEGIN IMMEDIATE``; on PostgreSQL ``BEGIN`` at the session's
        isolation level): policies before, invariants after COMMIT.

        Never retried (use :meth:`run`). Nested in another store or peewee transaction it joins it
        as a savepoint; inside :meth:`read` it is an error.
        """
        lock: str | None = lock_type if lock_type in BEGIN else lock_name(self, lock_type)
        return _Txn(self, "write", lock, name)

    def read(self, *, name: str | None = None) -> _Txn:
        """A read transaction (``BEGIN DEFERRED`` under ``query_only``; on PostgreSQL
        ``REPEATABLE READ READ ONLY``): one consistent snapshot, writes refused. Never retried."""
        return _Txn(self, "read", "DEFERRED", name)

    def run(self, fn: Callable[[], T], *, read: bool = False, deadline_s: float | None = None,
            idempotent: bool = False, name: str | None = None) -> T:
        """Run ``fn()`` inside :meth:`transaction` (``read=True``: :meth:`read`), retried as a
        whole by policy: BUSY and TRANSIENT_IO within the profile's retry budget and
        ``deadline_s`` (whichever is shorter), FATAL_IO only when the profile's
        ``retry.fatal_attempts`` allows (after a reopen). Once COMMIT was issued nothing is
        retried unless ``idempotent=True``. ``on_fatal`` hears about the final failure only: a
        run is one outcome, however many attempts it took.
        """
        return run(self, fn, read=read, deadline_s=deadline_s, idempotent=idempotent, name=name)

    async def arun(self, fn: Callable[[], T], *, read: bool = False, deadline_s: float | None = None,
                   idempotent: bool = False, name: str | None = None) -> T:
        """:meth:`run` from asyncio: the whole unit on the store's bounded executor, the loop never
        blocked. Cancelled before it started it never runs; cancelled while running it stops
        before its next statement or finishes, never interrupted once COMMIT is reached
        (``site/concepts/asyncio.md``). ``deadline_s`` bounds the wait for a slot and the run."""
        return await aio.arun(self, fn, read=read, deadline_s=deadline_s, idempotent=idempotent, name=name)

    async def aclose(self, timeout: float = 30.0) -> None:
        """:meth:`close` off the event loop; the last reference also stops the executor."""
        await aio.aclose(self, timeout)

    async def ahealth(self, *, probe: bool = True, deadline_s: float | None = None) -> HealthReport:
        """:meth:`health` on the store's executor (the probe reads the database)."""
        return await aio.ahealth(self, probe=probe, deadline_s=deadline_s)

    def plugin(self, which: str | type) -> Any:
        """The plugin instance enabled for this store, by name or class.

        Raises :class:`PluginError` naming the enabled plugins when it is not enabled.
        """
        if isinstance(which, str):
            found = self.plugins.get(which)
        else:
            found = next((p for p in self.plugins.values() if isinstance(p, which)), None)
        if found is None:
            label = which if isinstance(which, str) else getattr(which, "name", which.__name__)
            raise PluginError(
                f"{self.path}: plugin {label!r} is not enabled in profile {self.profile.name!r}; "
                f"enabled: {', '.join(self.plugins) or '(none)'}"
            )
        return found

    @contextlib.contextmanager
    def init_lock(self, timeout_s: float | None = None) -> Iterator[None]:
        """The cross-process init lock of this database (re-entrant in one thread); waits at
        most ``timeout_s`` (default: the profile's ``init_timeout_s``), then ``BusyError``."""
        with self.init_lock_obj.hold(self.profile.init_timeout_s if timeout_s is None else timeout_s):
            yield

    def invalidate(self) -> int:
        """Reopen: bump the connection generation. Idle connections close now; busy ones are
        dropped when their transaction ends. Returns how many were still busy."""
        with self._stats_lock:
            self._stats["reopens"] += 1
        busy: int = self.database.invalidate()
        return busy

    def checkpoint(self, mode: str = "PASSIVE", *, busy_timeout_ms: int | None = None,
                   name: str | None = None) -> tuple[int, int, int]:
        """Run ``PRAGMA wal_checkpoint(mode)``; returns SQLite's (busy, log, checkpointed).

        ``busy_timeout_ms`` bounds, for this checkpoint only, how long FULL/RESTART/TRUNCATE wait
        for the writer lock and for readers (the connection's own busy timeout is restored after).
        """
        self._refuse("checkpoint")
        mode = mode.upper()
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ConfigError(f"{self.path}: checkpoint mode {mode!r} is not allowed; allowed: PASSIVE, FULL, RESTART, TRUNCATE")

        def run(conn: Any) -> Any:
            if busy_timeout_ms is None:
                return conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            before = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
            conn.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout_ms))}")
            try:
                return conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {before}")

        row = with_connection(self, "checkpoint", run, name=name)
        return (int(row[0]), int(row[1]), int(row[2]))

    def backup(self, dest: str | os.PathLike[str], *, verify: str = "quick_check",
               progress: Callable[[int, int], None] | None = None, step_pages: int = 256) -> str:
        """Copy the database online to ``dest`` through SQLite's backup API, verified: a temporary
        file beside ``dest``, fsynced, checked with ``verify`` (``"quick_check"`` or
        ``"integrity_check"``), then renamed into place (see :mod:`corestore.backup`). Refuses a
        ``dest`` with a ``-wal``/``-journal`` beside it or that is open. ``progress(copied, total)``
        is called after each step of ``step_pages`` pages. Returns the path written."""
        from .backup import run_backup

        self._refuse("backup")
        return str(run_backup(self, dest, verify=verify, progress=progress, step_pages=step_pages)["path"])

    def stats(self) -> dict[str, Any]:
        """Core counters: transactions, reads, retries, busy waits, faults (and by kind),
        reopens, uncertain commits, violations, health probes, open connections, generation."""
        with self._stats_lock:
            out: dict[str, Any] = dict(self._stats)
            out["faults_by_kind"] = dict(self._faults_by_kind)
        out["connections"] = self.database.connection_count()
        out["generation"] = self.database.generation
        out["asyncio"] = aio.aio_stats(self)
        return out

    def health(self, *, probe: bool = True) -> HealthReport:
        """Aggregate the core's ``database`` component and every plugin's ``on_health`` into a
        :class:`HealthReport`; fire ``on_health_changed`` once per change of status.

        The only I/O is the ``database`` probe, run on the calling thread at most once per
        ``probe_interval_s``; never with ``probe=False``, never while another thread is probing,
        and never on a thread that is reporting a fault (inside ``on_fatal``): those reports
        carry the last probe's result. Reports are computed, compared and the transition fired
        under one lock, so each change fires ``on_health_changed`` exactly once and in order,
        however many threads call ``health()``.
        """
        if probe and not getattr(self._fault_scope, "depth", 0):
            self._maybe_probe()
        with self._health_lock:
            components = ([self._database_component()] + self.backend.health_components(self)
                          + self.hooks.on_health(self))
            report = HealthReport.from_components(components, database=self.path, profile=self.profile.name)
            previous, self._last_status = self._last_status, report.status
            self._last_report = report
            if previous is not None and previous is not report.status:
                logger.warning("%s: health %s -> %s", self.path, previous.name, report.status.name)
                self.hooks.on_health_changed(self, previous, report.status)
        return report

    @property
    def last_health(self) -> HealthReport | None:
        """The report of the latest :meth:`health` call (None before the first); no I/O. Inside
        ``on_health_changed`` fired by ``health()`` it is the report whose status is ``current``."""
        return self._last_report

    def close(self) -> None:
        """Release one reference; the last one runs ``on_close`` hooks (plugins drain), closes
        every connection and refuses to reconnect. Idempotent."""
        if not release(self):
            return
        try:
            self._draining = True
            self.hooks.on_close(self)
        finally:
            self._draining = False
            busy = self.database.close_all(shut=True)
            if busy:
                logger.info("%s: %d connection(s) busy at close; each closes when its transaction ends", self.path, busy)
            if self._anchor is not None:
                self._anchor.close()
                self._anchor = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.path!r} profile={self.profile.name!r}{' closed' if self._closed else ''}>"

    def _refuse(self, api: str) -> None:
        """A :class:`ConfigError` for a store API this engine has no meaning for (the backend's ``refusals``)."""
        why = self.backend.refusals.get(api)
        if why is not None:
            raise ConfigError(f"{self.path}: {api}() is not available on a {self.backend.name} store: {why}")

    def bind(self, models: Any) -> None:
        """Bind peewee models to this store's database."""
        self.database.bind(models)

    def _open_operation(self) -> None:
        """Open the store's first connection as an operation of kind ``"open"``:
        ``before_operation`` first (a half-open circuit breaker admits it or refuses it; an open
        one already refused in :func:`open` through its gate), then a failure to open is a
        fault like any other (``on_fatal``: the breaker counts it). A successful open is not an
        ``on_success``: it proves only that the header is readable, not that the file is
        healthy (a half-open breaker waits for a real read or write to close)."""
        hooks = self.hooks
        op = Operation(kind="open")
        error: BaseException | None = None
        try:
            hooks.before_operation(self, op)
            try:
                self.database.connect()
            except StoreError as err:
                c = err.classification
                # NOTADB at the first open is the caller's path, not a fault of the storage
                if c is not None and c.code != 26 and not isinstance(err, CircuitOpenError):
                    note_fault(self, c, op, err, report=True)
                raise
        except BaseException as err:
            error = err
            raise
        finally:
            hooks.after_operation(self, op, error)
            error = None  # no reference cycle through the traceback

    # -- health ---------------------------------------------------------------------------------
    def _maybe_probe(self) -> None:
        """Run the ``database`` probe if the last one is older than ``probe_interval_s`` and no
        other thread is running one (that caller does not wait: it reports the last result)."""
        last = self._probe
        if last is not None and time.monotonic() - last[0] < self.probe_interval_s:
            return
        if self.database.in_transaction() or self.database._active() is not None:
            return  # this thread's connection is busy in its own transaction: keep the last result
        if not self._probe_lock.acquire(blocking=False):
            return
        try:
            last = self._probe
            if last is not None and time.monotonic() - last[0] < self.probe_interval_s:
                return
            with self._stats_lock:
                self._stats["health_probes"] += 1
            try:
                sql = self.backend.probe_sql
                with_connection(self, "read", lambda conn: conn.execute(sql).fetchone(), name="health-probe")
                status, summary = HealthStatus.UP, "probe ok"
            except CircuitOpenError:
                # refused before touching the file: no verdict on the database itself (the
                # breaker's own component says DOWN); probe again at the next health()
                self._probe = (float("-inf"), time.time(), HealthStatus.UNKNOWN, "not probed: circuit breaker open")
                return
            except StoreError as err:
                c = err.classification
                status = HealthStatus.DOWN if c is not None and c.is_fault else HealthStatus.DEGRADED
                summary = f"probe failed: {c.name if c and c.name else (c.kind.name if c else type(err).__name__)}"
            self._probe = (time.monotonic(), time.time(), status, summary)
        finally:
            self._probe_lock.release()

    def _database_component(self) -> HealthComponent:
        """The core's component from state already held: the last probe's verdict, connection
        count and last fault (no I/O)."""
        details: dict[str, Any] = {"path": self.path, "driver": self.profile.driver,
                                   "connections": self.database.connection_count(),
                                   "probe_interval_s": self.probe_interval_s}
        last = self._last_fault
        if last is not None:
            details["last_fault"] = {"at": last[0], "kind": last[1].kind.name, "name": last[1].name}
        probe = self._probe
        if probe is None:
            status, summary = HealthStatus.UNKNOWN, "not probed yet"
        else:
            _mono, details["probed_at"], status, summary = probe
        return HealthComponent(name="database", status=status, summary=summary, details=details)
