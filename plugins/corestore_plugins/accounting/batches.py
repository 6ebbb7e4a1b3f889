"""The accounting writer's batch bookkeeping: the ``_corestore_batches`` table that makes every
batch exactly-once (its id is recorded in the batch's own transaction), batch ids, and how a
batch attempt ended (moved verbatim out of :mod:`corestore_plugins.accounting.writer`)."""
from __future__ import annotations

import logging
from collections.abc import Callable

from corestore import Classification, ErrorKind

from .deadletter import DeadLetter
from .segments import Item

__all__ = ["BATCHES_TABLE", "CALLER_KINDS", "batch_id_floor", "Abandoned", "AlreadyCommitted", "Outcome",
           "describe", "message", "kind_name", "log_letters"]

logger = logging.getLogger(__name__)

#: The bookkeeping table: one row per committed batch, pruned by age. A batch id starts with the
#: time it was made (16 hex digits of ``time.time_ns()``), so ids sort by age and pruning is a
#: range delete on the primary key (no second index to maintain on every batch).
BATCHES_TABLE = "_corestore_batches"
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} (batch_id TEXT PRIMARY KEY, committed_at REAL) WITHOUT ROWID",
)
_RECORD = f"INSERT INTO {BATCHES_TABLE} (batch_id, committed_at) VALUES (?, ?)"
_CHECK = f"SELECT 1 FROM {BATCHES_TABLE} WHERE batch_id = ?"
_PRUNE = f"DELETE FROM {BATCHES_TABLE} WHERE batch_id < ?"
_PRUNE_EVERY_S = 60.0


def batch_id_floor(unix_s: float) -> str:
    """The smallest batch id made at or after ``unix_s`` (ids older than it sort below)."""
    return f"{int(unix_s * 1e9):016x}"

#: Kinds that mean the rows (or the code that submitted them) are at fault, not the storage.
CALLER_KINDS = frozenset({ErrorKind.CONSTRAINT, ErrorKind.PROGRAMMING, ErrorKind.UNKNOWN})


class Abandoned(Exception):
    """close() reached its deadline: stop now, leave the batch in flight."""


class AlreadyCommitted(Exception):
    """The batch id is already in ``_corestore_batches``: an earlier attempt committed."""


class Outcome:
    __slots__ = ("ok", "bad", "error")

    def __init__(self, ok: bool, bad: list[tuple[Item, BaseException, str]] | None = None,
                 error: BaseException | None = None) -> None:
        self.ok = ok
        self.bad = bad or []
        self.error = error


def describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown error"
    c: Classification | None = getattr(err, "classification", None)
    if c is not None:
        return c.name or c.kind.name
    return type(err).__name__


def message(err: BaseException) -> str:
    c: Classification | None = getattr(err, "classification", None)
    if c is not None and c.message:
        return c.message
    return f"{type(err).__name__}: {err}"[:300]


def kind_name(err: BaseException, classify: Callable[[BaseException], ErrorKind]) -> str:
    """The error kind a dead letter records: the classification's, else ``classify(err)``'s."""
    c: Classification | None = getattr(err, "classification", None)
    if c is not None:
        return c.kind.name
    try:
        kind = classify(err)
    except Exception:  # noqa: BLE001
        return type(err).__name__
    return kind.name if kind is not ErrorKind.UNKNOWN else type(err).__name__


def log_letters(path: str, sink_path: str | None, letters: list[DeadLetter]) -> None:
    """Log dead letters. The log names tables, reasons and kinds only: the error text may quote
    a value (it is in the dead-letter file, with the row)."""
    where = sink_path or "memory only (dead_letter = false)"
    tables = sorted({letter.table for letter in letters})
    kinds = sorted({f"{letter.reason}/{letter.kind}" for letter in letters})
    logger.warning("accounting: %s: %d row(s) of %s dead-lettered (%s) -> %s", path, len(letters),
                   ", ".join(tables), ", ".join(kinds), where)
