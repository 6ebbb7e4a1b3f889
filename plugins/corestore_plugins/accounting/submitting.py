"""The caller's side of accounting: ``submit()``, its fast path, and the table check
(:class:`~corestore_plugins.accounting.plugin.Accounting` inherits them; the plugin sets the
attributes they use, in ``_reset()``).

When: every row a caller submits. Why here: ``submit()`` is the producer's hot path, and its GIL
time per row is what bounds accounting end to end (site/performance.md); what it must never
do (wait below half full, hold a lock across I/O) is in site/plugins/accounting.md.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import peewee

from corestore import ConfigError

from .ledger import Ledger
from .rows import table_label

if TYPE_CHECKING:  # pragma: no cover
    from corestore import Store

    from .settings import Settings

__all__ = ["Submitting"]

_perf_ns = time.perf_counter_ns
_now = time.time


class Submitting:
    """The caller's side of :class:`~corestore_plugins.accounting.plugin.Accounting` (a mixin)."""

    settings: Settings
    _store: Store | None
    _ledger: Ledger
    _thread: threading.Thread | None
    _tables_ok: set[Any]
    _known_tables: frozenset[str] | None
    _tables_unseen: set[str]
    _tables_missing: set[str]
    _tables_stale: bool
    _on_full: str
    _on_unknown_table: str
    _yield_s: float
    _high_water: int
    _wake_at: int

    def _start_writer(self) -> None:  # pragma: no cover - the plugin's
        raise NotImplementedError

    def submit(self, table_or_model: Any, row: Mapping[str, Any]) -> bool:
        """Queue ``row`` for ``table_or_model`` (a table name or a peewee model); True if accepted.

        O(1), no I/O, no lock held across I/O: safe on an asyncio event loop (except with
        ``on_full = "block"``, which may wait up to ``block_timeout_s``). The row is copied and
        stamped with the submit time. False means the row was not accepted (queue full with
        ``on_full = "reject"`` or after a ``block`` timeout, or accounting closed); every
        rejection is counted. Raises ``TypeError`` for a table that is neither a name nor a model
        class, or a row that is not a mapping.
        """
        return self._submit(table_or_model, row)  # (an instance's own submit is _fast_submit's)

    def _fast_submit(self) -> Callable[[Any, Mapping[str, Any]], bool]:
        """:meth:`submit` for the current ledger, set on the instance by ``_reset()`` (it shadows
        the method): ``acc.submit`` is this function.

        Why a closure: the producer's GIL time per row is what bounds accounting end to end
        (site/performance.md), and the interpreter does not specialise attribute loads on the
        plugin instance (``dis``: ``self._ledger`` stayed ``LOAD_ATTR_ADAPTIVE``). Here the
        ledger, its lock and the thresholds are closure cells: callgrind counts about 5,950
        instructions per call against 7,250 for the same code as a method taking them from
        ``self`` on each call.

        The fast path: a row of the named table and keys the queue's tail segment keeps flat
        (``accounting.segments``). Its values are taken out in C and appended to the segment:
        no object per queued row. Anything else, or a full or closed queue, goes the general
        path (:meth:`_submit`), which behaves the same for any row.
        """
        led = self._ledger
        lock, wake = led.lock, led.wake
        general, attend = self._submit, self._attend
        high_water, wake_at = self._high_water, self._wake_at

        def submit(table_or_model: Any, row: Mapping[str, Any]) -> bool:
            shape = led.shape  # set by _submit, revoked by _tables_seen; re-checked under the lock
            if (shape is None or type(row) is not dict or len(row) != shape.width
                    or (table_or_model is not shape.table and table_or_model != shape.table)):
                return general(table_or_model, row)
            get = shape.get  # (a local: calling a slot's value as a method is not specialised)
            try:
                values = get(row)
            except KeyError:  # the same number of keys, not the same keys
                return general(table_or_model, row)
            timed = led.accepted >= led.time_next  # read without the lock: only whether this call is timed
            t0 = _perf_ns() if timed else 0
            ts = _now()
            lock.acquire()  # (not ``with``: half the cost, and this is the producer's hot path)
            try:
                n = led.queued
                seg = led.tail  # never None while led.shape is set (take_all clears both)
                if n < led.capacity and not led.closed and seg.shape is shape:  # type: ignore[union-attr]
                    seg.values.extend(values)  # type: ignore[union-attr]
                    seg.times.append(ts)  # type: ignore[union-attr]
                    led.queued = n + 1
                    seq = led.accepted = led.accepted + 1
                    if timed:
                        led.timed(t0, seq)
                else:
                    seq = 0
            finally:
                lock.release()
            if seq == 0:  # the tail changed, or the queue is full or closed
                return general(table_or_model, row)
            if n < high_water:  # the usual call: no wait is due, a wake-up at most (as in _attend)
                if n == 0 or n == wake_at:
                    wake.set()
                return True
            attend(led, n, seq)
            return True

        submit.__doc__ = Submitting.submit.__doc__
        submit.__qualname__ = "Accounting.submit"
        return submit

    def _submit(self, table_or_model: Any, row: Mapping[str, Any]) -> bool:
        """:meth:`submit`'s general path: any table or model, any row, a full or closed queue."""
        led = self._ledger
        timed = led.accepted >= led.time_next  # read without the lock: only whether this call is timed
        t0 = _perf_ns() if timed else 0
        if table_or_model not in self._tables_ok:  # always so until the writer runs (_reset)
            if self._thread is None:  # the first submit: bind-check and start the writer before counting
                self._start_writer()
            if not self._check_table(table_or_model):
                return False
        if type(row) is dict:
            row = row.copy()
        else:
            if not isinstance(row, Mapping):
                raise TypeError(f"accounting.submit(): row must be a mapping, got {type(row).__name__}")
            row = dict(row)
        ts = _now()
        lock = led.lock
        lock.acquire()
        try:
            n = led.queued
            if n >= led.capacity or led.closed:
                room = self._make_room(led)
                # the first loss since the writer last reported wakes it to log (never logged here)
                signal = not led.loss_signalled and not led.closed
                led.loss_signalled = True
                if not room:
                    led.rejected += 1  # submitted = accepted + rejected (computed by the ledger)
                if signal:
                    led.wake.set()
                if not room:
                    return False
                n = led.queued  # (make_room may have dropped the oldest row or waited for room)
            led.place(table_or_model, row, None, None, ts)
            led.queued = n + 1
            seq = led.accepted = led.accepted + 1
            tail = led.tail
            # the fast path's shape: this row's, if it went to a flat segment and its table is
            # not known to be missing. The fast path skips the table check, so a table the writer
            # has not looked up yet is allowed: if it turns out missing, _tables_seen revokes the
            # shape (under this lock, which is why the check is made here again)
            shape = tail.shape if tail is not None else None
            if shape is not None and shape is not led.shape and shape.table.lower() not in self._tables_missing:
                led.shape = shape
            if timed:
                led.timed(t0, seq)
        finally:
            lock.release()
        self._attend(led, n, seq)
        return True

    def _attend(self, led: Ledger, n: int, seq: int) -> None:
        """After queuing row ``seq`` behind ``n`` others: below half full, wake the writer if
        this row started the queue or made a batch ready (the fast path inlines this part);
        from half full, make sure the writer is awake and give it the GIL."""
        if n < self._high_water:
            if n == 0 or n == self._wake_at:
                led.wake.set()
            return
        if not led.wake.is_set():
            led.wake.set()
        if self._yield_s:
            # far ahead of the writer (the queue half full: rows would soon be refused): hand it
            # the GIL now rather than starve it until the interpreter's switch interval. Below
            # half full submit() never waits (site/plugins/accounting.md)
            if seq >= led.turn_mark:
                led.give_turn(self._yield_s)  # its database call should be over
            if led.yield_armed:
                led.give_way(self._yield_s)
            elif n >= led.near_full and led.full_armed:
                led.give_way(self._yield_s, last_chance=True)

    def _make_room(self, led: Ledger) -> bool:
        """The queue is full or closed (called with the ledger lock held): may the row go in?"""
        return led.make_room(self._on_full, self.settings.block_timeout_s)

    def _check_table(self, table: Any) -> bool:
        """A table not seen before (no I/O: the writer thread reads the schema): True to accept
        the row; False when the writer confirmed the database has no such table (counted as
        rejected, health DEGRADED naming it; ``on_unknown_table = "raise"`` raises instead)."""
        if isinstance(table, str):
            if not table:
                raise TypeError("accounting.submit(): the table name is empty")
        elif not (isinstance(table, type) and issubclass(table, peewee.Model)):
            raise TypeError(f"accounting.submit(): table_or_model must be a table name or a peewee Model class, "
                            f"got {table!r}")
        label = table_label(table)
        name = label.lower()
        known = self._known_tables
        if known is None or "." in name:  # not read yet (the writer checks it), or another schema
            return True
        if name in known:
            if len(self._tables_ok) < 10000:
                self._tables_ok.add(table)
            return True
        led = self._ledger
        if name not in self._tables_missing:  # created since the writer last looked? accept; it looks again
            if name not in self._tables_unseen:
                self._tables_unseen.add(name)
                self._tables_stale = True
                led.wake.set()
            return True
        with led.lock:
            led.rejected += 1
            led.rejected_tables[label] = led.rejected_tables.get(label, 0) + 1
        if self._on_unknown_table == "raise":
            path = self._store.path if self._store is not None else "?"
            raise ConfigError(
                f"accounting.submit(): {path} has no table {label!r} (the row is not accepted); "
                f"tables: {', '.join(sorted(known)) or '(none)'}"
            )
        return False

    def _tables_seen(self, names: frozenset[str]) -> None:
        """The writer read the schema: ``names`` exist (lowercase). Names submitted since its
        last look that are still missing are missing for good: later rows for them are refused."""
        unseen = set(self._tables_unseen)  # a copy: submitters add to it concurrently
        led = self._ledger
        with led.lock:  # (the fast path's shape is set under it: see _submit)
            self._tables_missing = {n for n in self._tables_missing | unseen if n not in names}
            shape = led.shape
            if shape is not None and shape.table.lower() not in names:
                # not seen: its rows go the general path again, whose table check refuses them
                # if missing for good, or asks for another look (as for any table not seen)
                led.revoke_shape()
        self._tables_unseen.difference_update(unseen)
        self._known_tables = names
        self._tables_stale = False

