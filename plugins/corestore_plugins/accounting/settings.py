"""The accounting plugin's settings (``[profiles.NAME.settings.accounting]``) and their
validators; the table of keys is in :class:`~corestore_plugins.accounting.Accounting`'s docstring."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import attrs

from corestore import ConfigError
from corestore.settings import boolean

__all__ = ["Settings", "ON_FULL", "ON_UNKNOWN_TABLE"]

logger = logging.getLogger(__name__)

#: What ``submit()`` does when the queue holds ``queue_size`` rows.
ON_FULL = ("reject", "drop_oldest", "block")



# -- settings validation ---------------------------------------------------------------------
def _int_at_least(low: int) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{attribute.name} = {value!r} must be an integer")
        if value < low:
            raise ConfigError(f"{attribute.name} = {value!r} must be >= {low}")
    return check


def _float_at_least(low: float, *, strict: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{attribute.name} = {value!r} must be a finite number")
        if value < low or (strict and value == low):
            raise ConfigError(f"{attribute.name} = {value!r} must be {'>' if strict else '>='} {low}")
    return check


def _optional_str(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{attribute.name} = {value!r} must be a non-empty string (or left out)")


#: What ``submit()`` does with a row for a table the database does not have.
ON_UNKNOWN_TABLE = ("reject", "raise")


def _on_unknown_table(instance: Any, attribute: Any, value: Any) -> None:
    if value not in ON_UNKNOWN_TABLE:
        raise ConfigError(f"on_unknown_table = {value!r} is not allowed; allowed: {', '.join(ON_UNKNOWN_TABLE)}")


def _on_full(instance: Any, attribute: Any, value: Any) -> None:
    if value not in ON_FULL:
        raise ConfigError(f"on_full = {value!r} is not allowed; allowed: {', '.join(ON_FULL)}")




def _check_backoff(instance: Any, attribute: Any, value: Any) -> None:
    _float_at_least(0.0, strict=True)(instance, attribute, value)
    if value < instance.backoff_initial_s:
        raise ConfigError(f"backoff_max_s = {value!r} must be >= backoff_initial_s = {instance.backoff_initial_s!r}")


@attrs.frozen(kw_only=True)
class Settings:
    """The accounting settings (see the class docstring for the table)."""

    queue_size: int = attrs.field(default=10000, validator=_int_at_least(1),
                                  metadata={"help": "rows the queue holds before on_full applies"})
    on_full: str = attrs.field(default="reject", validator=_on_full,
                               metadata={"help": "full queue: reject | drop_oldest | block"})
    block_timeout_s: float = attrs.field(default=1.0, validator=_float_at_least(0.0),
                                         metadata={"help": "on_full=block: longest wait for room before rejecting"})
    batch_size: int = attrs.field(default=500, validator=_int_at_least(1),
                                  metadata={"help": "rows per batch transaction"})
    max_latency_ms: float = attrs.field(default=50.0, validator=_float_at_least(0.0),
                                        metadata={"help": "longest a row waits for its batch to fill (ms)"})
    drain_timeout_s: float = attrs.field(default=5.0, validator=_float_at_least(0.0),
                                         metadata={"help": "close(): time to write the backlog before dead-lettering it"})
    ts_column: str | None = attrs.field(default=None, validator=_optional_str,
                                        metadata={"help": "column set to the submit time (unix seconds) when a row lacks it"})
    dead_letter: bool = attrs.field(default=True, validator=boolean,
                                    metadata={"help": "append dead letters to a JSON-lines file beside the database"})
    dead_letter_path: str | None = attrs.field(
        default=None, validator=_optional_str,
        metadata={"help": "the dead-letter file (default <db>.corestore-deadletter.jsonl)"})
    backoff_initial_s: float = attrs.field(default=0.05, validator=_float_at_least(0.0, strict=True),
                                           metadata={"help": "first wait after a faulted batch (doubles per retry)"})
    backoff_max_s: float = attrs.field(default=5.0, validator=_check_backoff,
                                       metadata={"help": "longest wait between retries of a faulted batch"})
    reopen_after: int = attrs.field(default=3, validator=_int_at_least(1),
                                    metadata={"help": "reopen the writer connection every N faulted batches"})
    reopen_after_s: float = attrs.field(default=10.0, validator=_float_at_least(0.0, strict=True),
                                        metadata={"help": "... or every N seconds of failing, whichever first"})
    degraded_after: int = attrs.field(default=5, validator=_int_at_least(1),
                                      metadata={"help": "health DEGRADED after N faulted batches"})
    degraded_after_s: float = attrs.field(default=30.0, validator=_float_at_least(0.0, strict=True),
                                          metadata={"help": "... or N seconds of failing, whichever first"})
    persistent_after: int = attrs.field(default=40, validator=_int_at_least(1),
                                        metadata={"help": "on_persistent_failure after N faulted batches"})
    persistent_after_s: float = attrs.field(default=120.0, validator=_float_at_least(0.0, strict=True),
                                            metadata={"help": "... or N seconds of failing, whichever first"})
    refire_s: float = attrs.field(default=600.0, validator=_float_at_least(0.0, strict=True),
                                  metadata={"help": "on_persistent_failure again every N seconds while failing"})
    healthy_to_clear: int = attrs.field(default=3, validator=_int_at_least(1),
                                        metadata={"help": "consecutive committed batches that end a fault episode"})
    probe_interval_s: float = attrs.field(default=1.0, validator=_float_at_least(0.0, strict=True),
                                          metadata={"help": "idle during a fault episode: probe batch interval"})
    batch_retention_s: float = attrs.field(default=3600.0, validator=_float_at_least(0.0, strict=True),
                                           metadata={"help": "how long batch ids stay in _corestore_batches"})
    log_interval_s: float = attrs.field(default=60.0, validator=_float_at_least(0.0),
                                        metadata={"help": "rejections and drops are logged at most once per interval"})
    on_unknown_table: str = attrs.field(
        default="reject", validator=_on_unknown_table,
        metadata={"help": "a row for a table the database lacks: reject (submit returns False) | raise (ConfigError)"})
