"""A peewee model's row converters for accounting: what ``Model.insert_many`` would do to a row
(the fields' Python-side defaults, ``db_value``), compiled once per model and set of keys
(moved out of :mod:`corestore_plugins.accounting.rows`, which builds a model's plan with them).

When: the writer plans a batch with a model's rows. Why compiled: a generated loop per model
and set of keys, with ``db_value`` skipped for values it would return unchanged, costs a
fraction of calling every field's ``db_value`` per row.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from typing import Any

import peewee

__all__ = ["compile_converters"]

_IDENTITY = object()


def _fast_type(field: peewee.Field) -> Any:
    """The Python type whose values ``field.db_value`` returns unchanged (``_IDENTITY`` when it
    returns every value unchanged), or None when it must always be called. Only for peewee's
    own ``db_value``/``adapt`` pairs; any override is always called."""
    cls = type(field)
    if cls.db_value is not peewee.Field.db_value:
        return None
    adapt = cls.adapt
    if adapt is peewee.Field.adapt:
        return _IDENTITY
    if adapt is peewee.IntegerField.adapt:
        return int
    if adapt is peewee.FloatField.adapt:
        return float
    if adapt is peewee._StringField.adapt:
        return str
    if adapt is peewee.BooleanField.adapt:
        return bool
    return None


def compile_converters(given: list[tuple[Any, peewee.Field]], defaults: list[peewee.Field], ts_field: peewee.Field | None
             ) -> tuple[Callable[[dict[str, Any], float], tuple[Any, ...]],
                        Callable[[Sequence[dict[str, Any]], Sequence[float], list[Any]], None]]:
    """Build ``convert(row, ts) -> tuple`` and ``fill(rows, times, flat)`` (the same conversion
    over a chunk, appending to ``flat``), unrolled for one model and set of keys.

    The generated source names only local slots (``k0``, ``c0`` ...); keys, converters and
    defaults are passed in a namespace, never written into the source. A value whose type the
    field's ``db_value`` would return unchanged skips the call; everything else goes through
    ``db_value``, as ``insert_many`` would.
    """
    env: dict[str, Any] = {"plain": _plain}
    body: list[str] = []
    out: list[str] = []
    for i, (key, field) in enumerate(given):
        env[f"k{i}"], env[f"c{i}"] = key, field.db_value
        fast = _fast_type(field)
        if fast is _IDENTITY:
            body.append(f"v{i} = plain(row[k{i}])")
        elif fast is not None:
            env[f"t{i}"] = fast
            body.append(f"v{i} = row[k{i}]")
            body.append(f"if v{i}.__class__ is not t{i} and v{i} is not None: v{i} = c{i}(plain(v{i}))")
        else:
            body.append(f"v{i} = c{i}(plain(row[k{i}]))")
        out.append(f"v{i}")
    for j, field in enumerate(defaults):
        default = field.default
        if callable(default):
            env[f"d{j}"], env[f"dc{j}"] = default, field.db_value
            out.append(f"dc{j}(d{j}())")
        else:
            env[f"dv{j}"] = field.db_value(default)  # type: ignore[no-untyped-call]  # untyped in peewee's stubs
            out.append(f"dv{j}")
    if ts_field is not None:
        if isinstance(ts_field, peewee.DateTimeField):
            db_value: Callable[[Any], Any] = ts_field.db_value  # untyped in peewee's stubs
            env["tc"] = lambda t: db_value(_dt.datetime.fromtimestamp(t))
            out.append("tc(ts)")
        elif _fast_type(ts_field) in (float, _IDENTITY):
            out.append("ts")
        else:
            env["tc"] = ts_field.db_value
            out.append("tc(ts)")
    values = "(" + "".join(f"{name}, " for name in out) + ")"
    source = "\n".join(
        ["def convert(row, ts):"] + [f"    {line}" for line in body] + [f"    return {values}", ""]
        + ["def fill(rows, times, flat):", "    extend = flat.extend", "    for row, ts in zip(rows, times):"]
        + [f"        {line}" for line in body] + [f"        extend({values})"]
    )
    exec(source, env)  # noqa: S102 - a fixed template over local slot names
    return env["convert"], env["fill"]


def _plain(value: Any) -> Any:
    if isinstance(value, peewee.Node) and not isinstance(value, peewee.Model):
        raise ValueError("SQL expressions are not accepted in accounting rows (the row is written later, by another thread)")
    return value
