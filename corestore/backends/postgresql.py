"""The PostgreSQL backend: everything the store does that is specific to PostgreSQL and psycopg 3.

* **Connecting**: :class:`PolicyPostgresqlDatabase`, the store's peewee database on peewee's
  PostgreSQL support with psycopg 3 (peewee 4.x: ``PostgresqlDatabase`` with ``prefer_psycopg3``;
  peewee 3.17: ``playhouse.psycopg3_ext.Psycopg3Database``), one connection per thread as on
  SQLite, in autocommit mode (the store issues BEGIN/COMMIT itself). The database's name (what
  every message shows) is the redacted URL; the secret URL goes to the driver only.
* **Preparing a connection**: the profile's ``server_settings`` (``set_config``), and
  ``default_transaction_read_only`` for a read-only profile.
* **Transactions**: a write is ``BEGIN`` (isolation: the server's or ``server_settings``'
  ``default_transaction_isolation``); a read is ``BEGIN ISOLATION LEVEL REPEATABLE READ READ
  ONLY`` (one consistent snapshot, and the server refuses writes: 25006, the caller's error).
* **The commit rule** (:func:`commit_outcome`): an error the server sent in reply to COMMIT means
  the transaction rolled back (``committed=False``); a lost connection, or ``08007``, leaves the
  outcome unknown (``committed=None``).
* **The SQLSTATE table** (:mod:`corestore.classify_pg`), the advisory init lock
  (:mod:`corestore.pg_initlock`).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import peewee

from ..classify_pg import LOST_CONNECTION_STATES, classify_pg_exception, sqlstate_of
from ..database import PolicyMixin, build_database
from ..errors import Classification, ConfigError
from ..pg_initlock import AdvisoryInitLock

if TYPE_CHECKING:  # pragma: no cover
    from ..health import HealthComponent
    from ..store import Store
    from . import StoreLink

__all__ = [
    "BACKEND",
    "PostgresqlBackend",
    "database_class",
    "prepare_connection",
    "in_transaction",
    "is_driver_error",
    "commit_outcome",
    "make_database",
    "BEGIN_WRITE",
    "BEGIN_READ",
    "DEFAULT_CONNECT_TIMEOUT_S",
]

logger = logging.getLogger(__name__)

#: libpq's ``connect_timeout`` when the URL sets none: opening a connection is bounded.
DEFAULT_CONNECT_TIMEOUT_S = 10
#: BEGIN of a write transaction, per lock type (SQLite's lock types all mean "a write" here).
BEGIN_WRITE: Mapping[str | None, str] = {None: "BEGIN", "": "BEGIN", "IMMEDIATE": "BEGIN", "DEFERRED": "BEGIN",
                                         "EXCLUSIVE": "BEGIN"}
#: BEGIN of ``store.read()``: a consistent snapshot the server keeps read-only.
BEGIN_READ: Mapping[str | None, str] = {k: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" for k in BEGIN_WRITE}

_INTRANS = 2  # psycopg.pq.TransactionStatus.INTRANS
_INERROR = 3  # psycopg.pq.TransactionStatus.INERROR


def _require_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as err:  # pragma: no cover - the extra is not installed
        raise ConfigError("a postgresql:// store needs psycopg 3: pip install 'corestore[postgresql]'") from err
    return psycopg


#: peewee 4.x chooses psycopg 3 in ``PostgresqlDatabase`` itself; 3.17 has a class of its own
_PEEWEE_4 = int(str(getattr(peewee, "__version__", "3")).split(".")[0]) >= 4


def _peewee_base() -> type:
    """peewee's PostgreSQL database class for psycopg 3 in the installed peewee."""
    if _PEEWEE_4:
        # the Ext class (a PostgresqlDatabase): named (server-side) cursors for
        # playhouse.postgres_ext.ServerSide queries work through a store as they do plainly
        from playhouse.postgres_ext import PostgresqlExtDatabase

        ext: type = PostgresqlExtDatabase
        return ext
    from playhouse.psycopg3_ext import Psycopg3Database

    base: type = Psycopg3Database
    return base


