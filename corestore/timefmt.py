"""One timestamp format for everything corestore and its plugins write for people and monitors
(health snapshots, quarantine markers, breaker transitions, invariant reports, doctor output):
ISO 8601 in UTC with millisecond precision, e.g. ``2026-12-05T08:49:51.123+00:00``.

Why one: three precisions (seconds, milliseconds, microseconds) made the same moment look
different in different files, and a reader comparing them had to parse three shapes.
Milliseconds: finer than any event the plugins record is meaningful at, and
:func:`datetime.datetime.fromisoformat` reads it back on every supported Python.

Third-party plugins use it the same way::

    from corestore.timefmt import iso, now_iso
    details["last_seen"] = iso(self._last_seen_wall)   # a time.time() value
"""
from __future__ import annotations

import datetime as _dt
import logging
import time

__all__ = ["iso", "now_iso"]

logger = logging.getLogger(__name__)


def iso(ts: float) -> str:
    """The unix time ``ts`` (seconds, as :func:`time.time` returns) as ISO 8601, UTC, milliseconds."""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="milliseconds")


def now_iso() -> str:
    """The current time as :func:`iso` writes it."""
    return iso(time.time())
