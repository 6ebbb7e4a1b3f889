"""The Store: one database file under one profile, its connections, transactions and policies.

``corestore.open`` returns the same :class:`Store` for the same real path and the same resolved
profile value in one process (reference-counted; ``close()`` releases one reference) and
initialises it exactly once, however many threads race. The store owns the connections (see
:mod:`corestore.database`), runs transactions, and asks its plugins, through the
:class:`~corestore.registry.HookCaller`, what to do at each moment that matters.

Truthful outcomes: on IOERR and FULL SQLite has already rolled back, so the store issues ROLLBACK
only when the connection is still in a transaction (a failing ROLLBACK never masks the real
error). An error from the COMMIT statement leaves the outcome unknown (``committed=None``)
unless the connection is visibly still inside its transaction (then nothing was committed: it is
rolled back and ``committed=False``). After a successful COMMIT nothing surfaces as a retryable
error, and ``run()`` never retries a unit whose COMMIT was issued unless it is ``idempotent``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import sys
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import attrs
import peewee

from .classify import driver_error
from .database import make_database
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
)
from .health import HealthComponent, HealthReport, HealthStatus
from .initlock import InitLock
from .operation import Operation, Violation
from .check import check_path
from .readonly import readonly_wal_problem
from .profiles import Config, Profile, load_config, resolve_profile, with_overrides
from .registry import build_hook_caller, env_plugins

__all__ = ["Store", "open", "open_stores"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_EXCEPTION_FOR_KIND: dict[ErrorKind, type[StoreError]] = {
    ErrorKind.BUSY: BusyError,
    ErrorKind.TRANSIENT_IO: TransientError,
    ErrorKind.FATAL_IO: FatalError,
    ErrorKind.FULL: FatalError,
    ErrorKind.READONLY: FatalError,
    ErrorKind.ENVIRONMENT: FatalError,
    ErrorKind.CORRUPT: CorruptionError,
    ErrorKind.CONSTRAINT: ConstraintError,
    ErrorKind.PROGRAMMING: QueryError,
    ErrorKind.INVARIANT: InvariantViolation,
    ErrorKind.UNKNOWN: StoreError,
}

_ADVICE: dict[ErrorKind, str] = {
    ErrorKind.BUSY: "another connection held the lock past the busy timeout; retry later or use store.run()",
    ErrorKind.TRANSIENT_IO: "a transient storage fault; store.run() retries it within the profile's budget",
    ErrorKind.FATAL_IO: "the disk reported an I/O error; check the device and the kernel log (`corestore doctor PATH`)",
    ErrorKind.CORRUPT: "the file is damaged; stop writing, keep the -wal and -shm files, run `corestore doctor PATH`",
    ErrorKind.FULL: "the disk is full; free space, then retry",
    ErrorKind.READONLY: "the file or its directory is not writable by this process",
    ErrorKind.ENVIRONMENT: "the environment refuses this database (permissions, missing directory, file system)",
    ErrorKind.CONSTRAINT: "the data broke a constraint",
    ErrorKind.PROGRAMMING: "the statement is wrong (syntax, missing table, misuse)",
    ErrorKind.INVARIANT: "a post-commit invariant failed; the data IS committed, do not retry",
    ErrorKind.UNKNOWN: "an unexpected database error",
}

_DB_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, peewee.DatabaseError, peewee.InterfaceError)

# -- the process-wide store cache ---------------------------------------------------------
_cache: dict[tuple[str, Profile], "Store"] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, Profile], threading.Lock] = {}
_drivers: dict[str, tuple[str, int]] = {}  # real path -> (driver, open stores)
_all_stores: "set[Store]" = set()


def _is_db_error(err: BaseException) -> bool:
    if isinstance(err, _DB_ERRORS):
        return True
    apsw = sys.modules.get("apsw")
    if apsw is not None and isinstance(err, apsw.Error):
        return True
    return driver_error(err) is not None


class _Txn:
    """A store transaction (write: ``BEGIN IMMEDIATE`` unless told; read: ``BEGIN DEFERRED``).

    Pushed onto peewee's transaction stack, so an inner ``db.atomic()`` becomes a savepoint.
    """

    __slots__ = ("store", "kind", "lock_type", "name", "op", "record", "nested", "report", "_savepoint", "result")

    def __init__(self, store: "Store", kind: str, *, lock_type: str | None, name: str | None,
                 op: Operation | None = None, report: bool = True) -> None:
        self.store = store
        self.kind = kind
        self.lock_type = lock_type
        self.name = name
        self.op = op
        self.record: Any = None
        self.nested = False
        self.report = report
        self._savepoint: Any = None
        self.result: Any = None

    # peewee's transaction API, for code that calls txn.commit()/rollback() inside the block
    def commit(self, begin: bool = True) -> None:
        self.store._commit_inside(self, begin)

    def rollback(self, begin: bool = True) -> None:
        self.store._rollback_inside(self, begin)

    def __enter__(self) -> "_Txn":
        try:
            return self.store._begin(self)
        except BaseException as err:
            if self.report and self.op is not None and not self.nested:
                self.store.hooks.after_operation(self.store, self.op, err)
            raise

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        error = exc
        try:
            return self.store._end(self, exc)
        except BaseException as err:
            error = err
            raise
        finally:  # run() reports its own attempts (report=False)
            if self.report and self.op is not None and not self.nested:
                self.store.hooks.after_operation(self.store, self.op, error)
            error = None  # the traceback holds this frame: no cycle through it

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:  # decorator use, like peewee
        import functools

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T:
            with _Txn(self.store, self.kind, lock_type=self.lock_type, name=self.name):
                return fn(*args, **kwargs)

        return inner


class Store:
    """One database under one profile. Thread-safe; get it from :func:`corestore.open`.

    Attributes: ``database`` (the peewee database: bind models to it), ``profile`` (the resolved,
    frozen :class:`~corestore.Profile`), ``path`` (absolute path, or ``":memory:"``),
    ``plugins`` (instances by name), ``hooks`` (the :class:`~corestore.registry.HookCaller`).
    """

    def __init__(self, profile: Profile, *, setup: Callable[["Store"], Any] | None = None, key: Any = None) -> None:
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
        self._anchor: Any = None
        self.init_lock_obj = InitLock.for_path(self.path)
        self.hooks, self.plugins = build_hook_caller(profile, extra=env_plugins())
        self.database = self._make_database()
        self._in_txn: Callable[[Any], bool] = (
            (lambda conn: not conn.getautocommit()) if profile.driver == "apsw" else (lambda conn: conn.in_transaction)
        )
        self._run_callbacks: Callable[[], None] = getattr(self.database, "_run_commit_callbacks", _noop)  # peewee >= 4
        self._clear_callbacks: Callable[[], None] = getattr(self.database, "_clear_commit_callbacks", _noop)

    # -- construction ----------------------------------------------------------------------
    def _make_database(self) -> Any:
        profile = self.profile
        params: dict[str, Any] = {}
        target = self.path
        if profile.driver == "sqlite3":
            params["check_same_thread"] = False
            if self.memory:
                target = f"file:corestore-mem-{uuid.uuid4().hex}?mode=memory&cache=shared"
                params["uri"] = True
                self._anchor = sqlite3.connect(target, uri=True, check_same_thread=False)
            elif profile.read_only:
                target = f"file:{urllib.parse.quote(self.path)}?mode=ro"
                params["uri"] = True
        else:
            import apsw

            flags = apsw.SQLITE_OPEN_URI
            if self.memory:
                target = f"file:corestore-mem-{uuid.uuid4().hex}?mode=memory&cache=shared"
                flags |= apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
                self._anchor = apsw.Connection(target, flags=flags, vfs=profile.vfs) if profile.vfs else apsw.Connection(target, flags=flags)
            elif profile.read_only:
                target = f"file:{urllib.parse.quote(self.path)}?mode=ro"
                flags |= apsw.SQLITE_OPEN_READONLY
            else:
                target = f"file:{urllib.parse.quote(self.path)}"
                flags |= apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
            params["flags"] = flags
            if profile.vfs:
                params["vfs"] = profile.vfs
        return make_database(self, profile.driver, target, **params)

    def _init_connection(self, conn: Any) -> None:
        """Prepare a new driver connection: pragmas (``busy_timeout`` first), the journal mode
        under the init lock with its returned value checked, then ``on_open`` hooks."""
        pragmas = dict(self.profile.pragmas)
        busy = pragmas.pop("busy_timeout", None)
        if busy is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(busy)}")
        if not self.memory:  # read the header now: a file that is not a database fails at open
            conn.execute("PRAGMA schema_version").fetchone()
        wanted = pragmas.pop("journal_mode", None)
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name} = {value}")
        if wanted is not None and not self.profile.read_only and "wal_guard" not in self.plugins:
            self._apply_journal_mode(conn, wanted)
        with self._stats_lock:
            self._stats["connections_opened"] += 1
        self.hooks.on_open(self, conn)

    def _apply_journal_mode(self, conn: Any, wanted: str) -> None:
        current = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if current == wanted:
            return
        with self.init_lock():
            got = str(conn.execute(f"PRAGMA journal_mode = {wanted}").fetchone()[0]).lower()
        if got != wanted:
            raise FatalError(
                f"{self.path}: SQLite refused journal_mode={wanted} and kept {got!r}; corestore never "
                f"runs in a journal mode other than the one the profile asks for (profile {self.profile.name!r}). "
                "Fix the file system or ask for the mode SQLite can use.",
                classification=Classification(kind=ErrorKind.ENVIRONMENT, name="JOURNAL_MODE_REFUSED",
                                              message=f"journal_mode={wanted} returned {got}", trips_breaker=True),
                path=self.path,
            )

    # -- public API ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def closed(self) -> bool:
        return self._closed

    def transaction(self, *, name: str | None = None, lock_type: str = "IMMEDIATE") -> _Txn:
        """A write transaction (``BEGIN IMMEDIATE``): policies before, invariants after COMMIT.

        Never retried (use :meth:`run`). Nested in another store or peewee transaction it joins it
        as a savepoint; inside :meth:`read` it is an error.
        """
        return self._transaction_cm("write", lock_type=lock_type, name=name)

    def read(self, *, name: str | None = None) -> _Txn:
        """A read transaction (``BEGIN DEFERRED``): one consistent snapshot. Never retried."""
        return self._transaction_cm("read", lock_type="DEFERRED", name=name)

    def run(self, fn: Callable[[], T], *, read: bool = False, deadline_s: float | None = None,
            idempotent: bool = False, name: str | None = None) -> T:
        """Run ``fn()`` inside :meth:`transaction` (``read=True``: :meth:`read`), retried as a
        whole by policy: BUSY and TRANSIENT_IO within the profile's retry budget and
        ``deadline_s`` (whichever is shorter), FATAL_IO only when the profile's
        ``retry.fatal_attempts`` allows (after a reopen). Once COMMIT was issued nothing is
        retried unless ``idempotent=True``. ``on_fatal`` hears about the final failure only: a
        run is one outcome, however many attempts it took.
        """
        policy = self.profile.retry
        started = time.monotonic()
        budget = policy.budget_s if deadline_s is None else min(policy.budget_s, deadline_s)
        deadline = started + budget
        attempts: dict[ErrorKind, int] = {}
        attempt = 0
        kind = "read" if read else "write"
        while True:
            attempt += 1
            op = Operation(kind=kind, name=name, attempt=attempt,  # started: now, this attempt's start
                           deadline=None if deadline_s is None else started + deadline_s)
            txn = _Txn(self, kind, lock_type="DEFERRED" if read else "IMMEDIATE", name=name, op=op, report=False)
            result: Any = None
            error: BaseException | None = None
            delay: float | None = None
            try:
                with txn:
                    result = fn()
                    txn.result = result
                return result
            except InvariantViolation as err:
                error = err
                err.result = txn.result
                raise
            except StoreError as err:
                error = err
                c = err.classification
                if c is None or not self._may_retry(err, c, attempts, policy, deadline, idempotent):
                    if c is not None and c.is_fault:
                        self._fire_on_fatal(err, c, op)
                    raise
                with self._stats_lock:
                    self._stats["retries"] += 1
                    if c.kind is ErrorKind.BUSY:
                        self._stats["busy_waits"] += 1
                n = attempts[c.kind]
                delay = min(policy.max_delay_s, policy.base_delay_s * (2 ** (n - 1)))
                delay = random.uniform(delay / 2, delay)
            except BaseException as err:
                error = err
                raise
            finally:
                self.hooks.after_operation(self, op, error, delay is not None)
                error = None  # no reference cycle through the traceback
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    def _may_retry(self, err: StoreError, c: Classification, attempts: dict[ErrorKind, int], policy: Any,
                   deadline: float, idempotent: bool) -> bool:
        if err.committed is True or (err.committed is None and not idempotent):
            return False  # COMMIT was issued: never retried unless the caller said it is safe
        limit = {ErrorKind.BUSY: policy.busy_attempts, ErrorKind.TRANSIENT_IO: policy.transient_attempts,
                 ErrorKind.FATAL_IO: policy.fatal_attempts}.get(c.kind, 0)
        if c.kind is not ErrorKind.FATAL_IO and not c.retryable:
            return False
        attempts[c.kind] = attempts.get(c.kind, 0) + 1
        return attempts[c.kind] < limit and time.monotonic() < deadline

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
        return self.database.invalidate()

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Run ``PRAGMA wal_checkpoint(mode)``; returns SQLite's (busy, log, checkpointed)."""
        mode = mode.upper()
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ConfigError(f"{self.path}: checkpoint mode {mode!r} is not allowed; allowed: PASSIVE, FULL, RESTART, TRUNCATE")
        row = self._with_connection("checkpoint", lambda conn: conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())
        return (int(row[0]), int(row[1]), int(row[2]))

    def backup(self, dest: str | os.PathLike[str]) -> str:
        """Copy the database online to ``dest`` through SQLite's backup API; returns the path."""
        dest = os.fspath(dest)

        def copy(conn: Any) -> None:
            if self.profile.driver == "apsw":
                import apsw

                target = apsw.Connection(dest)
                try:
                    with target.backup("main", conn, "main") as b:
                        while not b.done:
                            b.step(1024)
                finally:
                    target.close()
            else:
                target = sqlite3.connect(dest)
                try:
                    conn.backup(target)
                finally:
                    target.close()

        self._with_connection("checkpoint", copy, name="backup")
        return dest

    def stats(self) -> dict[str, Any]:
        """Core counters: transactions, reads, retries, busy waits, faults (and by kind),
        reopens, uncertain commits, violations, health probes, open connections, generation."""
        with self._stats_lock:
            out: dict[str, Any] = dict(self._stats)
            out["faults_by_kind"] = dict(self._faults_by_kind)
        out["connections"] = self.database.connection_count()
        out["generation"] = self.database.generation
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
            components = [self._database_component()] + self.hooks.on_health(self)
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
        with _cache_lock:
            if self._closed:
                return
            self._refs -= 1
            if self._refs > 0:
                return
            self._closed = True
            if self._key is not None and _cache.get(self._key) is self:
                del _cache[self._key]
            _release_driver(self)
            _all_stores.discard(self)
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

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.path!r} profile={self.profile.name!r}{' closed' if self._closed else ''}>"

    def bind(self, models: Any) -> None:
        """Bind peewee models to this store's database."""
        self.database.bind(models)

    # -- transactions (internal) ---------------------------------------------------------------
    def _transaction_cm(self, kind: str, *, lock_type: str | None, name: str | None) -> _Txn:
        if lock_type not in _BEGIN:
            upper = str(lock_type).upper()
            if upper not in _BEGIN:
                raise QueryError(
                    f"{self.path}: lock type {lock_type!r} is not allowed; allowed: DEFERRED, IMMEDIATE, EXCLUSIVE",
                    classification=Classification(kind=ErrorKind.PROGRAMMING, name="BAD_LOCK_TYPE"), path=self.path,
                )
            lock_type = upper
        return _Txn(self, kind, lock_type=lock_type, name=name)

    def _begin(self, txn: _Txn) -> _Txn:
        db = self.database
        if db._state.transactions:
            top = db.top_transaction()
            if txn.kind == "write" and isinstance(top, _Txn) and top.kind == "read":
                raise QueryError(
                    f"{self.path}: transaction() inside read(): a read transaction cannot write; "
                    "open the write transaction outside the read",
                    classification=Classification(kind=ErrorKind.PROGRAMMING, name="WRITE_IN_READ"),
                    path=self.path,
                )
            txn.nested = True
            txn._savepoint = db.savepoint()
            txn._savepoint.__enter__()
            return txn
        if self._closed and not self._draining:
            raise StoreClosedError(f"{self.path}: the store was closed", path=self.path)
        if txn.kind == "write" and self.profile.read_only:
            raise ReadOnlyError(
                f"{self.path}: profile {self.profile.name!r} is read-only; writes are refused before reaching SQLite",
                classification=Classification(kind=ErrorKind.READONLY, name="READ_ONLY_PROFILE"),
                path=self.path,
            )
        hooks = self.hooks
        if txn.op is None and (hooks.has_operation_hooks or hooks.has_on_fatal):
            txn.op = Operation(kind=txn.kind, name=txn.name)
        if hooks.has_before_operation:
            hooks.before_operation(self, txn.op)
        record = self._acquire_for(txn.op, txn.report)
        txn.record = record
        try:
            record.conn.execute(_BEGIN[txn.lock_type])
        except Exception as err:
            db.release(record)
            raise self._failed(err, txn.op, committed=False, report=txn.report) from err
        db.push_transaction(txn)
        return txn

    def _end(self, txn: _Txn, exc: BaseException | None) -> bool:
        if txn.nested:
            return bool(txn._savepoint.__exit__(type(exc) if exc else None, exc, None))
        db = self.database
        record = txn.record
        conn = record.conn
        db.pop_transaction()
        in_txn = self._in_txn
        try:
            if exc is not None:
                if in_txn(conn):
                    try:
                        conn.execute("ROLLBACK")
                    except Exception:  # the real error is `exc`; never mask it
                        logger.debug("%s: ROLLBACK after an error failed", self.path, exc_info=True)
                self._clear_callbacks()
                with self._stats_lock:
                    self._stats["rollbacks"] += 1
                if not _is_db_error(exc):
                    return False  # the caller's own exception propagates untouched
                if isinstance(exc, StoreError) and exc.classification is not None:
                    self._note_fault(exc.classification, txn.op, exc, report=txn.report)
                    return False
                raise self._failed(exc, txn.op, committed=False, report=txn.report) from exc
            try:
                conn.execute("COMMIT")
            except Exception as err:
                committed: bool | None = None
                if in_txn(conn):  # still inside: nothing was committed
                    committed = False
                    try:
                        conn.execute("ROLLBACK")
                    except Exception:
                        logger.debug("%s: ROLLBACK after a failed COMMIT failed", self.path, exc_info=True)
                self._clear_callbacks()
                if committed is None:
                    with self._stats_lock:
                        self._stats["uncertain_commits"] += 1
                raise self._failed(err, txn.op, committed=committed, report=txn.report) from err
        finally:
            db.release(record)
        with self._stats_lock:
            self._stats["reads" if txn.kind == "read" else "transactions"] += 1
        self._run_callbacks()
        if txn.kind == "write":
            self._after_commit(conn, txn.op)
        elif self.hooks.has_on_success:
            self.hooks.on_success(self, txn.op)
        return False

    def _after_commit(self, conn: Any, op: Operation | None) -> None:
        hooks = self.hooks
        if hooks.has_on_commit_invariant:
            violations, raise_requested = hooks.on_commit_invariant(self, conn, op)
            if violations:
                self._report_violations(violations, op, raise_requested)
        if hooks.has_on_success:
            hooks.on_success(self, op)

    def _report_violations(self, violations: list[Violation], op: Operation | None, raise_it: bool) -> None:
        """Log, count and report (``on_fatal`` with kind INVARIANT) violations found after a
        durable commit; raise ``InvariantViolation(committed=True)`` only when a check asked."""
        text = "; ".join(f"{v.check}: {v.message}" for v in violations)
        with self._stats_lock:
            self._stats["violations"] += len(violations)
        logger.warning("%s: post-commit invariant violated (the data is committed): %s", self.path, text)
        c = Classification(kind=ErrorKind.INVARIANT, name="CORESTORE_INVARIANT", message=text, trips_breaker=True,
                           source=violations[0].check.split(".")[0])
        err = InvariantViolation(f"{self.path}: post-commit invariant violated (the data IS committed; do not retry): {text}",
                                 classification=c, violations=tuple(violations), path=self.path)
        self._note_fault(c, op, err, report=True)
        if raise_it:
            raise err

    def _commit_inside(self, txn: _Txn, begin: bool) -> None:
        conn = txn.record.conn
        conn.execute("COMMIT")
        self._run_callbacks()
        if begin:
            conn.execute(f"BEGIN {txn.lock_type}" if txn.lock_type else "BEGIN")

    def _rollback_inside(self, txn: _Txn, begin: bool) -> None:
        conn = txn.record.conn
        if self._in_txn(conn):
            conn.execute("ROLLBACK")
        self._clear_callbacks()
        if begin:
            conn.execute(f"BEGIN {txn.lock_type}" if txn.lock_type else "BEGIN")

    def _with_connection(self, kind: str, fn: Callable[[Any], T], *, name: str | None = None) -> T:
        """Run ``fn(conn)`` on this thread's connection outside any transaction, as an operation."""
        if self.database.in_transaction():
            raise QueryError(f"{self.path}: {name or kind} cannot run inside a transaction",
                             classification=Classification(kind=ErrorKind.PROGRAMMING, name="IN_TRANSACTION"), path=self.path)
        op = Operation(kind=kind, name=name)
        error: BaseException | None = None
        try:
            self.hooks.before_operation(self, op)
            record = self._acquire_for(op, True)
            try:
                return fn(record.conn)
            except Exception as err:
                raise self._failed(err, op, committed=False, report=True) from err
            finally:
                self.database.release(record)
        except BaseException as err:
            error = err
            raise
        finally:
            self.hooks.after_operation(self, op, error)
            error = None  # no reference cycle through the traceback

    # -- statements outside transactions -----------------------------------------------------
    def _autocommit(self, execute: Callable[..., Any], sql: str, params: Any, is_read: bool,
                    args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        if self._closed and not self._draining:
            raise StoreClosedError(f"{self.path}: the store was closed", path=self.path)
        if not is_read and self.profile.read_only:
            raise ReadOnlyError(
                f"{self.path}: profile {self.profile.name!r} is read-only; the statement was refused before reaching SQLite",
                classification=Classification(kind=ErrorKind.READONLY, name="READ_ONLY_PROFILE"), path=self.path,
            )
        hooks = self.hooks
        op = None
        if hooks.has_operation_hooks or hooks.has_on_fatal:
            op = Operation(kind="read" if is_read else "write", name="statement")
        error: BaseException | None = None
        try:
            if hooks.has_before_operation:
                hooks.before_operation(self, op)
            db = self.database
            record = self._acquire_for(op, True)
            try:
                cursor = execute(sql, params, *args, **kwargs)
            except Exception as err:
                if not _is_db_error(err):
                    raise
                c = self._classify(err, op)
                committed: bool | None = False
                if not is_read and c.kind in (ErrorKind.FATAL_IO, ErrorKind.TRANSIENT_IO, ErrorKind.CORRUPT):
                    committed = None  # the implicit COMMIT may or may not have reached the disk
                raise self._failed(err, op, committed=committed, report=True, classification=c) from err
            finally:
                db.release(record)
            with self._stats_lock:
                self._stats["statements"] += 1
            if not is_read:
                self._after_commit(record.conn, op)
            elif hooks.has_on_success:
                hooks.on_success(self, op)
            return cursor
        except BaseException as err:
            error = err
            raise
        finally:
            hooks.after_operation(self, op, error)
            error = None  # no reference cycle through the traceback

    # -- errors ---------------------------------------------------------------------------------
    def _classify(self, err: BaseException, op: Operation | None) -> Classification:
        if isinstance(err, StoreError) and err.classification is not None:
            return err.classification
        return self.hooks.classify_error(self, err, op)

    def _acquire_for(self, op: Operation | None, report: bool) -> Any:
        """This thread's connection for ``op``. Failing to open it is the operation's outcome:
        a fault is counted and reported (``on_fatal``, so the circuit breaker sees CANTOPEN)."""
        try:
            return self.database.acquire()
        except StoreError as err:
            if err.classification is not None:
                self._note_fault(err.classification, op, err, report=report)
            raise

    def _note_fault(self, c: Classification, op: Operation | None, err: BaseException, *, report: bool) -> None:
        if c.is_fault:
            with self._stats_lock:
                self._stats["faults"] += 1
                self._faults_by_kind[c.kind.name] = self._faults_by_kind.get(c.kind.name, 0) + 1
            self._last_fault = (time.time(), c)
        if c.reopen:
            self.invalidate()
        if report and c.is_fault:
            self._fire_on_fatal(err, c, op)

    def _fire_on_fatal(self, err: BaseException, c: Classification, op: Operation | None) -> None:
        """``on_fatal`` on the failing caller's thread: a ``health()`` called from inside it (a
        plugin escalating) never runs the database probe (site/plugins/health.md)."""
        scope = self._fault_scope
        scope.depth = getattr(scope, "depth", 0) + 1
        try:
            self.hooks.on_fatal(self, err, c, op)
        finally:
            scope.depth -= 1

    def _failed(self, err: BaseException, op: Operation | None, *, committed: bool | None, report: bool,
                classification: Classification | None = None) -> BaseException:
        """Classify ``err``, apply the verdict (reopen, ``on_fatal``), return what to raise."""
        if isinstance(err, StoreError) and err.classification is not None and classification is None:
            if committed is None and err.committed is not None:
                err.committed = None
            self._note_fault(err.classification, op, err, report=report)
            return err
        c = classification or self._classify(err, op)
        exc = self._exception(err, c, committed)
        self._note_fault(c, op, exc, report=report)
        return exc

    def _exception(self, err: BaseException, c: Classification, committed: bool | None) -> StoreError:
        cls = _EXCEPTION_FOR_KIND.get(c.kind, StoreError)
        what = c.name or c.kind.name
        state = {True: "committed", False: "not committed", None: "outcome UNKNOWN (the COMMIT itself failed)"}[committed]
        message = f"{self.path}: {what}: {c.message or err}; {state}; {_ADVICE.get(c.kind, '')}"
        if cls is InvariantViolation:
            return InvariantViolation(message, classification=c, path=self.path)
        return cls(message, classification=c, committed=committed, path=self.path)

    def _translate_in_transaction(self, err: BaseException) -> BaseException:
        if not _is_db_error(err):
            return err
        top = self.database.top_transaction()
        op = top.op if isinstance(top, _Txn) else None
        c = self._classify(err, op)
        return self._exception(err, c, committed=False)

    def _translate_open_error(self, err: BaseException) -> BaseException:
        if isinstance(err, StoreError) or not _is_db_error(err):
            return err
        c = self._classify(err, Operation(kind="open"))
        if c.extended_code == 26 or c.code == 26:
            return CorruptionError(
                f"{self.path}: not a SQLite database (SQLITE_NOTADB: {c.message}); corestore will not touch it. "
                "Check the path; `corestore doctor PATH` shows what the file is.",
                classification=c, committed=False, path=self.path,
            )
        if self.profile.read_only and not self.memory:
            problem = readonly_wal_problem(self.path)
            if problem is not None:
                return FatalError(f"{self.path}: {c.name or c.kind.name}: {problem}", classification=c,
                                  committed=False, path=self.path)
        if c.reopen:
            self.invalidate()
        return self._exception(err, c, committed=False)

    # -- health ---------------------------------------------------------------------------------
    def _maybe_probe(self) -> None:
        """Run the ``database`` probe if the last one is older than ``probe_interval_s`` and no
        other thread is running one (that caller does not wait: it reports the last result)."""
        last = self._probe
        if last is not None and time.monotonic() - last[0] < self.probe_interval_s:
            return
        if self.database.in_transaction():
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
                self._with_connection("read", lambda conn: conn.execute("SELECT count(*) FROM sqlite_master").fetchone(),
                                      name="health-probe")
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


_BEGIN = {None: "BEGIN", "": "BEGIN", "IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED",
          "EXCLUSIVE": "BEGIN EXCLUSIVE"}


def _noop() -> None:
    return None


# -- open --------------------------------------------------------------------------------------
def _looks_like_bare_name(target: str) -> bool:
    return os.sep not in target and "/" not in target and not os.path.splitext(target)[1]


def _resolve(target: str | os.PathLike[str] | Profile, profile: str | None, config: str | os.PathLike[str] | None,
             enable: Iterable[str] = (), disable: Iterable[str] = (), settings: Mapping[str, Any] | None = None) -> Profile:
    cfg: Config | None = load_config(config)
    if isinstance(target, Profile):
        if profile is not None:
            raise ConfigError("corestore.open(Profile(...)): pass either a Profile or profile=, not both")
        if not target.path:
            raise ConfigError("corestore.open(Profile(...)): the profile has no path")
        resolved = target
    else:
        name = os.fspath(target)
        binding = cfg.databases.get(name) if cfg else None
        if binding is not None:
            resolved = resolve_profile(profile or binding.profile, config=cfg, path=binding.path, binding=binding)
        elif name == ":memory:":
            resolved = resolve_profile(profile or "default", config=cfg, path=name)
        elif _looks_like_bare_name(name):
            where = cfg.source if cfg else "no config file (pass config= or set CORESTORE_CONFIG)"
            known = ", ".join(sorted(cfg.databases)) if cfg and cfg.databases else "(none)"
            raise ConfigError(
                f"{where}: {name!r} is not bound in [databases] (bound: {known}); a bare name must be bound, "
                f"a file path needs a directory or a suffix (e.g. './{name}.db')"
            )
        else:
            resolved = resolve_profile(profile or "default", config=cfg, path=name)
    if enable or disable or settings:
        resolved = with_overrides(resolved, enable=enable, disable=disable, settings=settings)
    return check_path(resolved)


def _claim_driver(store: Store) -> None:
    if store.memory:
        return
    current = _drivers.get(store.path)
    if current is not None and current[0] != store.profile.driver:
        raise ConfigError(
            f"{store.path}: already open in this process through driver {current[0]!r}; refusing driver "
            f"{store.profile.driver!r} (their locks do not see each other: two drivers on one file can corrupt it)"
        )
    _drivers[store.path] = (store.profile.driver, (current[1] if current else 0) + 1)


def _release_driver(store: Store) -> None:
    current = _drivers.get(store.path)
    if current is not None:
        if current[1] <= 1:
            del _drivers[store.path]
        else:
            _drivers[store.path] = (current[0], current[1] - 1)


def open(  # noqa: A001 - the public name is fixed by the design
    target: str | os.PathLike[str] | Profile,
    *,
    profile: str | None = None,
    config: str | os.PathLike[str] | None = None,
    setup: Callable[[Store], Any] | None = None,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Store:
    """Open (or share) the store for ``target``: a path, a name bound in ``[databases]``, or a
    :class:`Profile`.

    The same real path with the same resolved profile returns the same store (one more
    reference). ``setup(store)`` runs once per store, under the init lock; a second open of a
    cached store with a different ``setup`` is a :class:`ConfigError`. The first connection is
    opened here, so a wrong file or journal mode fails now, not at the first write.

    ``enable``, ``disable`` and ``settings`` compose on top of the profile in code, exactly like a
    profile table's keys of the same names: ``enable`` appends plugins, ``disable`` removes them,
    ``settings`` merges key by key into each plugin's table. ``on_store_open`` hooks run once the
    first connection is ready, before ``setup``.
    """
    resolved = _resolve(target, profile, config, enable, disable, settings)
    key = (resolved.path, resolved)
    cacheable = resolved.path != ":memory:"
    if cacheable:
        with _cache_lock:
            key_lock = _key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with _cache_lock:
                store = _cache.get(key)
                if store is not None:
                    if setup is not None and store._setup is not None and setup is not store._setup:
                        raise ConfigError(
                            f"{resolved.path}: already open with setup={store._setup!r}; a second open passed a "
                            f"different setup={setup!r} (one store runs one setup)"
                        )
                    if setup is not None and store._setup is None:
                        raise ConfigError(f"{resolved.path}: already open without setup; a second open passed setup={setup!r}")
                    store._refs += 1
                    return store
            return _create(resolved, setup, key)
    return _create(resolved, setup, None)


def _create(resolved: Profile, setup: Callable[[Store], Any] | None, key: Any) -> Store:
    store = Store(resolved, setup=setup, key=key)
    with _cache_lock:
        _claim_driver(store)
    try:
        store.database.connect()
        store.hooks.on_store_open(store)
        if setup is not None:
            with store.init_lock():
                setup(store)
    except BaseException:
        with _cache_lock:
            _release_driver(store)
        store._key = None
        store._refs = 1
        store.close()
        raise
    with _cache_lock:
        if key is not None:
            _cache[key] = store
        _all_stores.add(store)
    return store


def open_stores() -> list[Store]:
    """Every store open in this process (for the CLI and tests)."""
    with _cache_lock:
        return list(_all_stores)


def _after_fork_in_child() -> None:
    global _cache_lock
    _cache_lock = threading.Lock()
    _key_locks.clear()
    stores = list(_all_stores)
    _cache.clear()
    for store in stores:
        store._lock = threading.Lock()
        store._stats_lock = threading.Lock()
        store._health_lock = threading.RLock()
        store._probe_lock = threading.Lock()
        store._fault_scope = threading.local()
        store.database.forget_after_fork()
        if store._anchor is not None:
            from .database import _FORGOTTEN

            _FORGOTTEN.append(store._anchor)


os.register_at_fork(after_in_child=_after_fork_in_child)
