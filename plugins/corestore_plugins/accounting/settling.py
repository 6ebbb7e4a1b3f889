"""Settling a batch's outcome: the accounting writer's dead letters, ledger updates and loss
reports (moved verbatim out of ``writer.py``; :class:`~corestore_plugins.accounting.writer.Writer`
inherits them).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .batches import kind_name, log_letters, message
from .deadletter import DeadLetter, DeadLetterSink
from .ledger import Ledger
from .rows import table_label
from .segments import Batch, Item

if TYPE_CHECKING:  # pragma: no cover
    from corestore import ErrorKind, Store

    from .clock import Clock
    from .settings import Settings

__all__ = ["Settling"]

# Logged on the writer's channel, as before the split (log filters keep working).
logger = logging.getLogger("corestore_plugins.accounting.writer")


class Settling:
    """The settling half of :class:`~corestore_plugins.accounting.writer.Writer` (a mixin: the
    writer sets these attributes)."""

    store: Store
    settings: Settings
    ledger: Ledger
    clock: Clock
    sink: DeadLetterSink
    next_loss_log: float

    # -- settling ----------------------------------------------------------------------------
    def _letters(self, bad: list[tuple[Item, BaseException, str]], batch_id: str | None) -> list[DeadLetter]:
        letters = []
        for (table, row, ts, _), err, reason in bad:
            letters.append(DeadLetter(table=table_label(table), row=row, submitted_at=ts, reason=reason,
                                      kind=kind_name(err, self._kind), error=message(err), batch_id=batch_id))
        return letters

    def _settle(self, batch: Batch, bad: list[tuple[Item, BaseException, str]]) -> None:
        led = self.ledger
        batch_id = led.in_flight_id
        letters = self._letters(bad, batch_id)
        durable = self.sink.write(letters)
        if letters:
            log_letters(self.store.path, self.sink.path, letters)
        seqs = [item[3] for item, _, _ in bad]
        if not led.settle(batch, written=len(batch) - len(bad), dead=len(bad), durable_dead=durable, lost_seqs=seqs):
            logger.warning("accounting: %s: batch %s committed after close() had dead-lettered it (marked uncertain); "
                           "its rows are in the database", self.store.path, batch_id)

    def _settle_head(self, batch: Batch, item: Item, bad: list[tuple[Item, BaseException, str]]) -> None:
        """Settle the first row in flight (row-per-transaction mode)."""
        led = self.ledger
        letters = self._letters(bad, None)
        durable = self.sink.write(letters)
        if letters:
            log_letters(self.store.path, self.sink.path, letters)
        with led.lock:
            if led.in_flight is not batch or not batch or batch.seqs[0] != item[3]:
                return
            batch.drop_head()
            led.written += 1 - len(bad)
            led.dead_lettered += len(bad)
            if led.waiters:
                if bad and not durable:
                    led.lose([item[3]])
                led.wake_waiters()

    def _log_losses(self, *, now: float | None = None, force: bool = False) -> None:
        led = self.ledger
        if led.rejected == led.logged_rejected and led.dropped == led.logged_dropped:
            return
        now = self.clock.monotonic() if now is None else now
        if not force and now < self.next_loss_log:
            return
        with led.lock:
            rejected, dropped = led.rejected - led.logged_rejected, led.dropped - led.logged_dropped
            led.logged_rejected, led.logged_dropped = led.rejected, led.dropped
            led.loss_signalled = False
        self.next_loss_log = now + self.settings.log_interval_s
        if rejected or dropped:
            logger.warning("accounting: %s: queue full (queue_size=%d, on_full=%s): %d row(s) rejected, %d dropped "
                           "since the last report", self.store.path, self.settings.queue_size, self.settings.on_full,
                           rejected, dropped)

    def _kind(self, err: BaseException) -> ErrorKind:
        return self.store.hooks.classify_error(self.store, err, None).kind