class _PsycopgConnect:
    """Opens the driver connection from the profile's (secret) URL, in autocommit mode, with a
    bounded ``connect_timeout``; peewee's own ``_connect`` would use the database name."""

    def _connect(self) -> Any:
        psycopg = _require_psycopg()
        store: Store = self.store  # type: ignore[attr-defined]  # PolicyMixin supplies it
        url = store.profile.url
        assert url is not None
        params: dict[str, Any] = {"autocommit": True}
        given = psycopg.conninfo.conninfo_to_dict(url)
        if "connect_timeout" not in given:
            params["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
        if "application_name" not in given:
            params["application_name"] = "corestore"
        return psycopg.connect(url, **params)


_classes: dict[str, type] = {}


def database_class() -> type:
    """The policy database class (built on first use, for the installed peewee)."""
    cls = _classes.get("pg")
    if cls is None:
        cls = _classes["pg"] = type("PolicyPostgresqlDatabase", (PolicyMixin, _PsycopgConnect, _peewee_base()), {
            "__doc__": "The store's database for PostgreSQL (psycopg 3).",
            "__module__": __name__,
        })
    return cls


def __getattr__(name: str) -> Any:
    """``PolicyPostgresqlDatabase``: the class of :func:`database_class` (built on first use)."""
    if name == "PolicyPostgresqlDatabase":
        return database_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_database(store: Store, link: StoreLink) -> tuple[Any, Any]:
    """The policy database for ``store.profile`` (no anchor: nothing to keep alive)."""
    _require_psycopg()
    kwargs: dict[str, Any] = {}
    if _PEEWEE_4:
        kwargs["prefer_psycopg3"] = True
    return build_database(database_class(), store, link, store.path, **kwargs), None


def prepare_connection(store: Store, conn: Any) -> None:
    """The profile's ``server_settings`` (session-wide ``set_config``), then, for a read-only
    profile, ``default_transaction_read_only = on``."""
    for name, value in store.profile.server_settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
    if store.profile.read_only:
        conn.execute("SET default_transaction_read_only = on")


def in_transaction(conn: Any) -> bool:
    """Inside a transaction (also a failed one, which still needs its ROLLBACK)."""
    status = conn.pgconn.transaction_status
    return status == _INTRANS or status == _INERROR  # type: ignore[no-any-return]


def is_driver_error(err: BaseException) -> bool:
    """True for a psycopg exception (without importing psycopg)."""
    module = sys.modules.get("psycopg")
    return module is not None and isinstance(err, module.Error)


def _connection_lost(conn: Any) -> bool:
    try:
        return bool(conn.closed) or conn.pgconn.status != 0  # psycopg.pq.ConnStatus.OK
    except Exception:  # noqa: BLE001 - a connection we cannot even inspect is gone
        return True


def commit_outcome(conn: Any, err: BaseException, in_txn: Callable[[Any], bool]) -> bool | None:
    """The commit rule: ``False`` (rolled back, safe to retry as a whole) when the server answered
    COMMIT with an error and the connection survived; ``None`` (unknown) when the connection was
    lost (no SQLSTATE, class 08, a SQLSTATE that ends the session) or the server said ``08007``."""
    state = sqlstate_of(err)
    if state is None or state.startswith("08") or state in LOST_CONNECTION_STATES:
        return None
    if _connection_lost(conn):
        return None
    return False


class PostgresqlBackend:
    """The :class:`~corestore.backends.Backend` for PostgreSQL (driver ``psycopg``)."""

    name = "postgresql"
    begin_write = BEGIN_WRITE
    begin_read = BEGIN_READ
    query_only_sql: tuple[str, str] | None = None  # read-only-ness is the read transaction's own
    probe_sql = "SELECT 1"
    #: store APIs that have no PostgreSQL meaning, and what to use instead
    refusals: Mapping[str, str] = {
        "checkpoint": "checkpoint() is SQLite's WAL checkpoint; the PostgreSQL server checkpoints by itself "
                      "(CHECKPOINT needs superuser rights and is an administrator's decision)",
        "backup": "backup() copies a SQLite file; back a PostgreSQL database up with pg_dump or pg_basebackup "
                  "(and WAL archiving) on the server side",
    }

    def make_database(self, store: Store, link: StoreLink) -> tuple[Any, Any]:
        return make_database(store, link)

    def prepare_connection(self, store: Store, conn: Any) -> None:
        prepare_connection(store, conn)

    def in_transaction_test(self, driver: str) -> Callable[[Any], bool]:
        return in_transaction

    def is_driver_error(self, err: BaseException) -> bool:
        return is_driver_error(err)

    def read_header(self, path: str) -> Any:
        return None  # a server, not a file

    def init_lock(self, target: str) -> AdvisoryInitLock:
        return AdvisoryInitLock.for_url(target)

    def classify_exception(self, err: BaseException) -> Classification:
        return classify_pg_exception(err)

    def commit_outcome(self, conn: Any, err: BaseException, in_txn: Callable[[Any], bool]) -> bool | None:
        return commit_outcome(conn, err, in_txn)

    def is_write_refused(self, err: BaseException) -> bool:
        """The server refused a write in a read-only transaction (25006)."""
        return sqlstate_of(err) == "25006"

    def health_components(self, store: Store) -> list[HealthComponent]:
        return []


#: The PostgreSQL backend.
BACKEND = PostgresqlBackend()
