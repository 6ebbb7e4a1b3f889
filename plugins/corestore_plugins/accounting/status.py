"""The accounting plugin's health component, from one :meth:`Accounting.stats` snapshot."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from corestore import HealthComponent, HealthStatus

from .batches import BATCHES_TABLE
from .deadletter import DeadLetter, DeadLetterSink

if TYPE_CHECKING:  # pragma: no cover
    from .settings import Settings

__all__ = ["component", "log_close"]

logger = logging.getLogger(__name__)


def component(name: str, st: dict[str, Any], sink: DeadLetterSink, *, settings: Settings,
              writer_stopped: bool) -> HealthComponent:
    """The ``accounting`` component: DOWN when accepted rows are only in memory or the writer
    thread died (``writer_stopped``), DEGRADED while a fault episode is past ``degraded_after``,
    the queue is full, rows were refused for unknown tables or dead-lettered unacknowledged."""
    ep = st["episode"]
    details = {k: st[k] for k in ("submitted", "accepted", "rejected", "dropped", "written", "dead_lettered",
                                  "pending", "batches", "faulted_batches", "reopens", "persistent_signals",
                                  "uncertain_commits", "rejected_tables", "unacknowledged_dead_letters")}
    details["episode"] = ep
    details["dead_letter_path"] = sink.path
    details["enqueue_p99_us"] = st["enqueue_us"]["p99"]
    details["batch_p99_ms"] = st["batch_ms"]["p99"]
    details["unsaved"] = len(sink.unsaved)
    if sink.unsaved:
        status = HealthStatus.DOWN
        summary = (f"{len(sink.unsaved)} accepted row(s) reached neither the database nor "
                   f"{sink.path or 'a dead-letter file'}: only in memory (Accounting.unsaved())")
    elif ep["tier"] in ("degraded", "persistent"):
        status = HealthStatus.DEGRADED
        summary = (f"writes failing for {ep['faulted_batches']} batch(es) / {ep['duration_s']:.0f} s "
                   f"({ep['last_error']}); {st['pending']} row(s) pending")
    elif writer_stopped:
        status, summary = HealthStatus.DOWN, "the writer thread stopped"
    elif st["queued"] >= settings.queue_size:
        status, summary = HealthStatus.DEGRADED, f"queue full ({st['queued']} rows; on_full={settings.on_full})"
    elif st["rejected_tables"]:
        status = HealthStatus.DEGRADED
        tables = ", ".join(f"{t!r} ({n} row(s))" for t, n in sorted(st["rejected_tables"].items()))
        summary = (f"rows refused for table(s) the database does not have: {tables}; fix the table name "
                   "(acknowledge_unknown_tables() clears this)")
    elif st["unacknowledged_dead_letters"]:
        status = HealthStatus.DEGRADED
        summary = (f"{st['unacknowledged_dead_letters']} row(s) dead-lettered (in {sink.path or 'memory only'}; "
                   "see dead_letters()); acknowledge_dead_letters() clears this")
    else:
        status = HealthStatus.UP
        summary = f"{st['pending']} pending, {st['written']} written"
        if ep["active"]:
            summary += f"; recovering from {ep['last_error'] or 'a fault'}"
    return HealthComponent(name=name, status=status, summary=summary, details=details)


def log_close(path: str, letters: list[DeadLetter], *, durable: bool, sink: DeadLetterSink, drain_timeout_s: float,
              in_flight: int, batch_id: str | None, uncertain: bool, had_writer: bool) -> None:
    """Log how ``close()`` ended: rows left and where they went (CRITICAL when only in memory)."""
    if letters and not durable:
        logger.critical(
            "accounting: %s: close: %d row(s) not written within drain_timeout_s=%.1f s and not saved to %s; "
            "all %d unsaved row(s) are held in memory only (Accounting.unsaved(), UnsavedDataError.rows) "
            "and are LOST when the process exits",
            path, len(letters), drain_timeout_s,
            sink.path or "a dead-letter file (dead_letter = false)", len(sink.unsaved),
        )
    elif letters:
        logger.error(
            "accounting: %s: close: %d row(s) not written within drain_timeout_s=%.1f s; dead-lettered to %s%s",
            path, len(letters), drain_timeout_s,
            sink.path or "memory only (dead_letter = false): THEY ARE LOST when the process exits",
            f" ({in_flight} from batch {batch_id}, whose COMMIT outcome is unknown: check {BATCHES_TABLE})"
            if uncertain and in_flight else "",
        )
    elif had_writer:
        logger.info("accounting: %s: closed; every accepted row settled", path)
