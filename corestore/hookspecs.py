"""The hooks corestore calls, grouped by lifecycle: open, operate, commit, fail, health, close, fork.

A plugin implements any subset with ``@corestore.hookimpl``. Every hook receives the
:class:`~corestore.Store` it runs for, so one plugin class serves many stores (the core builds one
instance per store). Hooks with no implementation cost nothing: the core decides at open which
hooks have implementations and never calls the others.

Hooks run with pluggy's semantics: ``tryfirst``/``trylast`` order the implementations,
``classify_error`` stops at the first non-None result, and wrapper implementations
(``wrapper=True`` or the old ``hookwrapper=True``) wrap the others on every hook that is not
isolated (a hook with a wrapper is dispatched by pluggy itself).

Implementations of ``on_success``, ``after_operation``, ``on_fatal``, ``on_health``,
``on_health_changed``, ``on_persistent_failure``, ``on_close`` and ``on_fork_child`` are *isolated* (marked with
:func:`isolated` below): one that raises is logged and skipped, and the others still run.
Wrapper implementations are refused on those hooks with a :class:`~corestore.PluginError` at
open (a wrapper cannot wrap implementations that each run on their own).

An implementation of a hook that is not specified here, or with an argument its hook does not
have, is refused at open and by ``corestore profiles --check``, unless it is marked
``@hookimpl(optionalhook=True)`` (so a plugin written for a newer corestore still loads).

:data:`HOOK_NAMES` and :data:`ISOLATED_HOOKS` are derived from the specifications in this module.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .errors import Classification
    from .health import HealthComponent, HealthReport, HealthStatus
    from .operation import Operation, Outcome, Violation
    from .store import Store

__all__ = [
    "PROJECT",
    "hookspec",
    "hookimpl",
    "HOOK_NAMES",
    "ISOLATED_HOOKS",
    "isolated",
    "on_store_open",
    "on_open",
    "classify_error",
    "before_operation",
    "on_success",
    "after_operation",
    "on_fatal",
    "on_commit_invariant",
    "on_health",
    "on_health_changed",
    "on_persistent_failure",
    "on_close",
    "on_fork_child",
]

PROJECT = "corestore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

_ISOLATED_ATTR = f"{PROJECT}_isolated"


def isolated(spec: Any) -> Any:
    """Mark a hook specification as *isolated*: the core calls each implementation on its own
    (one that raises is logged and skipped) and refuses wrapper implementations of it."""
    setattr(spec, _ISOLATED_ATTR, True)
    return spec


# --------------------------------------------------------------------------------------------
# open
# --------------------------------------------------------------------------------------------


@hookspec
def on_store_open(store: Store) -> None:
    """Called once per store, when ``corestore.open()`` creates it: after its first connection is
    ready (and ``on_open`` ran for it), before the ``setup`` callable, before any operation. It
    pairs with ``on_close``. Do one-time setup here (bind to the store, read a marker left by an
    earlier run, start a thread), not in ``on_open`` behind a guard.

    :param store: the new store.

    Return None. Raising refuses the open: ``corestore.open()`` closes the store (``on_close``
    runs) and raises the error to its caller.
    """


@hookspec
def on_open(store: Store, connection: Any) -> None:
    """Called for each new DB-API connection, after the profile's pragmas, before first use.

    :param store: the store the connection belongs to.
    :param connection: the driver connection (``sqlite3.Connection`` or ``apsw.Connection``; a
        ``psycopg.Connection`` in autocommit mode on a PostgreSQL store).

    Return None. Raising refuses the connection: the core closes it, classifies the error and
    raises it to the caller that asked for the connection.
    """


# --------------------------------------------------------------------------------------------
# operate
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def classify_error(store: Store, error: BaseException, operation: Operation | None) -> Classification | None:
    """Called for any exception raised by the database; decides what it means.

    :param store: the store.
    :param error: the exception as raised (walk ``.orig``/``__cause__``/``__context__`` for the
        driver error, or use :func:`corestore.classify.driver_error`).
    :param operation: the unit of work it happened in (None for statements outside one).

    Return a :class:`~corestore.Classification`, or None to let the next plugin decide.
    Stops at first non-None result. The core's SQLite code table runs last (``trylast``), so
    any plugin overrides it.
    """


@hookspec
def before_operation(store: Store, operation: Operation) -> None:
    """Called before a transaction or unit of work starts, before any connection is touched.

    Also called, with ``operation.kind == "open"``, before a new store opens its first
    connection inside :func:`corestore.open`: a failure to open then reaches ``on_fatal`` with
    that operation (a successful open is not an ``on_success``).

    :param store: the store.
    :param operation: the unit of work about to start.

    Return None. Raising refuses the operation; the exception reaches the caller as is (e.g.
    :class:`~corestore.CircuitOpenError`).
    """


@isolated
@hookspec
def on_success(store: Store, operation: Operation) -> None:
    """Called after an operation committed (or a read finished) and its invariants ran.

    :param store: the store.
    :param operation: the finished unit of work.

    Return None. Isolated: an implementation that raises is logged and skipped.
    """


@isolated
@hookspec
def after_operation(store: Store, operation: Operation, outcome: Outcome) -> None:
    """Called once when an operation that ``before_operation`` was called for is over, however it
    ended: after ``on_success`` / ``on_fatal``, or without either (contention, a caller error,
    the caller's own exception, refused by a ``before_operation``). In ``run()`` each attempt is
    its own operation: its ``after_operation`` comes right after the decision to retry it (before
    the backoff sleep) or to report it to ``on_fatal``. Called after the operation's connection
    was released.

    :param store: the store.
    :param operation: the same object ``before_operation`` received.
    :param outcome: how it ended (:class:`~corestore.Outcome`: ``ok``, ``error``, its
        ``classification``, ``committed``, ``retrying``). This is the hook that sees *every*
        outcome: BUSY, constraint and query errors, attempts ``run()`` retried, refusals.
        Optional: an implementation that does not name ``outcome`` is called without it, and
        the core builds no outcome when no implementation asks for one (added in 0.2).

    Return None. Isolated: an implementation that raises is logged and skipped. (The circuit
    breaker frees a half-open probe slot here when the probe ended with neither outcome.)
    """


# --------------------------------------------------------------------------------------------
# commit
# --------------------------------------------------------------------------------------------


@hookspec
def on_commit_invariant(store: Store, connection: Any, operation: Operation) -> Iterable[Violation] | None:
    """Called right after a successful COMMIT of a write transaction, on the same connection.

    :param store: the store.
    :param connection: the driver connection that committed (outside any transaction now).
    :param operation: the unit of work that committed.

    Return an iterable of :class:`~corestore.Violation` (or None when all is well); the results
    of all implementations are collected. The data is durable at this point: whatever happens
    here never surfaces as an ordinary, retryable error.
    """


# --------------------------------------------------------------------------------------------
# fail
# --------------------------------------------------------------------------------------------


@isolated
@hookspec
def on_fatal(store: Store, error: BaseException, classification: Classification, operation: Operation | None) -> None:
    """Called when an operation failed with a storage fault (not contention, not a caller error).

    :param store: the store.
    :param error: the exception (the driver error is in its chain).
    :param classification: the verdict of ``classify_error`` (``kind`` is never BUSY,
        CONSTRAINT, PROGRAMMING or UNKNOWN here; INVARIANT for a post-commit violation).
    :param operation: the unit of work (None for a statement outside one).

    Return None. Called once per operation, with the final error: a ``run()`` that took several
    attempts is one call, after the core decided not to retry. Isolated: an implementation that
    raises is logged and skipped.
    """


@isolated
@hookspec
def on_persistent_failure(store: Store, report: HealthReport) -> None:
    """Called when a fault episode outlasted a plugin's escalation rule: the application's
    "restart me" seam (e.g. accounting's ``persistent_after_s``, quarantine's first trip).

    :param store: the store.
    :param report: the store's health report at that moment.

    Return None. Isolated: an implementation that raises is logged and skipped.
    """


# --------------------------------------------------------------------------------------------
# health
# --------------------------------------------------------------------------------------------


@isolated
@hookspec
def on_health(store: Store) -> HealthComponent | list[HealthComponent] | None:
    """Called by ``store.health()``: report this plugin's state.

    :param store: the store.

    Return a :class:`~corestore.HealthComponent`, a list of them, or None (nothing to report).
    Report state already held; do no I/O here. Isolated: an implementation that raises becomes
    an UNKNOWN component carrying the error.
    """


@isolated
@hookspec
def on_health_changed(store: Store, previous: HealthStatus, current: HealthStatus) -> None:
    """Called once when the aggregate status of the store changed.

    :param store: the store.
    :param previous: the status before.
    :param current: the status now (``store.last_health`` is the report that has it).

    Called by ``store.health()`` on the thread that computed the report, under the store's
    health lock, so transitions arrive exactly once and in order; the first report only sets
    the starting status. Keep it short and do no blocking I/O here (that thread may be a failing
    caller's): hand slow work to a thread of your own, as the ``health`` plugin does.

    Return None. Isolated: an implementation that raises is logged and skipped.
    """


# --------------------------------------------------------------------------------------------
# close
# --------------------------------------------------------------------------------------------


@isolated
@hookspec
def on_close(store: Store) -> None:
    """Called by ``store.close()`` when the last reference is released, before connections close
    (so a plugin can drain queued writes).

    :param store: the store.

    Return None. Isolated: an implementation that raises is logged and skipped.
    """


# --------------------------------------------------------------------------------------------
# fork
# --------------------------------------------------------------------------------------------


@isolated
@hookspec
def on_fork_child(store: Store) -> None:
    """Called in a child process right after ``os.fork()``, once per store the child inherited,
    after the core has set the store's own state for the child (inherited connections forgotten,
    refusals decided; see :mod:`corestore.forking`).

    A plugin resets what belongs to the parent here: locks another thread of the parent may have
    held at the fork, queues and threads that exist only in the parent, caches of the parent's
    connections. It runs in the child before ``fork()`` returns there, with only the forking
    thread alive: no I/O on the database, nothing that waits for another thread. The core is the
    only caller of ``os.register_at_fork``; a plugin must not register its own handler.

    :param store: the inherited store (it may be closed; the child may not be allowed to use it).

    Return None. Isolated: an implementation that raises is logged and skipped.
    """


#: Every hook, in the order they are specified above (derived from the specifications).
HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, obj in list(globals().items()) if callable(obj) and hasattr(obj, f"{PROJECT}_spec")
)
#: The isolated hooks (marked with :func:`isolated`).
ISOLATED_HOOKS: frozenset[str] = frozenset(name for name in HOOK_NAMES if getattr(globals()[name], _ISOLATED_ATTR, False))
