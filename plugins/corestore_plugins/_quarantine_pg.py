"""quarantine on PostgreSQL: the marker in the database, on a connection of the plugin's own.

The marker table and its format are the core's (:mod:`corestore.quarantine_table`, where the
choice of a table over a local file is argued). This module holds the plugin's side of it: one
autocommit connection per store, opened when first needed with a bounded connect and
``statement_timeout``, reopened after a failure, closed with the store; never the store's own
connections (a marker must be readable and writable whatever state the store's transaction is
in, and its I/O must not count as the store's operations).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from corestore.quarantine_table import QUARANTINE_TABLE, read_table_marker, write_table_marker

from ._server import connect_kwargs, server_key

__all__ = ["ServerMarker", "pg_evidence"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5
_STATEMENT_TIMEOUT_MS = 5000
#: after a failed look, the next one waits this long: a caller's write never stalls on an
#: unreachable server's connect timeout more than once per interval
_RETRY_AFTER_FAILURE_S = 10.0


class ServerMarker:
    """The quarantine marker of one PostgreSQL store's database."""

    def __init__(self, store: Any) -> None:
        self._kwargs = connect_kwargs(store)
        self.key = server_key(store)
        self.where = f"table {QUARANTINE_TABLE} in {self.key}"
        self._lock = threading.Lock()
        self._conn: Any = None
        self._failed_at: float | None = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg

            kwargs = {"application_name": "corestore-quarantine", **self._kwargs}
            # statement_timeout by set_config, not options=: that keyword would replace the URL's
            # own options (its search_path names the schema where the marker table is)
            conn = psycopg.connect(**kwargs, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)
            try:
                conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{_STATEMENT_TIMEOUT_MS}ms",))
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection is dropped anyway
                logger.debug("quarantine: closing the marker connection failed", exc_info=True)

    def read(self) -> tuple[bool, dict[str, Any] | None]:
        """``(known, record)``: known is False when the server could not be asked (keep the
        current state then)."""
        with self._lock:
            if self._failed_at is not None and time.monotonic() - self._failed_at < _RETRY_AFTER_FAILURE_S:
                return False, None
            try:
                record = read_table_marker(self._connection())
            except Exception as err:  # noqa: BLE001 - unknown, not "no marker"
                logger.debug("quarantine: %s: reading the marker failed: %s", self.key, type(err).__name__)
                self._drop()
                self._failed_at = time.monotonic()
                return False, None
            self._failed_at = None
            return True, record

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write the marker (the first one wins); return the marker in force. Raises on failure."""
        with self._lock:
            try:
                return write_table_marker(self._connection(), record)
            except Exception:
                self._drop()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()


def pg_evidence(error: BaseException, key: str) -> dict[str, Any]:
    """What a PostgreSQL marker records about the fault: the SQLSTATE and the server's
    diagnostic fields (the relation, the message), found on the driver error in the chain."""
    evidence: dict[str, Any] = {"server": key}
    seen: set[int] = set()
    err: BaseException | None = error
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        diag = getattr(err, "diag", None)
        if getattr(err, "sqlstate", None) and diag is not None:
            evidence["sqlstate"] = err.sqlstate  # type: ignore[attr-defined]
            evidence["diag"] = {name: getattr(diag, name, None) for name in (
                "message_primary", "message_detail", "message_hint", "schema_name", "table_name", "context")
                if getattr(diag, name, None)}
            break
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__
    return evidence
