"""The accounting plugin's settings (``[profiles.NAME.settings.accounting]``) and their
validators; the table of keys is in :class:`~corestore_plugins.accounting.Accounting`'s docstring."""
from __future__ import annotations

import logging

import attrs

from corestore.settings import at_least_field, boolean, integer_at_least, non_empty_string, number, one_of, optional

__all__ = ["Settings", "ON_FULL", "ON_UNKNOWN_TABLE"]

logger = logging.getLogger(__name__)

#: What ``submit()`` does when the queue holds ``queue_size`` rows.
ON_FULL = ("reject", "drop_oldest", "block")

_POSITIVE = number(0, low_inclusive=False)
_NON_NEGATIVE = number(0)
_OPTIONAL_STR = optional(non_empty_string())

#: What ``submit()`` does with a row for a table the database does not have.
ON_UNKNOWN_TABLE = ("reject", "raise")


@attrs.frozen(kw_only=True)
class Settings:
    """The accounting settings (see the class docstring for the table)."""

    queue_size: int = attrs.field(default=10000, validator=integer_at_least(1),
                                  metadata={"help": "rows the queue holds before on_full applies"})
    on_full: str = attrs.field(default="reject", validator=one_of(*ON_FULL),
                               metadata={"help": "full queue: reject | drop_oldest | block"})
    block_timeout_s: float = attrs.field(default=1.0, validator=_NON_NEGATIVE,
                                         metadata={"help": "on_full=block: longest wait for room before rejecting"})
    batch_size: int = attrs.field(default=500, validator=integer_at_least(1),
                                  metadata={"help": "rows per batch transaction while the queue is under half full"})
    max_batch_size: int = attrs.field(
        default=5000, validator=integer_at_least(1),
        metadata={"help": "rows one batch takes when the queue is half full or more (never fewer than batch_size)"})
    yield_ms: float = attrs.field(
        default=5.0, validator=_NON_NEGATIVE,
        metadata={"help": "longest submit() waits for the writer to take the GIL (once per batch or call; 0: never)"})
    max_latency_ms: float = attrs.field(default=50.0, validator=_NON_NEGATIVE,
                                        metadata={"help": "longest a row waits for its batch to fill (ms)"})
    drain_timeout_s: float = attrs.field(default=5.0, validator=_NON_NEGATIVE,
                                         metadata={"help": "close(): time to write the backlog before dead-lettering it"})
    ts_column: str | None = attrs.field(default=None, validator=_OPTIONAL_STR,
                                        metadata={"help": "column set to the submit time (unix seconds) when a row lacks it"})
    dead_letter: bool = attrs.field(default=True, validator=boolean,
                                    metadata={"help": "append dead letters to a JSON-lines file beside the database"})
    dead_letter_path: str | None = attrs.field(
        default=None, validator=_OPTIONAL_STR,
        metadata={"help": "the dead-letter file (default <db>.corestore-deadletter.jsonl)"})
    backoff_initial_s: float = attrs.field(default=0.05, validator=_POSITIVE,
                                           metadata={"help": "first wait after a faulted batch (doubles per retry)"})
    backoff_max_s: float = attrs.field(default=5.0,
                                       validator=attrs.validators.and_(_POSITIVE, at_least_field("backoff_initial_s")),
                                       metadata={"help": "longest wait between retries of a faulted batch"})
    reopen_after: int = attrs.field(default=3, validator=integer_at_least(1),
                                    metadata={"help": "reopen the writer connection every N faulted batches"})
    reopen_after_s: float = attrs.field(default=10.0, validator=_POSITIVE,
                                        metadata={"help": "... or every N seconds of failing, whichever first"})
    degraded_after: int = attrs.field(default=5, validator=integer_at_least(1),
                                      metadata={"help": "health DEGRADED after N faulted batches"})
    degraded_after_s: float = attrs.field(default=30.0, validator=_POSITIVE,
                                          metadata={"help": "... or N seconds of failing, whichever first"})
    persistent_after: int = attrs.field(default=40, validator=integer_at_least(1),
                                        metadata={"help": "on_persistent_failure after N faulted batches"})
    persistent_after_s: float = attrs.field(default=120.0, validator=_POSITIVE,
                                            metadata={"help": "... or N seconds of failing, whichever first"})
    refire_s: float = attrs.field(default=600.0, validator=_POSITIVE,
                                  metadata={"help": "on_persistent_failure again every N seconds while failing"})
    healthy_to_clear: int = attrs.field(default=3, validator=integer_at_least(1),
                                        metadata={"help": "consecutive committed batches that end a fault episode"})
    probe_interval_s: float = attrs.field(default=1.0, validator=_POSITIVE,
                                          metadata={"help": "idle during a fault episode: probe batch interval"})
    batch_retention_s: float = attrs.field(default=3600.0, validator=_POSITIVE,
                                           metadata={"help": "how long batch ids stay in _corestore_batches"})
    log_interval_s: float = attrs.field(default=60.0, validator=_NON_NEGATIVE,
                                        metadata={"help": "rejections and drops are logged at most once per interval"})
    on_unknown_table: str = attrs.field(
        default="reject", validator=one_of(*ON_UNKNOWN_TABLE),
        metadata={"help": "a row for a table the database lacks: reject (submit returns False) | raise (ConfigError)"})
