"""The PostgreSQL server the tests use, and a private schema per test.

* The server: ``CORESTORE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
  When none answers, PostgreSQL tests are skipped with the reason (what was tried and the
  driver's error), except under ``CORESTORE_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it): then they
  fail.
* Isolation: :func:`private_schema` creates a schema of its own (``cs_<random>``) and yields the
  server URL with ``options=-csearch_path=<schema>``, so every connection of the test (and of any
  store opened from that URL) creates and reads its tables there; the schema is dropped with
  everything in it afterwards. The conftest fixture ``pg_url`` wraps it.

Other test modules (PostgreSQL doctor, policies, peewee's suite) import from here; nothing here
depends on pytest fixtures.
"""
from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["ENV_URL", "ENV_REQUIRE", "DEFAULT_URL", "server_url", "require_server", "private_schema", "admin_connect",
           "with_password"]

ENV_URL = "CORESTORE_TEST_POSTGRES_URL"
ENV_REQUIRE = "CORESTORE_REQUIRE_POSTGRES"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 3

_checked: tuple[bool, str] | None = None


def server_url() -> str:
    """The test server's URL (``$CORESTORE_TEST_POSTGRES_URL`` or the local default)."""
    return os.environ.get(ENV_URL) or DEFAULT_URL


def admin_connect(url: str | None = None, **kwargs: Any) -> Any:
    """A plain psycopg connection (autocommit) to the test server: the test's own side channel."""
    import psycopg

    return psycopg.connect(url or server_url(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)


def _probe() -> tuple[bool, str]:
    global _checked
    if _checked is None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            _checked = (False, "psycopg 3 is not installed (pip install 'corestore[postgresql]')")
            return _checked
        from corestore.redact import redact_url

        try:
            with admin_connect() as conn:
                conn.execute("SELECT 1").fetchone()
            _checked = (True, "")
        except Exception as err:  # noqa: BLE001 - any failure means "no server here"
            _checked = (False, f"no PostgreSQL server answers at {redact_url(server_url())} ({ENV_URL}): "
                               f"{type(err).__name__}: {str(err).strip()[:200]}")
    return _checked


def require_server() -> None:
    """Skip the calling test (fail it under ``CORESTORE_REQUIRE_POSTGRES=1``) when no server answers."""
    ok, why = _probe()
    if ok:
        return
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{ENV_REQUIRE}=1 and {why}", pytrace=False)
    pytest.skip(why)


def with_options(url: str, **params: str) -> str:
    """``url`` with query parameters added or replaced (e.g. ``options``)."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def with_password(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` as its credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(
        netloc=f"{urllib.parse.quote(user)}:{urllib.parse.quote(password, safe='')}@{host}"))


@contextlib.contextmanager
def private_schema(prefix: str = "cs") -> Iterator[str]:
    """A fresh schema on the test server for the ``with`` block: yields a URL whose connections
    use it (``search_path``); drops it (CASCADE) afterwards. Skips when no server answers."""
    require_server()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_options(server_url(), options=f"-csearch_path={schema}")
    finally:
        from corestore.store import open_stores

        for store in open_stores():  # a store left open would hold locks in the schema
            if store.profile.url and schema in store.profile.url:
                while not store.closed:
                    store.close()
        with admin_connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
