"""Fork safety: a child may use a database only if its process had no SQLite connection open to
that file at the moment of ``fork()``.

Why: SQLite keeps a per-process table of the POSIX locks it holds per file (and of the ``-shm``
mapping). A forked child inherits that table but not the locks, so a connection the child opens
to a file its parent had open believes it holds locks it does not hold: another process may then
checkpoint and delete the ``-wal`` under it (committed rows lost), or the child waits on a lock
that no process will ever release. And a thread of the parent that was inside SQLite at
``fork()`` may have held one of SQLite's internal mutexes, which stays held forever in the child.

What the store does (``os.register_at_fork``):

* **before** the fork: new connections wait (bounded) until the fork is done; every idle
  connection of every store is closed, and each in-flight one is waited for until
  :data:`FORK_WAIT_S` has passed in all, then closed. The records stay locked until the fork is
  done, so no thread reopens one in between.
* **in the parent** after the fork: everything goes on; each thread's next statement opens a
  fresh connection. A file that could not be closed in time is logged (WARNING).
* **in the child**: inherited connections are never used and never closed (closing them could
  checkpoint or unlink the parent's ``-wal``). A file that still had a connection open (or being
  opened) at the fork is refused with a :class:`~corestore.FatalError` naming the fork and what
  to do, before SQLite is called; when another thread of the parent was inside SQLite at the
  fork, every database is refused in the child (SQLite's own locks may be held). A ``:memory:``
  store lives in its parent only and is refused too. Everything else works: a master that opens
  its stores at import and forks idle workers (gunicorn ``preload_app``) gets workers that open
  fresh connections.

Then, still in the child, each store's plugins run their ``on_fork_child(store)`` hook (once per
store, after the core's own reset above) to drop what belongs to the parent: queues, threads,
locks. This module is the one place that registers fork handlers for stores and plugins; a
plugin implements the hook instead of calling ``os.register_at_fork``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import Classification, ErrorKind, FatalError

if TYPE_CHECKING:  # pragma: no cover
    from .database import PolicyMixin

__all__ = ["FORK_WAIT_S", "check", "enter_open", "exit_open", "refusal_for"]

logger = logging.getLogger(__name__)

#: How long (seconds, in all) a ``fork()`` waits for connections in use by other threads before
#: it goes ahead; a file still in use then is refused in the child. Replace it to change it.
FORK_WAIT_S: float = 2.0

_ADVICE = ("a forked child may use a database only if its process had no SQLite connection open to that "
           "file at fork(); fork before opening the store, fork while no thread is using it (the store "
           "closes its idle connections at fork), or start the worker with the 'spawn' start method "
           "(multiprocessing.get_context('spawn'))")

_gate = threading.Condition()
_forking = False
_refuse_all: str | None = None  # in a child: why every database is refused
_refused: dict[str, str] = {}  # in a child: real path -> why it is refused
_waiting: list[PolicyMixin] = []  # the databases held for the fork in progress


def _databases() -> list[PolicyMixin]:
    from .database import all_databases

    return all_databases()


# -- opening (called by the database around every new connection) ------------------------------
def enter_open(db: PolicyMixin) -> None:
    """A new connection of ``db`` is about to be opened: wait while a fork is being prepared
    (bounded), then count it as opening."""
    with _gate:
        deadline = time.monotonic() + FORK_WAIT_S + 5.0
        while _forking:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FatalError(
                    f"{db.database}: waited {FORK_WAIT_S + 5.0:g} s for a fork() in progress in another thread "
                    "to finish before opening a connection",
                    classification=Classification(kind=ErrorKind.ENVIRONMENT, name="FORK_IN_PROGRESS"),
                    path=str(db.database),
                )
            _gate.wait(left)
        db._opening += 1


def exit_open(db: PolicyMixin) -> None:
    """The connection counted by :func:`enter_open` is registered (or failed)."""
    with _gate:
        db._opening -= 1
        _gate.notify_all()


# -- refusing in a child ----------------------------------------------------------------------
def refusal_for(path: str, own: str | None = None) -> str | None:
    """Why ``path`` is refused in this (forked) process, or None."""
    return own or _refused.get(path) or _refuse_all


def check(store: Any, own: str | None) -> None:
    """Raise the fork refusal for ``store`` if there is one (called before SQLite is)."""
    if own is None and _refuse_all is None and not _refused:
        return
    reason = refusal_for(store.path, own)
    if reason is None:
        return
    raise FatalError(
        f"{store.path}: refused in this forked child (pid {os.getpid()}): {reason}; {_ADVICE}",
        classification=Classification(kind=ErrorKind.ENVIRONMENT, name="OPEN_AT_FORK",
                                      message=f"refused after fork(): {reason}"),
        committed=False, path=store.path,
    )


# -- the fork hooks ---------------------------------------------------------------------------
def _before() -> None:
    global _forking
    deadline = time.monotonic() + FORK_WAIT_S
    dbs = _databases()
    with _gate:
        _forking = True
        while any(db._opening for db in dbs) and time.monotonic() < deadline:
            _gate.wait(max(0.0, deadline - time.monotonic()))
    _waiting[:] = dbs
    for db in dbs:
        db._fork_clean = db.hold_for_fork(deadline)


def _after_in_parent() -> None:
    global _forking
    dbs, _waiting[:] = list(_waiting), []
    for db in dbs:
        db.release_after_fork()
        if not getattr(db, "_fork_clean", True):
            logger.warning("%s: a connection was still in use by another thread at fork() (after %g s); the child "
                           "refuses this file", db.database, FORK_WAIT_S)
    with _gate:
        _forking = False
        _gate.notify_all()


def _after_in_child() -> None:
    global _gate, _forking, _refuse_all
    _gate = threading.Condition()
    _forking = False
    me = threading.current_thread()
    dbs, _waiting[:] = list(_waiting) or _databases(), []
    for db in dbs:
        store = db._store_ref()
        if store is not None and store.memory:
            db.fork_refusal = ("a :memory: database lives in the process that created it; "
                               "open a new one in the child")
        elif db.open_at_fork():
            others = db._opening > 0 or any(not r.closed and r.thread is not me for r in db._records)
            if others:
                _refuse_all = (f"another thread was using {db.database} (inside SQLite) when fork() ran, after "
                               f"waiting {FORK_WAIT_S:g} s; SQLite's internal locks may be held forever in this "
                               "child, so no database is opened here")
            path = store.path if store is not None else str(db.database)
            _refused[path] = ("the thread that called fork() was inside a transaction on it"
                              if not others else "the parent still had a connection to it open at fork()")
        db.forget_after_fork()
    _notify_plugins(dbs)


def _notify_plugins(dbs: list[PolicyMixin]) -> None:
    """Run ``on_fork_child`` for each store the child inherited, once per store."""
    seen: set[int] = set()
    for db in dbs:
        store = db._store_ref()
        if store is None or id(store) in seen:
            continue
        seen.add(id(store))
        hooks = getattr(store, "hooks", None)
        if hooks is None:
            continue
        try:
            hooks.on_fork_child(store)
        except Exception:  # noqa: BLE001 - isolated already; never let a fork handler raise in the child
            logger.exception("%s: on_fork_child failed in the child", store.path)


os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
