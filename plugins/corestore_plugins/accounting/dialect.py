"""The SQL the accounting writer speaks, per engine: SQLite or PostgreSQL.

Everything else in the writer (the ledger, batching, exactly-once, escalation, dead letters) is
the same on both engines; only these statements differ:

* **the bookkeeping table** ``_corestore_batches``: ``WITHOUT ROWID`` on SQLite; a plain table
  with a ``text`` primary key and a ``double precision`` time on PostgreSQL.
* **recording a batch id** in the batch's own transaction: on SQLite a plain ``INSERT`` whose
  primary-key violation proves an earlier attempt committed. On PostgreSQL a failed statement
  aborts the whole transaction (and logs an error on the server), so the id is recorded with
  ``INSERT ... ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id``: no row back means the id
  was already there (an earlier attempt committed), with the transaction still usable.
* **writing the rows**: on SQLite multi-row ``INSERT`` statements sized to the connection's
  ``SQLITE_LIMIT_VARIABLE_NUMBER`` (999 if it cannot be read), at most 1000 rows each. On
  PostgreSQL each group of rows (one table, one set of columns) goes through one ``COPY ...
  FROM STDIN`` on the same connection, in the same transaction: measured on this machine's
  PostgreSQL 15 (500-row batches of 5 columns, a transaction each, 2 cores shared with other
  work): COPY ~234k rows/s, ``executemany`` (psycopg 3 pipelines it) ~113k rows/s, multi-row
  ``INSERT`` of 100 or 500 rows ~64-74k rows/s. A batch that PostgreSQL refuses is isolated
  row by row with one ``INSERT`` and a savepoint each, as on SQLite. A multi-row ``INSERT`` stays
  the fallback for a row with no columns (``DEFAULT VALUES``) and is sized by PostgreSQL's limit
  of 65535 parameters per statement, and for a view (COPY cannot write to a view: the first batch
  for it is refused, isolated row by row, and later batches use ``INSERT``).
* **the schema**: ``sqlite_master`` and ``PRAGMA table_info`` on SQLite; ``information_schema``
  for the schemas on the ``search_path`` on PostgreSQL.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .batches import _CHECK, _CREATE, _PRUNE, _RECORD, BATCHES_TABLE
from .rows import MAX_ROWS_PER_STATEMENT, RowPlanner

__all__ = ["Dialect", "SQLITE", "POSTGRESQL", "dialect_for"]

logger = logging.getLogger(__name__)

_WRONG_OBJECT_TYPE = "42809"


class Dialect:
    """One engine's statements for the writer (see the module docs)."""

    def __init__(self, *, name: str, param: str, max_variables: int, max_rows: int, create: tuple[str, ...],
                 record: str, check: str, prune: str, tables: str, columns: str, copy: bool) -> None:
        self.name = name
        #: the driver's placeholder (``?`` or ``%s``)
        self.param = param
        #: parameters per statement, and rows per multi-row statement
        self.max_variables = max_variables
        self.max_rows = max_rows
        self.create = create
        self.record = record
        self.check = check
        self.prune = prune
        #: a query returning the names of the tables and views the writer can see
        self.tables = tables
        #: a query (one parameter: the table name) returning its column names in column 0
        self.columns = columns
        #: write row groups with COPY (PostgreSQL)
        self.copy = copy

    def planner(self, ts_column: str | None, *, preferred: int = 0) -> RowPlanner:
        """A row planner whose statements fit this engine (``preferred``: a statement size to
        use beside the full one, ``batch_size``)."""
        return RowPlanner(ts_column, param=self.param, max_variables=self.max_variables, max_rows=self.max_rows,
                          preferred=preferred)

    def limits(self, conn: Any) -> tuple[int, int | None] | None:
        """``(parameters per statement, statement length in bytes)`` this connection accepts
        (SQLite: ``SQLITE_LIMIT_VARIABLE_NUMBER`` and ``SQLITE_LIMIT_SQL_LENGTH``, read with
        ``Connection.getlimit``, Python 3.11+); None to keep the dialect's fixed limits
        (PostgreSQL, or a driver that cannot tell: 999 parameters then)."""
        if self.copy:
            return None
        getlimit = getattr(conn, "getlimit", None)
        if getlimit is None:
            return None
        import sqlite3

        try:
            return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)), int(getlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH))
        except Exception as err:  # noqa: BLE001 - a wrapper that refuses: keep the safe fixed limits
            logger.debug("accounting: reading the connection's limits failed (%s); 999 parameters per statement", err)
            return None

    def record_batch(self, conn: Any, unit_id: str, now: float) -> bool:
        """Record ``unit_id`` in the bookkeeping table; False when it is already there (an
        earlier attempt of this batch committed). On SQLite the duplicate is a primary-key error
        that the caller turns into False (``duplicate(err)``)."""
        cur = conn.execute(self.record, (unit_id, now))
        if self.copy:  # PostgreSQL: ON CONFLICT DO NOTHING RETURNING: no row back = already there
            return cur.fetchone() is not None
        return True

    def column_names(self, conn: Any, table: str) -> list[str]:
        """``table``'s columns."""
        if self.copy:
            return [str(r[0]) for r in conn.execute(self.columns, (table,)).fetchall()]
        from .rows import quote

        return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()]

    def write(self, conn: Any, groups: Any, execute: Callable[[str, Any], Any], no_copy: set[str]) -> None:
        """Write a planned batch's groups (``Planned.groups``): COPY per statement's rows on
        PostgreSQL, the statements themselves on SQLite. ``no_copy``: targets COPY refused
        (a view: 42809), written with multi-row INSERTs from then on."""
        if not self.copy:
            for statements, _ in groups.values():
                for sql, args in statements:
                    execute(sql, args)
            return
        for plan, (statements, _) in groups.items():
            copy_sql = plan.copy_sql
            if copy_sql is None or plan.table in no_copy:  # no columns (DEFAULT VALUES), or a view
                for sql, args in statements:
                    execute(sql, args)
                continue
            width = plan.width
            try:
                with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    write_row = copy.write_row
                    for _, flat in statements:
                        for k in range(0, len(flat), width):
                            write_row(flat[k:k + width])
            except Exception as err:
                if getattr(err, "sqlstate", None) == _WRONG_OBJECT_TYPE:  # "cannot copy to view"
                    logger.info("accounting: COPY refused for %s (a view?); INSERT from now on", plan.table)
                    no_copy.add(plan.table)
                raise


