"""What the shipped policy plugins need to know about the engine under a store: SQLite file or
PostgreSQL server, and for a server its key.

On SQLite a policy's state is keyed by the database file's real path. On PostgreSQL there is no
file: the thing that fails together is one database on one server, so the key is
``host:port/dbname`` — never the user, the password or any other connection option, so two
stores that reach the same database with different credentials share one key, and a key is
safe to log, to put in a health report or a metric label.

The key is read from the profile's ``url`` (the core's PostgreSQL backend connects with it),
else from the store's peewee database (``peewee.PostgresqlDatabase`` and
``playhouse.psycopg3_ext.Psycopg3Database`` both keep ``database`` and ``connect_params``).
Where a parameter is left out, libpq's own defaults apply, and so here: ``PGHOST`` /
``PGPORT`` / ``PGDATABASE``, then the Unix socket directory / 5432 / the user name.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee

__all__ = ["is_postgres", "server_key", "server_key_of", "url_server_key", "connect_kwargs", "state_dir", "state_path",
           "STATE_DIR_ENV"]

#: the environment variable naming the directory of the files a PostgreSQL store keeps locally
STATE_DIR_ENV = "CORESTORE_STATE_DIR"

logger = logging.getLogger(__name__)

_DEFAULT_SOCKET_DIR = "/var/run/postgresql"
_URL_SCHEMES = ("postgresql", "postgres")


def is_postgres(store: Any) -> bool:
    """True when ``store`` runs on PostgreSQL (its peewee database is a ``PostgresqlDatabase``)."""
    return isinstance(getattr(store, "database", None), peewee.PostgresqlDatabase)


def _conninfo(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with a ``dsn`` / ``conninfo`` string expanded (explicit keys win)."""
    out = {k: v for k, v in params.items() if v is not None}
    for name in ("dsn", "conninfo"):
        text = out.pop(name, None)
        if not text:
            continue
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:  # pragma: no cover - a PostgreSQL store always has psycopg
            continue
        for k, v in conninfo_to_dict(str(text)).items():
            out.setdefault(k, v)
    return out


def server_key_of(dbname: str | None, params: Mapping[str, Any]) -> str:
    """``host:port/dbname`` from connection parameters (libpq's defaults for the missing ones;
    no credentials)."""
    p = _conninfo(params)
    dbname = dbname or p.get("dbname") or os.environ.get("PGDATABASE") or p.get("user") or os.environ.get("PGUSER") or ""
    host = str(p.get("host") or p.get("hostaddr") or os.environ.get("PGHOST") or _DEFAULT_SOCKET_DIR)
    port = str(p.get("port") or os.environ.get("PGPORT") or 5432)
    if "," in host:  # a multi-host list: the key names the list (its order is the failover order)
        host = host.replace(",", "|")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{port}/{dbname}"


def server_key(store: Any) -> str:
    """The key of ``store``'s PostgreSQL database: ``host:port/dbname``, no credentials (from the
    profile's URL when it has one, else from the peewee database's parameters)."""
    url = getattr(getattr(store, "profile", None), "url", None)
    if url:
        key = url_server_key(url)
        if key is not None:
            return key
    db = store.database
    return server_key_of(getattr(db, "database", None), dict(getattr(db, "connect_params", None) or {}))


def url_server_key(url: str) -> str | None:
    """The key of a ``postgresql://`` URL (None when ``url`` is not one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in _URL_SCHEMES:
        return None
    params: dict[str, Any] = {}
    for item in parts.query.split("&"):
        if "=" in item:
            k, v = item.split("=", 1)
            params[unquote(k)] = unquote(v)
    host = parts.hostname or params.pop("host", None)
    try:
        port = parts.port
    except ValueError:
        port = None
    if host:
        params["host"] = host
    if port:
        params["port"] = port
    dbname = unquote(parts.path.lstrip("/")) or params.pop("dbname", None)
    return server_key_of(dbname, params)


def connect_kwargs(store: Any) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect`` that reach ``store``'s database (credentials
    included: never log them), for a plugin's own side connection."""
    url = getattr(getattr(store, "profile", None), "url", None)
    if url:
        return {"conninfo": url}
    db = store.database
    params = _conninfo(dict(getattr(db, "connect_params", None) or {}))
    params.pop("prefer_psycopg3", None)
    if getattr(db, "database", None):
        params["dbname"] = db.database
    return params


def state_dir() -> str:
    """The directory of the files a PostgreSQL store keeps on this machine (there is no database
    file to put them beside): ``$CORESTORE_STATE_DIR``, else ``$XDG_STATE_HOME/corestore``, else
    ``~/.local/state/corestore``. Not created here."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "corestore")


def state_path(store: Any, suffix: str) -> str:
    """``<state dir>/<host_port_dbname><suffix>``: a local file for ``store``'s PostgreSQL
    database, named by its key (no credentials), the same in every process of this machine."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", server_key(store)).strip("_") or "postgresql"
    return os.path.join(state_dir(), slug + suffix)
