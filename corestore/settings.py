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
``integer=True`` refuses floats (``2.5`` attempts is not a count). Every message reads
``KEY = VALUE must be WHAT`` (or ``... is not allowed; allowed: ...``); ``noun=`` and ``what=``
change the words of WHAT where a field needs its own (``what="a fraction in (0, 1]"``), never the
shape. Every shipped plugin uses these, and third-party plugins should too: the core adds the
file and the table to the :class:`~corestore.ConfigError`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = [
    "boolean",
    "integer_at_least",
    "non_negative_seconds",
    "number",
    "optional",
    "one_of",
    "non_empty_string",
    "at_least_field",
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
           low_inclusive: bool = True, high_inclusive: bool = True, unit: str = "", noun: str | None = None,
           what: str | None = None) -> Validator:
    """A finite number (an integer when ``integer``) within ``low``..``high`` (either may be None).

    The message says ``must be <noun> <bounds> (<unit>)``: ``noun`` defaults to "an integer" or
    "a finite number"; ``what`` replaces the whole description."""
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low:g}" if isinstance(low, float) else
                     f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high:g}" if isinstance(high, float) else
                     f"{'<=' if high_inclusive else '<'} {high}")
    if what is None:
        if noun is None:
            noun = "an integer" if integer else "a finite number"
        what = " ".join(p for p in (noun, " and ".join(parts)) if p)
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


def one_of(*allowed: Any, meanings: Mapping[Any, str] | None = None) -> Validator:
    """One of ``allowed`` (compared with ``==``; a bool never matches an int). ``meanings``
    (value -> a few words) is added to the message after each allowed value."""
    listed = ", ".join(repr(a) + (f" ({meanings[a]})" if meanings and a in meanings else "") for a in allowed)

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{attribute.name} = {value!r} is not allowed; allowed: {listed}")

    return check


def non_empty_string(what: str = "a non-empty string") -> Validator:
    """A string with something in it besides whitespace (``what`` names it in the message, e.g.
    "a non-empty file path")."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{attribute.name} = {value!r} must be {what}")

    return check


def at_least_field(other: str) -> Validator:
    """No smaller than the field ``other`` of the same settings (declared before this one), e.g.
    ``backoff_max_s`` at least ``backoff_initial_s``. Checks only the comparison: combine it with
    :func:`number` (``attrs.validators.and_``) for the type and bounds."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        bound = getattr(instance, other)
        if _is_number(value) and _is_number(bound) and value < bound:
            raise ConfigError(f"{attribute.name} = {value!r} must be >= {other} = {bound!r}")

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
