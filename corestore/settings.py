"""Validators for configuration values: plugins' ``Settings`` classes and the core's own profile
keys use them, so every bad value is refused the same way: a :class:`~corestore.ConfigError` that
names the key, the value and what is allowed (the core adds the file and the table).

Use them as attrs validators::

    @attrs.frozen(kw_only=True)
    class Settings:
        probes: int = attrs.field(default=1, validator=integer_at_least(1), metadata={"help": "..."})
        enabled: bool = attrs.field(default=True, validator=boolean, metadata={"help": "..."})
        ratio: float = attrs.field(default=0.5, validator=number(0, 1, low_inclusive=False), metadata=...)
        window_s: float | None = attrs.field(default=None, validator=optional(number(0)), metadata=...)
        mode: str = attrs.field(default="a", validator=one_of("a", "b"), metadata={"help": "..."})

Numbers are always finite (``nan`` and ``inf`` are refused: TOML can spell them) and never bools;
``integer=True`` refuses floats (``2.5`` attempts is not a count).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .errors import ConfigError

__all__ = [
    "boolean",
    "integer_at_least",
    "non_negative_seconds",
    "number",
    "optional",
    "one_of",
    "C_INT_MAX",
    "INT64_MAX",
]

Validator = Callable[[Any, Any, Any], None]

#: The largest value a C ``int`` holds (SQLite's limit for e.g. ``busy_timeout``).
C_INT_MAX = 2**31 - 1
#: The largest SQLite integer.
INT64_MAX = 2**63 - 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def boolean(instance: Any, attribute: Any, value: Any) -> None:
    """``true`` or ``false`` (TOML booleans; 0 and 1 are not accepted)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} = {value!r} must be true or false")


def number(low: float | None = None, high: float | None = None, *, integer: bool = False,
           low_inclusive: bool = True, high_inclusive: bool = True, unit: str = "") -> Validator:
    """A finite number (an integer when ``integer``) within ``low``..``high`` (either may be None)."""
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low:g}" if isinstance(low, float) else
                     f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high:g}" if isinstance(high, float) else
                     f"{'<=' if high_inclusive else '<'} {high}")
    what = ("an integer" if integer else "a finite number") + (" " + " and ".join(parts) if parts else "")
    if unit:
        what += f" ({unit})"

    def check(instance: Any, attribute: Any, value: Any) -> None:
        ok = _is_number(value) and (isinstance(value, int) if integer else math.isfinite(value))
        if ok and low is not None:
            ok = value >= low if low_inclusive else value > low
        if ok and high is not None:
            ok = value <= high if high_inclusive else value < high
        if not ok:
            raise ConfigError(f"{attribute.name} = {value!r} must be {what}")

    check.__doc__ = f"{what[0].upper()}{what[1:]}."
    return check


def optional(validator: Validator) -> Validator:
    """``validator``, or the value None (the key left out)."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        try:
            validator(instance, attribute, value)
        except ConfigError as err:
            raise ConfigError(f"{err} (or leave it unset)") from None

    return check


def one_of(*allowed: Any) -> Validator:
    """One of ``allowed`` (compared with ``==``; a bool never matches an int)."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{attribute.name} = {value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")

    return check


def integer_at_least(low: int) -> Validator:
    """An integer (not a bool) no smaller than ``low``."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{attribute.name} = {value!r} must be an integer >= {low}")

    return check


def non_negative_seconds(instance: Any, attribute: Any, value: Any) -> None:
    """A finite number of seconds (int or float, not a bool), 0 or more."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{attribute.name} = {value!r} must be a finite number >= 0 (seconds)")
