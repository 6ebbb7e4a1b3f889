"""The SQLite backend: everything the store does that is specific to SQLite and its drivers.

* **Connecting**: the peewee database classes (:class:`PolicySqliteDatabase` for the stdlib
  ``sqlite3`` driver, ``PolicyAPSWDatabase`` for apsw, built on first use) and the target and
  connect parameters for a profile (a shared-cache URI for ``:memory:``, ``mode=ro`` for a
  read-only profile, apsw's open flags and VFS): :func:`make_database`.
* **Preparing a connection**, in apsw's ``bestpractice`` style: one small function per policy and
  the tuple :data:`PREPARE` that wires them, applied in order by :func:`prepare_connection`.
* **The in-transaction test** per driver (:func:`in_transaction_test`), and which exceptions are
  the drivers' (:func:`is_driver_error`).
* **Access** to the header reader (:mod:`corestore.sqlitefile`), the sidecar init lock
  (:mod:`corestore.initlock`) and the result-code table (:mod:`corestore.classify`).

The policies (:mod:`corestore.transaction`, :mod:`corestore.raising`, :mod:`corestore.store`)
reach SQLite only through :data:`BACKEND` (see :mod:`corestore.backends`) and through SQL text
that every SQLite driver accepts.
"""
from __future__ import annotations

import logging
import sqlite3
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import peewee

from ..classify import classify_exception, error_codes
from ..database import PolicyMixin, build_database
from ..errors import Classification, ErrorKind, FatalError
from ..initlock import InitLock
from ..sqlitefile import SqliteHeader, read_header

if TYPE_CHECKING:  # pragma: no cover
    from ..health import HealthComponent
    from ..store import Store
    from . import StoreLink

__all__ = [
    "BACKEND",
    "SqliteBackend",
    "PolicySqliteDatabase",
    "PREPARE",
    "prepare_connection",
    "set_busy_timeout",
    "read_schema",
    "set_pragmas",
    "set_journal_mode",
    "in_transaction_test",
    "is_driver_error",
    "make_database",
    "commit_outcome",
    "is_write_refused",
    "BEGIN_STATEMENTS",
]

logger = logging.getLogger(__name__)


# -- connection preparation: one function per policy, PREPARE wires them ----------------------
def set_busy_timeout(store: Store, conn: Any) -> None:
    """``busy_timeout`` first: every statement after it waits for locks instead of failing."""
    busy = store.profile.pragmas.get("busy_timeout")
    if busy is not None:
        conn.execute(f"PRAGMA busy_timeout = {int(busy)}")


def read_schema(store: Store, conn: Any) -> None:
    """Read the header now: a file that is not a database fails at open, not at the first write."""
    if not store.memory:
        conn.execute("PRAGMA schema_version").fetchone()


def set_pragmas(store: Store, conn: Any) -> None:
    """Every other pragma of the profile, in the profile's order."""
    for name, value in store.profile.pragmas.items():
        if name != "busy_timeout" and name != "journal_mode":
            conn.execute(f"PRAGMA {name} = {value}")


def set_journal_mode(store: Store, conn: Any) -> None:
    """The profile's journal mode, under the init lock, its returned value checked (a refusal is
    a ``FatalError``). Left to ``wal_guard`` when it is enabled; never on a read-only profile."""
    wanted = store.profile.pragmas.get("journal_mode")
    if wanted is None or store.profile.read_only or "wal_guard" in store.plugins:
        return
    current = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if current == wanted:
        return
    with store.init_lock():
        got = str(conn.execute(f"PRAGMA journal_mode = {wanted}").fetchone()[0]).lower()
    if got != wanted:
        raise FatalError(
            f"{store.path}: SQLite refused journal_mode={wanted} and kept {got!r}; corestore never "
            f"runs in a journal mode other than the one the profile asks for (profile {store.profile.name!r}). "
            "Fix the file system or ask for the mode SQLite can use.",
            classification=Classification(kind=ErrorKind.ENVIRONMENT, name="JOURNAL_MODE_REFUSED",
                                          message=f"journal_mode={wanted} returned {got}", trips_breaker=True),
            path=store.path,
        )


#: How a new connection is prepared, in order.
PREPARE: tuple[Callable[[Store, Any], None], ...] = (set_busy_timeout, read_schema, set_pragmas, set_journal_mode)


def prepare_connection(store: Store, conn: Any) -> None:
    """Apply :data:`PREPARE` to ``conn``."""
    for step in PREPARE:
        step(store, conn)


# -- drivers ------------------------------------------------------------------------------------
def _not_autocommit(conn: Any) -> bool:
    return not conn.getautocommit()


def _in_transaction(conn: Any) -> bool:
    return conn.in_transaction  # type: ignore[no-any-return]


def in_transaction_test(driver: str) -> Callable[[Any], bool]:
    """Whether a connection of ``driver`` is inside a transaction (after an I/O error SQLite may
    have rolled back by itself: then there is nothing to ROLLBACK)."""
    return _not_autocommit if driver == "apsw" else _in_transaction


def is_driver_error(err: BaseException) -> bool:
    """True for an exception of the ``sqlite3`` module or of apsw (without importing apsw: an
    apsw error can only exist if apsw is already imported)."""
    if isinstance(err, sqlite3.Error):
        return True
    apsw = sys.modules.get("apsw")
    return apsw is not None and isinstance(err, apsw.Error)


