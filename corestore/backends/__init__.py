"""The backend seam: what the store needs from a database engine.

The store's policies (transactions, retries, classification, the hooks, the cache) do not know
which engine they run on. Everything that does is behind a :class:`Backend`: how to build the
peewee database for a profile and prepare each new connection, how to tell whether a connection
is inside a transaction, which exceptions are the driver's, how to read the file's header, which
sidecar lock serialises initialisation, and which table turns a driver error into a
:class:`~corestore.Classification`.

Two backends: :mod:`corestore.backends.sqlite` (drivers ``sqlite3`` and ``apsw``) and
:mod:`corestore.backends.postgresql` (psycopg 3), chosen by the profile (a ``url`` means
PostgreSQL). A third engine is a new module beside them that provides the same members, and a
line in :func:`backend_for`; nothing in the policies changes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..errors import Classification
    from ..health import HealthComponent
    from ..initlock import InitLock
    from ..profiles import Profile
    from ..store import Store

__all__ = ["Backend", "StoreLink", "backend_for"]


class StoreLink(Protocol):
    """What the store's database asks of its store (see :mod:`corestore.database`).

    Every member takes the store first: the link is one shared object, never bound to a store, so
    the database keeps only a weak reference to its store and nothing forms a reference cycle.
    The store's implementation is :data:`corestore.link.LINK`.
    """

    def init_connection(self, store: Store, conn: Any) -> None:
        """Prepare a new driver connection (the backend's preparation, then ``on_open``)."""

    def translate_open_error(self, store: Store, err: BaseException) -> BaseException:
        """The exception to raise for a failure to open a connection."""

    def translate_in_transaction(self, store: Store, err: BaseException) -> BaseException:
        """The exception to raise for a statement that failed inside a store transaction."""

    def autocommit(self, store: Store, execute: Callable[..., Any], sql: str, params: Any, is_read: bool,
                   args: tuple[Any, ...], kwargs: Any) -> Any:
        """Run one statement outside any transaction as an operation of its own."""

    def db_transaction(self, store: Store, args: tuple[Any, ...], kwargs: Any) -> Any:
        """peewee's ``db.transaction()``: a store write transaction with peewee's semantics."""

    def direct_begin(self, store: Store, lock_type: str | None) -> None:
        """``db.begin()`` with no store transaction on the thread: open one."""

    def begin_again(self, store: Store, active: Any, lock_type: str | None) -> None:
        """BEGIN on the connection ``active`` holds (peewee's re-BEGIN after an inner commit)."""

    def commit_active(self, store: Store, txn: Any) -> None:
        """``db.commit()`` inside a store transaction: COMMIT under the store's policies."""

    def rollback_active(self, store: Store, txn: Any) -> None:
        """``db.rollback()`` inside a store transaction."""

    def abandon_direct(self, store: Store, txn: Any) -> None:
        """``db.close()`` while a bare ``db.begin()`` transaction is open: roll it back, end it."""

    def set_query_only(self, store: Store, record: Any, on: bool) -> None:
        """Switch the connection's read-only mode (``PRAGMA query_only`` on SQLite)."""


class Backend(Protocol):
    """What the store needs from a database engine."""

    #: the engine's name (``"sqlite"``, ``"postgresql"``): what a plugin's ``engines`` lists
    name: str
    #: BEGIN of a write transaction, per lock type
    begin_write: Mapping[str | None, str]
    #: BEGIN of a read transaction (``store.read()``), per lock type
    begin_read: Mapping[str | None, str]
    #: (off, on) statements of the connection's read-only switch; None: reads are read-only by their BEGIN
    query_only_sql: tuple[str, str] | None
    #: the health probe's statement (cheap, reads the catalog)
    probe_sql: str
    #: store APIs without a meaning on this engine -> why, and what to use instead (ConfigError)
    refusals: Mapping[str, str]

    def make_database(self, store: Store, link: StoreLink) -> tuple[Any, Any]:
        """The store's peewee database for ``store.profile`` and an anchor connection that keeps
        an in-memory database alive (None otherwise)."""

    def prepare_connection(self, store: Store, conn: Any) -> None:
        """Apply the profile to a new driver connection (pragmas, journal mode)."""

    def in_transaction_test(self, driver: str) -> Callable[[Any], bool]:
        """A function telling whether a driver connection is inside a transaction."""

    def is_driver_error(self, err: BaseException) -> bool:
        """True if ``err`` is one of the driver's own exceptions."""

    def read_header(self, path: str) -> Any:
        """The database file's header, or None when it is not a database of this engine."""

    def init_lock(self, path: str) -> InitLock:
        """The cross-process lock that serialises initialisation of ``path`` (a server's secret
        URL for PostgreSQL: the lock connects with it and shows only the redacted one)."""

    def classify_exception(self, err: BaseException) -> Classification:
        """The engine's code table: the verdict on a driver error."""

    def commit_outcome(self, conn: Any, err: BaseException, in_txn: Callable[[Any], bool]) -> bool | None:
        """The commit rule: what an error from COMMIT means (False: rolled back; None: unknown)."""

    def is_write_refused(self, err: BaseException) -> bool:
        """True if ``err`` is the engine refusing a write inside a read-only transaction."""

    def health_components(self, store: Store) -> list[HealthComponent]:
        """Engine-specific components of ``store.health()`` (SQLite: the linked version's known bugs)."""


def backend_for(profile: Profile) -> Backend:
    """The backend for ``profile``: PostgreSQL when it has a ``url``, else SQLite."""
    if profile.url:
        from .postgresql import BACKEND as PG

        return PG  # type: ignore[return-value]  # its init_lock is the advisory lock, not the file lock
    from .sqlite import BACKEND

    return BACKEND
