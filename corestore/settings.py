"""Validators for plugins' ``Settings`` classes, so every plugin (a third-party one too) refuses
bad settings the same way: a :class:`~corestore.ConfigError` that names the key, the value and
what is allowed (the core adds the file and the table).

Use them as attrs validators::

    @attrs.frozen(kw_only=True)
    class Settings:
        probes: int = attrs.field(default=1, validator=integer_at_least(1), metadata={"help": "..."})
        enabled: bool = attrs.field(default=True, validator=boolean, metadata={"help": "..."})
"""
from __future__ import annotations

from typing import Any, Callable

from .errors import ConfigError

__all__ = ["boolean", "integer_at_least", "non_negative_seconds"]

Validator = Callable[[Any, Any, Any], None]


def boolean(instance: Any, attribute: Any, value: Any) -> None:
    """``true`` or ``false`` (TOML booleans; 0 and 1 are not accepted)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} = {value!r} must be true or false")


def integer_at_least(low: int) -> Validator:
    """An integer (not a bool) no smaller than ``low``."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{attribute.name} = {value!r} must be an integer >= {low}")

    return check


def non_negative_seconds(instance: Any, attribute: Any, value: Any) -> None:
    """A number of seconds (int or float, not a bool), 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{attribute.name} = {value!r} must be a number >= 0 (seconds)")