class PolicySqliteDatabase(PolicyMixin, peewee.SqliteDatabase):
    """The store's database for the stdlib ``sqlite3`` driver."""


_db_classes: dict[str, type] = {"sqlite3": PolicySqliteDatabase}


def database_class(driver: str) -> type:
    """The policy database class for ``driver`` (``"sqlite3"`` or ``"apsw"``; apsw's is built on first use)."""
    cls = _db_classes.get(driver)
    if cls is None and driver == "apsw":
        from playhouse.apsw_ext import APSWDatabase

        cls = _db_classes["apsw"] = type("PolicyAPSWDatabase", (PolicyMixin, APSWDatabase), {
            "__doc__": "The store's database for the apsw driver.",
            "__module__": __name__,
        })
    assert cls is not None
    return cls


def make_database(store: Store, link: StoreLink) -> tuple[Any, Any]:
    """The policy database for ``store.profile`` and, for ``:memory:``, the anchor connection that
    keeps the shared in-memory database alive while the store is open (else None)."""
    profile = store.profile
    params: dict[str, Any] = {}
    target = store.path
    anchor: Any = None
    if profile.driver == "sqlite3":
        params["check_same_thread"] = False
        if store.memory:
            target = f"file:corestore-mem-{uuid.uuid4().hex}?mode=memory&cache=shared"
            params["uri"] = True
            anchor = sqlite3.connect(target, uri=True, check_same_thread=False)
        elif profile.read_only:
            target = f"file:{urllib.parse.quote(store.path)}?mode=ro"
            params["uri"] = True
    else:
        import apsw

        flags = apsw.SQLITE_OPEN_URI
        if store.memory:
            target = f"file:corestore-mem-{uuid.uuid4().hex}?mode=memory&cache=shared"
            flags |= apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
            anchor = (apsw.Connection(target, flags=flags, vfs=profile.vfs) if profile.vfs
                      else apsw.Connection(target, flags=flags))
        elif profile.read_only:
            target = f"file:{urllib.parse.quote(store.path)}?mode=ro"
            flags |= apsw.SQLITE_OPEN_READONLY
        else:
            target = f"file:{urllib.parse.quote(store.path)}"
            flags |= apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        params["flags"] = flags
        if profile.vfs:
            params["vfs"] = profile.vfs
    db = build_database(database_class(profile.driver), store, link, target,
                        pragmas=None, timeout=None if profile.driver == "apsw" else 0, **params)
    return db, anchor


#: BEGIN per lock type (the same for reads: ``store.read()`` is ``BEGIN DEFERRED`` under ``query_only``).
BEGIN_STATEMENTS: Mapping[str | None, str] = {None: "BEGIN", "": "BEGIN", "IMMEDIATE": "BEGIN IMMEDIATE",
                                              "DEFERRED": "BEGIN DEFERRED", "EXCLUSIVE": "BEGIN EXCLUSIVE"}


def commit_outcome(conn: Any, err: BaseException, in_txn: Callable[[Any], bool]) -> bool | None:
    """After an error from COMMIT: still inside the transaction -> nothing was committed
    (False); otherwise the outcome is unknown (None: the frames may have reached the -wal)."""
    return False if in_txn(conn) else None


def is_write_refused(err: BaseException) -> bool:
    """SQLite refused a change because ``query_only`` is on (READONLY, primary code 8)."""
    primary, extended, _name, _message = error_codes(err)
    return primary == 8 and extended in (8, None)


class SqliteBackend:
    """The :class:`~corestore.backends.Backend` for SQLite (drivers ``sqlite3`` and ``apsw``)."""

    name = "sqlite"
    begin_write = BEGIN_STATEMENTS
    begin_read = BEGIN_STATEMENTS
    query_only_sql: tuple[str, str] | None = ("PRAGMA query_only = 0", "PRAGMA query_only = 1")
    probe_sql = "SELECT count(*) FROM sqlite_master"
    refusals: Mapping[str, str] = {}

    def make_database(self, store: Store, link: StoreLink) -> tuple[Any, Any]:
        return make_database(store, link)

    def prepare_connection(self, store: Store, conn: Any) -> None:
        prepare_connection(store, conn)

    def in_transaction_test(self, driver: str) -> Callable[[Any], bool]:
        return in_transaction_test(driver)

    def is_driver_error(self, err: BaseException) -> bool:
        return is_driver_error(err)

    def read_header(self, path: str) -> SqliteHeader | None:
        return read_header(path)

    def init_lock(self, path: str) -> InitLock:
        return InitLock.for_path(path)

    def classify_exception(self, err: BaseException) -> Classification:
        return classify_exception(err)

    def commit_outcome(self, conn: Any, err: BaseException, in_txn: Callable[[Any], bool]) -> bool | None:
        return commit_outcome(conn, err, in_txn)

    def is_write_refused(self, err: BaseException) -> bool:
        return is_write_refused(err)

    def health_components(self, store: Store) -> list[HealthComponent]:
        from ..sqlitebugs import version_component

        return [version_component(store)]


#: The SQLite backend.
BACKEND = SqliteBackend()
