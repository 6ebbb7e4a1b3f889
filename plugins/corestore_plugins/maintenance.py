"""maintenance: ``PRAGMA optimize`` as SQLite recommends, and a time-budgeted ``quick_check``
(site/plugins/maintenance.md).

**When.** Any long-running service on a database whose queries depend on indexes. **Why.**
SQLite recommends ``PRAGMA optimize=0x10002`` when a connection opens and plain ``PRAGMA
optimize`` periodically (sqlite.org/pragma.html#pragma_optimize); few applications do, and query
plans go stale as the data grows. A ``quick_check`` now and then finds damage while a backup
from before it still exists.

What it does:

* **Once per store on open** (``on_store_open``): ``PRAGMA optimize=0x10002``. On SQLite before
  3.46 there is no ``0x10000`` flag and no automatic analysis limit, so ``analysis_limit`` is set
  first (``analysis_limit`` setting, default 400 rows per index) and restored after: it can never
  run an unbounded ANALYZE. It runs as an ordinary write (``store.run``: the write gate, the
  breaker and retries apply).
* **Periodically**, when ``optimize_interval_s`` > 0: plain ``PRAGMA optimize`` (same limit rule).
* **quick_check**, when ``quick_check_interval_s`` > 0: ``PRAGMA quick_check`` inside a *read*
  transaction (it never holds the write lock: writers go on), interrupted after
  ``quick_check_budget_s`` through SQLite's progress handler (the result is then "incomplete").
* Never on read-only (or in-memory) stores: nothing runs, health says so.

Results (time, duration, outcome) are in ``stats()`` and the health component: DOWN when a
quick_check found damage, DEGRADED when the last optimize failed.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from corestore import HealthComponent, HealthStatus, StoreError, hookimpl
from corestore.settings import boolean, integer_at_least, non_negative_seconds
from corestore.sqlitebugs import linked_version, parse_version

__all__ = ["Maintenance", "OPTIMIZE_ON_OPEN"]

logger = logging.getLogger(__name__)

#: The mask SQLite recommends for a connection that just opened.
OPTIMIZE_ON_OPEN = 0x10002
_AUTO_LIMIT_VERSION = (3, 46, 0)  # 0x10000 flag and the automatic analysis limit


class Maintenance:
    """Runs ``PRAGMA optimize`` on open and periodically, and an optional budgeted quick_check.

    Settings (``[profiles.NAME.settings.maintenance]``):

    | name | type | default | meaning |
    |---|---|---|---|
    | ``optimize_on_open`` | bool | true | ``PRAGMA optimize=0x10002`` once per store when it opens |
    | ``optimize_interval_s`` | float | 0 | plain ``PRAGMA optimize`` this often (0: never) |
    | ``analysis_limit`` | int | 400 | set before optimize on SQLite < 3.46 (rows examined per index) |
    | ``quick_check_interval_s`` | float | 0 | a ``quick_check`` this often (0: never) |
    | ``quick_check_budget_s`` | float | 1.0 | a quick_check is interrupted after this long (result "incomplete") |
    """

    name: ClassVar[str] = "maintenance"
    #: SQLite only: a PostgreSQL profile that lists it is refused at open (corestore.registry.check_engine)
    engines: ClassVar[tuple[str, ...]] = ("sqlite",)

    @attrs.frozen(kw_only=True)
    class Settings:
        """maintenance's settings (see the class docstring's table)."""

        optimize_on_open: bool = attrs.field(default=True, validator=boolean, metadata={
            "help": "PRAGMA optimize=0x10002 once per store when it opens"})
        optimize_interval_s: float = attrs.field(default=0.0, validator=non_negative_seconds, metadata={
            "help": "plain PRAGMA optimize this often (0: never)"})
        analysis_limit: int = attrs.field(default=400, validator=integer_at_least(1), metadata={
            "help": "analysis_limit set before optimize on SQLite < 3.46 (no automatic limit there)"})
        quick_check_interval_s: float = attrs.field(default=0.0, validator=non_negative_seconds, metadata={
            "help": "a time-budgeted quick_check (in a read transaction) this often (0: never)"})
        quick_check_budget_s: float = attrs.field(default=1.0, validator=non_negative_seconds, metadata={
            "help": "a quick_check is interrupted after this long (result 'incomplete')"})

    def __init__(self, settings: Maintenance.Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds, monotonic) schedules the periodic jobs and times them; a job's
        ``at`` is wall time and the quick_check budget SQLite's progress handler enforces stays
        :func:`time.monotonic`."""
        self.settings = settings if settings is not None else Maintenance.Settings()
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Any = None
        self._results: dict[str, dict[str, Any]] = {}
        self._skipped: str | None = None

    # -- public ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The last result of each job (``optimize_on_open``, ``optimize``, ``quick_check``):
        ``at`` (unix time), ``duration_s``, ``outcome``, and ``skipped`` (why nothing runs)."""
        with self._lock:
            out: dict[str, Any] = {k: dict(v) for k, v in self._results.items()}
        out["skipped"] = self._skipped
        return out

    def optimize(self, store: Any, mask: int | None = None) -> dict[str, Any]:
        """Run ``PRAGMA optimize`` (``mask`` e.g. :data:`OPTIMIZE_ON_OPEN`) now, as a write."""
        limited = parse_version(linked_version(store.profile.driver)) < _AUTO_LIMIT_VERSION
        sql = "PRAGMA optimize" if mask is None else f"PRAGMA optimize={int(mask)}"
        limit = self.settings.analysis_limit

        def unit() -> None:
            db = store.database
            if limited:
                before = db.execute_sql("PRAGMA analysis_limit").fetchone()[0]
                db.execute_sql(f"PRAGMA analysis_limit = {limit}")
                try:
                    db.execute_sql(sql).fetchall()
                finally:
                    db.execute_sql(f"PRAGMA analysis_limit = {int(before)}")
            else:
                db.execute_sql(sql).fetchall()

        return self._record("optimize_on_open" if mask is not None else "optimize",
                            lambda: store.run(unit, name="maintenance.optimize"),
                            {"sql": sql, "analysis_limit": limit if limited else None})

    def quick_check(self, store: Any) -> dict[str, Any]:
        """Run a ``quick_check`` now in a read transaction, interrupted after the budget."""
        budget = self.settings.quick_check_budget_s
        box: dict[str, Any] = {}

        def unit() -> None:
            with store.read(name="maintenance.quick_check") as txn:
                conn = txn.record.conn
                deadline = time.monotonic() + budget
                conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
                try:
                    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
                    box["outcome"] = "ok" if rows == ["ok"] else "damaged"
                    if rows != ["ok"]:
                        box["problems"] = rows[:10]
                except Exception as err:  # interrupted at the budget: the transaction still ends normally
                    if not _is_interrupt(err):
                        raise
                    box["outcome"] = "incomplete"
                finally:
                    conn.set_progress_handler(None, 0)

        result = self._record("quick_check", unit, {"budget_s": budget})
        if "outcome" in box and result.get("outcome") == "done":
            result.update(box)
            with self._lock:
                self._results["quick_check"] = dict(result)
        return result

    # -- hooks -----------------------------------------------------------------------------------
    @hookimpl
    def on_store_open(self, store: Any) -> None:
        """``PRAGMA optimize=0x10002`` (not on read-only stores) and start the periodic jobs."""
        self._store = store
        if store.profile.read_only or store.memory:
            self._skipped = "read-only store" if store.profile.read_only else "in-memory store"
            return
        if self.settings.optimize_on_open:
            self.optimize(store, OPTIMIZE_ON_OPEN)
        if self.settings.optimize_interval_s > 0 or self.settings.quick_check_interval_s > 0:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"corestore-maintenance:{os.path.basename(store.path)}")
            self._thread.start()

    @hookimpl
    def on_close(self, store: Any) -> None:
        """Stop the periodic jobs (bounded wait)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.settings.quick_check_budget_s + 10)

    @hookimpl
    def on_fork_child(self, store: Any) -> None:
        """In a forked child (the core calls it): the periodic thread and the lock are the
        parent's; the child runs no periodic job (the parent keeps running them on the file)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """The last results (no I/O): DOWN when a quick_check found damage, DEGRADED when the last
        optimize failed."""
        stats = self.stats()
        status, summary = HealthStatus.UP, "maintenance ran as configured"
        if self._skipped:
            summary = f"nothing runs: {self._skipped}"
        check = stats.get("quick_check")
        failed = [k for k in ("optimize_on_open", "optimize") if stats.get(k, {}).get("outcome") == "error"]
        if check is not None and check.get("outcome") == "damaged":
            status, summary = HealthStatus.DOWN, f"quick_check found damage: {'; '.join(check.get('problems', []))}"
        elif failed:
            status = HealthStatus.DEGRADED
            summary = f"{failed[-1]} failed: {stats[failed[-1]].get('error')}"
        return HealthComponent(name=self.name, status=status, summary=summary, details=stats)

    # -- internals -------------------------------------------------------------------------------
    def _record(self, job: str, fn: Any, extra: dict[str, Any]) -> dict[str, Any]:
        started, at = self.clock(), time.time()
        result: dict[str, Any] = {"at": at, **extra}
        try:
            fn()
            result["outcome"] = "done"
        except StoreError as err:
            c = err.classification
            result["outcome"] = "error"
            result["error"] = c.name or c.kind.name if c is not None else type(err).__name__
            if job == "quick_check" and c is not None and c.kind.name == "CORRUPT":
                result["outcome"] = "damaged"  # SQLite stopped the check itself: the file is damaged
                result["problems"] = [f"{c.name}: {c.message}"]
            logger.warning("%s: maintenance %s failed: %s", getattr(self._store, "path", "?"), job, result["error"])
        result["duration_s"] = round(self.clock() - started, 4)
        with self._lock:
            self._results[job] = dict(result)
        return result

    def _loop(self) -> None:
        s = self.settings
        now = self.clock()
        due = {"optimize": now + s.optimize_interval_s if s.optimize_interval_s > 0 else None,
               "quick_check": now + s.quick_check_interval_s if s.quick_check_interval_s > 0 else None}
        while True:
            pending = [t for t in due.values() if t is not None]
            if not pending or self._stop.wait(max(0.0, min(pending) - self.clock())):
                return
            store = self._store
            if store is None or store.closed:
                return
            now = self.clock()
            try:
                if due["optimize"] is not None and now >= due["optimize"]:
                    self.optimize(store)
                    due["optimize"] = self.clock() + s.optimize_interval_s
                if due["quick_check"] is not None and now >= due["quick_check"]:
                    self.quick_check(store)
                    due["quick_check"] = self.clock() + s.quick_check_interval_s
            except Exception:  # never die silently
                logger.exception("%s: maintenance round failed", store.path)


def _is_interrupt(err: BaseException) -> bool:
    """SQLITE_INTERRUPT from either driver (the progress handler stopped the statement)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is None:
        code = getattr(err, "result", None)
    if code == 9:
        return True
    apsw = sys.modules.get("apsw")
    return (apsw is not None and isinstance(err, getattr(apsw, "InterruptError", ()))) or \
        (isinstance(err, sqlite3.OperationalError) and "interrupt" in str(err).lower())
