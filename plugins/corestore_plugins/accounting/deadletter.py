"""The dead-letter sink: where a row goes when it will never reach its table.

A row is dead-lettered when the database refused it as a caller error (CONSTRAINT, PROGRAMMING,
a value its model field cannot convert), or when ``close()`` could not write it before its
deadline. With ``dead_letter = true`` (the default) each one is appended, as one JSON object per
line, to a file beside the database (``<db>.corestore-deadletter.jsonl``, mode 0600, fsynced
before the row counts as dead-lettered), so nothing accepted is ever silently lost. The file is
a sidecar (:mod:`corestore.sidecar`: ``O_NOFOLLOW``, regular file, owner checked, never more
permissive than the database). The last :data:`KEEP` letters are also kept in memory
(``Accounting.dead_letters()``); every letter that could not reach the file (and every row
``close()`` could not save) is kept in full in ``unsaved`` (``Accounting.unsaved()``), never
trimmed. An application may add its own sink (``Accounting.add_dead_letter_sink``).

A line holds: ``table``, ``row`` (values JSON cannot carry are written as strings; bytes as
``{"$base64": ...}``), ``submitted_at`` (unix seconds), ``reason``, ``kind``, ``error`` (the
driver's message, never the SQL), ``batch_id`` and ``uncertain`` (true when the row was in a
batch whose COMMIT outcome was unknown at close: look ``batch_id`` up in
``_corestore_batches`` before replaying it).
"""
from __future__ import annotations

import base64
import collections
import datetime as _dt
import decimal
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from corestore.fileio import fsync_directory, write_all
from corestore.sidecar import open_sidecar

from .._server import is_postgres, state_dir, state_path

__all__ = ["DeadLetter", "DeadLetterSink", "KEEP", "REASONS", "default_path", "sink_location"]

logger = logging.getLogger(__name__)

KEEP = 100

#: Why a row was dead-lettered.
REASONS = {
    "refused": "the database refused the row (a caller error: constraint, missing table or column, bad value)",
    "invalid": "the row could not be converted for its model (unknown field, a value db_value refused)",
    "shutdown": "close() reached drain_timeout_s before the row could be written",
}


def default_path(database: str) -> str:
    """The dead-letter file beside ``database``."""
    return f"{database}.corestore-deadletter.jsonl"


def sink_location(store: Any, settings: Any) -> tuple[str | None, str | None]:
    """Where ``store``'s dead letters go: ``(file or None, the database whose sidecar rules it
    follows or None)``. SQLite: beside the database file (a relative ``dead_letter_path`` is
    relative to its directory). PostgreSQL: there is no database file, so the state directory
    (``corestore_plugins._server.state_dir``), created 0700 when needed."""
    server = is_postgres(store)
    path: str | None = None
    if settings.dead_letter:
        if settings.dead_letter_path is not None:
            path = settings.dead_letter_path
            if server and not os.path.isabs(path):
                path = os.path.join(state_dir(), path)
            elif not os.path.isabs(path) and not store.memory:
                path = os.path.join(os.path.dirname(store.path), path)
        elif server:
            path = state_path(store, ".corestore-deadletter.jsonl")
        elif not store.memory:
            path = default_path(store.path)
        if server and path is not None:
            try:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            except OSError as err:  # the first dead letter's write fails and keeps it in memory, loudly
                logger.warning("accounting: %s: cannot create the dead-letter directory of %s: %s", store.path, path, err)
    return path, None if store.memory or server else store.path


@attrs.frozen(kw_only=True)
class DeadLetter:
    """One dead-lettered row (see the module docs for the fields)."""

    table: str
    row: Mapping[str, Any]
    submitted_at: float
    reason: str
    kind: str
    error: str
    batch_id: str | None = None
    uncertain: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "row": {_key(k): v for k, v in self.row.items()},
            "submitted_at": self.submitted_at,
            "reason": self.reason,
            "kind": self.kind,
            "error": self.error,
            "batch_id": self.batch_id,
            "uncertain": self.uncertain,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _key(k: Any) -> str:
    return k if isinstance(k, str) else str(getattr(k, "name", k))


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return repr(value)


class DeadLetterSink:
    """Appends dead letters to a JSON-lines file (when ``path`` is set), keeps the last
    :data:`KEEP` in memory and hands them to the application's sinks."""

    def __init__(self, path: str | None, database: str | None = None) -> None:
        self.path = path
        self.database = database  # the sidecar's database (its mode and owner rule the file's)
        self.recent: collections.deque[DeadLetter] = collections.deque(maxlen=KEEP)
        self.unsaved: list[DeadLetter] = []  # letters that reached no file: all of them, oldest first
        self.extra: list[Callable[[DeadLetter], None]] = []
        self._lock = threading.Lock()

    @property
    def durable(self) -> bool:
        """True when dead letters reach a file."""
        return self.path is not None

    def write(self, letters: list[DeadLetter], *, keep_unsaved: bool = False) -> bool:
        """Record ``letters``; True if they reached the file (fsynced). Letters that should have
        reached the file but did not (and all of them with ``keep_unsaved``, when there is no
        file) are kept in :attr:`unsaved`."""
        if not letters:
            return True
        durable = False
        with self._lock:
            self.recent.extend(letters)
            if self.path is not None:
                try:
                    self._append(letters)
                    durable = True
                except OSError as err:
                    self.unsaved.extend(letters)
                    logger.error("accounting: could not write %d dead letter(s) to %s: %s; they are kept in memory "
                                 "only, all of them in Accounting.unsaved() (%d so far), until the process exits",
                                 len(letters), self.path, err, len(self.unsaved))
            elif keep_unsaved:
                self.unsaved.extend(letters)
        for sink in list(self.extra):
            for letter in letters:
                try:
                    sink(letter)
                except Exception:  # noqa: BLE001 - an application sink must not stop the writer
                    logger.exception("accounting: a dead-letter sink raised")
        return durable

    def _append(self, letters: list[DeadLetter]) -> None:
        assert self.path is not None
        data = "".join(letter.to_json() + "\n" for letter in letters).encode("utf-8")
        created = not os.path.exists(self.path)
        fd = open_sidecar(self.path, self.database or "", os.O_RDWR | os.O_APPEND, mode=0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(os.path.dirname(self.path), required=False)
