"""Turning submitted rows into INSERT statements, without touching the database.

A row is a mapping submitted for a table (a name) or a peewee model. Rows are grouped by table
and by the set of keys they carry; each group becomes multi-row ``INSERT ... VALUES (...),(...)``
statements (the fastest way through either driver: about twice ``executemany``) sized to the
connection's parameter limit (:meth:`RowPlanner.set_limits`; :data:`MAX_VARIABLES` until it is
known) in a few fixed sizes (:func:`chunk_sizes`), or one statement per row when a batch is being
isolated.

For a model, a row gets what ``Model.insert_many`` would give it: keys may be field names,
column names or ``Field`` objects; fields the row leaves out get their Python-side ``default``
(callables are called); every value goes through the field's ``db_value``. Unlike
``insert_many``, rows with different keys do not have to agree (they are grouped apart), and a
field with no default that a row leaves out is left to the database (its SQL default, NULL, or
a NOT NULL error for that row alone).

``ts_column``: when the row does not set it, the column is filled with the submit time (unix
seconds; a model's ``DateTimeField`` gets the local ``datetime``, as ``datetime.now`` would) —
for a model only if it has that field, for a named table only if the table has that column.

Conversion errors (an unknown field, a value ``db_value`` refuses) are per row: the row is
dead-lettered with the error and the others go on.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import peewee

from .converters import compile_converters
from .segments import Batch, Item, Part, Shape

__all__ = ["RowPlanner", "Planned", "Plan",
           "MAX_VARIABLES", "MAX_ROWS_PER_STATEMENT", "chunk_sizes", "table_label", "quote"]

#: Parameters per statement when the connection cannot tell its limit: SQLite's historical
#: minimum of SQLITE_MAX_VARIABLE_NUMBER (999), which works with any build. The writer asks the
#: connection for its real limit (``SQLITE_LIMIT_VARIABLE_NUMBER``: 32766 by default since SQLite
#: 3.32) and sizes the statements to it (:meth:`RowPlanner.set_limits`).
MAX_VARIABLES = 999
#: Rows per multi-row statement, at most. Every distinct statement the driver prepares stays in
#: its statement cache (128 per connection), about 0.7 KB per row of a 5-column statement, and
#: preparing one costs about as much as executing it: so statements come in few sizes (a full
#: statement, then powers of two, see :func:`chunk_sizes`) and are at most this long.
MAX_ROWS_PER_STATEMENT = 1000
_MAX_ROWS_PER_STATEMENT = MAX_ROWS_PER_STATEMENT
#: Below this many rows a statement has its exact size (small statements are cheap to cache).
_EXACT_BELOW = 64
_CACHE_LIMIT = 4096


def chunk_sizes(n: int, step: int, preferred: int = 0) -> list[int]:
    """How ``n`` rows are split into statements of at most ``step`` rows: full statements, one of
    ``preferred`` rows (``batch_size``: a batch of exactly that many is one statement) if the
    rest is that long, then powers of two down to 64 rows and one statement for the last < 64.
    So a plan prepares at most a dozen distinct statements however its batches vary (each is
    prepared once and reused from the driver's statement cache), at the cost of a few more
    statements for an odd-sized batch."""
    sizes = [step] * (n // step)
    rest = n - step * len(sizes)
    if 0 < preferred < step and rest >= preferred:
        sizes.append(preferred)
        rest -= preferred
    while rest >= _EXACT_BELOW:
        top = 1 << (rest.bit_length() - 1)
        sizes.append(top)
        rest -= top
    if rest:
        sizes.append(rest)
    return sizes


def quote(name: str) -> str:
    """An SQL identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def table_label(table: Any) -> str:
    """The table's name for logs and dead letters."""
    if isinstance(table, str):
        return table
    meta = getattr(table, "_meta", None)
    table_name: str | None = getattr(meta, "table_name", None)  # a peewee model's
    if table_name:
        return table_name
    class_name: str = getattr(table, "__name__", repr(table))
    return class_name


class Plan:
    """How to insert one (table, set of keys): the SQL and the row converter."""

    __slots__ = ("table", "head", "one", "chunk", "preferred", "convert", "fill", "add_ts", "_sql", "width", "copy_sql")

    def __init__(self, table: str, target: str, columns: list[str],
                 convert: Callable[[dict[str, Any], float], tuple[Any, ...]] | None, *, add_ts: bool = False,
                 fill: Callable[[Sequence[dict[str, Any]], Sequence[float], list[Any]], None] | None = None,
                 param: str = "?",
                 max_variables: int = MAX_VARIABLES, max_rows: int = _MAX_ROWS_PER_STATEMENT,
                 max_sql_length: int | None = None, preferred: int = 0) -> None:
        self.table = table
        #: a statement size used beside the full one and powers of two (``batch_size``)
        self.preferred = preferred
        #: None for a named table: the row's values in order (then the submit time if add_ts)
        self.convert = convert
        #: a model's converter over a whole chunk, appending to a flat parameter list
        self.fill = fill
        self.add_ts = add_ts
        self._sql: dict[int, str] = {}
        #: values per row, and (PostgreSQL) the COPY statement for these columns
        self.width = len(columns)
        self.copy_sql: str | None = None
        # psycopg reads "%" in a statement with parameters as a placeholder: escape it in names
        percent = "%%" if param == "%s" else "%"
        if columns:
            names = ", ".join(quote(c) for c in columns)
            self.head = f"INSERT INTO {target} ({names}) VALUES ".replace("%", percent)
            self.one = "(" + ", ".join([param] * len(columns)) + ")"
            self.chunk = max(1, min(max_rows, max_variables // len(columns)))
            if max_sql_length is not None:  # SQLITE_LIMIT_SQL_LENGTH: the statement's text
                self.chunk = max(1, min(self.chunk, (max_sql_length - len(self.head)) // (len(self.one) + 2)))
            if param == "%s":
                self.copy_sql = f"COPY {target} ({names}) FROM STDIN"
        else:  # an empty row: every column takes its SQL default
            self.head = f"INSERT INTO {target} ".replace("%", percent)
            self.one = "DEFAULT VALUES"
            self.chunk = 1

    def sql(self, rows: int) -> str:
        """The statement inserting ``rows`` rows."""
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = self.head + ", ".join([self.one] * rows)
        return sql

    def statements(self, items: Batch) -> tuple[list[tuple[str, list[Any]]], Batch, list[tuple[Item, BaseException]]]:
        """Multi-row statements for ``items``: ``([(sql, flat parameters)], the rows in them,
        [(item, error)] for the rows that failed to convert)``. Parameters are built flat, chunk
        by chunk (no per-row tuple to flatten again)."""
        convert = self.convert
        out: list[tuple[str, list[Any]]] = []
        bounds = self._bounds(len(items))
        rows, times = items.rows, items.times
        if convert is None:  # a named table: the row's values in key order (then the submit time)
            if self.add_ts:
                for j, k in bounds:
                    flat: list[Any] = []
                    extend, append = flat.extend, flat.append
                    for row, ts in zip(rows[j:k], times[j:k], strict=True):
                        extend(row.values())
                        append(ts)
                    out.append((self.sql(k - j), flat))
            else:  # the values of every row, flattened in C
                values, chain = dict.values, itertools.chain.from_iterable
                for j, k in bounds:
                    out.append((self.sql(k - j), list(chain(map(values, rows[j:k])))))
            return out, items, []
        fill = self.fill
        assert fill is not None
        bad: list[tuple[Item, BaseException]] = []
        for j, k in bounds:
            flat = []
            try:
                fill(rows[j:k], times[j:k], flat)  # the whole chunk in one generated loop
            except Exception:  # noqa: BLE001 - find the rows at fault, one by one
                flat = []
                kept = 0
                for i in range(j, k):
                    item = items[i]
                    try:
                        flat.extend(convert(item[1], item[2]))
                    except Exception as err:  # noqa: BLE001 - db_value refused a value: this row only
                        bad.append((item, err))
                    else:
                        kept += 1
                if kept:
                    out.append((self.sql(kept), flat))
                continue
            out.append((self.sql(k - j), flat))
        if not bad:
            return out, items, bad
        refused = {item[3] for item, _ in bad}
        return out, Batch.of(item for item in items if item[3] not in refused), bad

    def _bounds(self, n: int) -> list[tuple[int, int]]:
        """``[(first, end)]`` row ranges of the statements for ``n`` rows (:func:`chunk_sizes`)."""
        step = self.chunk
        if n < _EXACT_BELOW and n <= step:
            return [(0, n)]
        bounds = []
        j = 0
        for size in chunk_sizes(n, step, self.preferred):
            bounds.append((j, j + size))
            j += size
        return bounds

    def flat_statements(self, values: list[Any], times: Sequence[float], width: int) -> list[tuple[str, list[Any]]]:
        """Multi-row statements for rows kept flat (``accounting.segments``): ``values`` holds
        ``width`` values per row in this plan's column order, ``times`` their submit times
        (the last column when the plan adds ``ts_column``). Each statement's parameters are a
        slice of ``values``: no Python per row (with ``ts_column``, the times are woven in by
        ``zip``, in C)."""
        out: list[tuple[str, list[Any]]] = []
        n = len(times)
        chain = itertools.chain.from_iterable
        for j, k in self._bounds(n):
            if self.add_ts:
                it = iter(values[j * width:k * width])
                params = list(chain(zip(*([it] * width), times[j:k], strict=True)))
            elif j == 0 and k == n:
                params = values
            else:
                params = values[j * width:k * width]
            out.append((self.sql(k - j), params))
        return out

    def singles(self, items: Batch) -> tuple[list[tuple[str, tuple[Any, ...]]], Batch, list[tuple[Item, BaseException]]]:
        """One statement per row (a batch being isolated), same shape as :meth:`statements`."""
        sql = self.sql(1)
        convert = self.convert
        if convert is None:
            if self.add_ts:
                return [(sql, (*row.values(), ts)) for row, ts in zip(items.rows, items.times, strict=True)], items, []
            return [(sql, tuple(row.values())) for row in items.rows], items, []
        out: list[tuple[str, tuple[Any, ...]]] = []
        good: list[Item] = []
        bad: list[tuple[Item, BaseException]] = []
        for item in items:
            try:
                out.append((sql, convert(item[1], item[2])))
            except Exception as err:  # noqa: BLE001 - this row only
                bad.append((item, err))
            else:
                good.append(item)
        return out, Batch.of(good), bad


class Planned:
    """A batch, planned: per plan, its statements and the items they write; and the rows that
    failed to convert."""

    __slots__ = ("groups", "bad")

    def __init__(self) -> None:
        #: plan -> ([(sql, parameters)], the rows they write); one statement per row when isolating
        self.groups: dict[Plan, tuple[list[tuple[str, Any]], Batch]] = {}
        #: (item, the error)
        self.bad: list[tuple[Item, BaseException]] = []


class RowPlanner:
    """Plans batches; caches one :class:`Plan` per (table, keys) and named tables' columns."""

    def __init__(self, ts_column: str | None, *, param: str = "?", max_variables: int = MAX_VARIABLES,
                 max_rows: int = _MAX_ROWS_PER_STATEMENT, preferred: int = 0) -> None:
        """``param`` is the driver's placeholder; ``max_variables`` / ``max_rows`` bound one
        multi-row statement until :meth:`set_limits` sizes them to a connection (see
        ``accounting.dialect``); ``preferred`` is a statement size used beside the full one
        (``batch_size``: a batch of exactly that many rows is one statement)."""
        self.ts_column = ts_column
        self._param, self._max_variables, self._max_rows = param, max_variables, max_rows
        self._max_sql_length: int | None = None
        self._preferred = preferred
        self._plans: dict[tuple[Any, tuple[Any, ...]], Plan | BaseException] = {}
        self._columns: dict[str, frozenset[str]] = {}

    def set_limits(self, max_variables: int, max_sql_length: int | None = None) -> None:
        """Size the statements to a connection's limits (parameters per statement, and the
        statement's length in bytes); cached plans are rebuilt when they change."""
        max_variables = max(1, int(max_variables))
        if (max_variables, max_sql_length) != (self._max_variables, self._max_sql_length):
            self._max_variables, self._max_sql_length = max_variables, max_sql_length
            self._plans.clear()

    @property
    def max_variables(self) -> int:
        """Parameters per statement the plans are sized to."""
        return self._max_variables

    def forget(self) -> None:
        """Drop cached plans and columns (after a caller error: the schema may have changed)."""
        self._plans.clear()
        self._columns.clear()

    # -- planning ----------------------------------------------------------------------------
    def plan(self, batch: Batch | Iterable[Item], *, isolate: bool = False,
             columns_of: Callable[[str], Iterable[str]] | None = None) -> Planned:
        """Group ``batch`` by (table, keys) and build its statements: multi-row, or one per row
        when ``isolate``. ``columns_of(table)`` reads a named table's columns (only needed, once
        per table, when ``ts_column`` is set)."""
        if not isinstance(batch, Batch):
            batch = Batch.of(batch)
        plans = self._plans
        if len(plans) > _CACHE_LIMIT:
            plans.clear()
        flat = None if isolate else batch.flat_parts()
        if flat is not None:
            planned = self._plan_flat(batch, flat, columns_of)
            if planned is not None:
                return planned
        out = Planned()
        buckets: dict[tuple[Any, tuple[Any, ...]], Batch] = {}
        tables, rows = batch.tables, batch.rows
        n = len(rows)
        if n:
            # one table and one set of keys in one order (the usual mixed batch), checked in C:
            # then the batch is its own single group, with no list per group to build
            table = tables[0]
            keys_of = list(map(tuple, rows))
            keys = keys_of[0]
            if keys_of.count(keys) == n and tables.count(table) == n:  # (compared in C)
                buckets[(table, keys)] = batch
            else:
                at: dict[tuple[Any, tuple[Any, ...]], list[int]] = {}
                for i, key in enumerate(zip(tables, keys_of, strict=True)):
                    found = at.get(key)
                    if found is None:
                        found = at[key] = []
                    found.append(i)
                for key, indices in at.items():
                    buckets[key] = batch.pick(indices)
        for key, items in buckets.items():
            plan = plans.get(key)
            if plan is None:
                try:
                    plan = self._build(key[0], key[1], columns_of)
                except Exception as err:  # noqa: BLE001 - a bad row must not stop the batch
                    plan = err
                plans[key] = plan
            if isinstance(plan, BaseException):
                out.bad.extend((item, plan) for item in items)
                continue
            stmts, good, bad = plan.singles(items) if isolate else plan.statements(items)
            if bad:
                out.bad.extend(bad)
            if stmts:
                out.groups[plan] = (stmts, good)
        return out

    def _plan_flat(self, batch: Batch, parts: list[Part], columns_of: Callable[[str], Iterable[str]] | None
                   ) -> Planned | None:
        """Plan a batch of flat parts (``accounting.segments``): per shape, statements sliced
        from the values as they were queued. None if a shape has no plan (its rows go the row
        path, which reports them one by one)."""
        by_shape: dict[Shape, list[Part]] = {}
        for part in parts:
            assert part.shape is not None
            found = by_shape.get(part.shape)
            if found is None:
                by_shape[part.shape] = [part]
            else:
                found.append(part)
        out = Planned()
        plans = self._plans
        for shape, group in by_shape.items():
            key = (shape.table, shape.keys)
            plan = plans.get(key)
            if plan is None:
                try:
                    plan = self._build(shape.table, shape.keys, columns_of)
                except Exception as err:  # noqa: BLE001 - reported per row by the row path
                    plan = err
                plans[key] = plan
            if isinstance(plan, BaseException):
                return None
            if len(group) == 1:
                values, times = group[0].values, group[0].times
            else:
                values = list(itertools.chain.from_iterable(p.values for p in group))
                times = list(itertools.chain.from_iterable(p.times for p in group))
            good = batch if len(by_shape) == 1 else Batch.cut(group)
            out.groups[plan] = (plan.flat_statements(values, times, shape.width), good)
        return out

    def _build(self, table: Any, keys: tuple[Any, ...], columns_of: Callable[[str], Iterable[str]] | None) -> Plan:
        if isinstance(table, str):
            return self._build_named(table, keys, columns_of)
        return self._build_model(table, keys)

    def _build_named(self, table: str, keys: tuple[Any, ...], columns_of: Callable[[str], Iterable[str]] | None) -> Plan:
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"row keys for table {table!r} must be column names (str), got {type(k).__name__}")
        ts = self.ts_column
        if ts is not None and ts not in keys and table not in self._columns and columns_of is not None:
            self._columns[table] = frozenset(columns_of(table))
        add_ts = ts is not None and ts not in keys and ts in self._columns.get(table, ())
        columns = list(keys) + ([ts] if add_ts else [])
        return Plan(table, quote(table), columns, None, add_ts=add_ts, param=self._param,
                    max_variables=self._max_variables, max_rows=self._max_rows, max_sql_length=self._max_sql_length,
                    preferred=self._preferred)

    def _build_model(self, model: Any, keys: tuple[Any, ...]) -> Plan:
        meta = model._meta
        given: list[tuple[Any, peewee.Field]] = []
        seen: set[peewee.Field] = set()
        for k in keys:
            if isinstance(k, peewee.Field):
                field = meta.fields.get(k.name)
                if field is None or (k.model is not model and not issubclass(model, k.model)):
                    raise ValueError(f"{model.__name__}: field {k!r} belongs to another model")
            else:
                field = meta.fields.get(k) or meta.columns.get(k)
                if field is None:
                    raise ValueError(f"{model.__name__} has no field or column {k!r}")
            if field in seen:
                raise ValueError(f"{model.__name__}: field {field.name!r} given twice")
            seen.add(field)
            given.append((k, field))
        ts_field = None
        if self.ts_column is not None:
            ts_field = meta.fields.get(self.ts_column) or meta.columns.get(self.ts_column)
            if ts_field in seen:
                ts_field = None
        defaults = [f for f in meta.sorted_fields if f not in seen and f is not ts_field and f.default is not None]
        columns = [f.column_name for _, f in given] + [f.column_name for f in defaults]
        if ts_field is not None:
            columns.append(ts_field.column_name)
        convert, fill = compile_converters(given, defaults, ts_field)
        target = quote(meta.table_name)
        if meta.schema:
            target = f"{quote(meta.schema)}.{target}"
        return Plan(meta.table_name, target, columns, convert, fill=fill, param=self._param,
                    max_variables=self._max_variables, max_rows=self._max_rows, max_sql_length=self._max_sql_length,
                    preferred=self._preferred)