SQLITE = Dialect(
    name="sqlite", param="?", max_variables=999, max_rows=MAX_ROWS_PER_STATEMENT,
    create=_CREATE, record=_RECORD, check=_CHECK, prune=_PRUNE,
    tables="SELECT name FROM sqlite_master WHERE type IN ('table', 'view')",
    columns="",
    copy=False,
)

POSTGRESQL = Dialect(
    name="postgresql", param="%s", max_variables=65535, max_rows=1000,
    # the advisory lock (held to the end of the transaction) serialises two writers creating the
    # table at once: without it the loser fails on a catalog unique index, a CONSTRAINT error
    create=("SELECT pg_advisory_xact_lock(hashtext('corestore._corestore_batches'))",
            f"CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} (batch_id text PRIMARY KEY, committed_at double precision)"),
    record=(f"INSERT INTO {BATCHES_TABLE} (batch_id, committed_at) VALUES (%s, %s) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id"),
    check=f"SELECT 1 FROM {BATCHES_TABLE} WHERE batch_id = %s",
    prune=f"DELETE FROM {BATCHES_TABLE} WHERE batch_id < %s",
    tables=("SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = ANY (current_schemas(false))"),
    columns=("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
             "AND table_schema = ANY (current_schemas(false)) ORDER BY ordinal_position"),
    copy=True,
)


def dialect_for(store: Any) -> Dialect:
    """The dialect of ``store``'s engine."""
    from .._server import is_postgres

    return POSTGRESQL if is_postgres(store) else SQLITE
