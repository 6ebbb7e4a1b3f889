"""accounting: asynchronous writes off the caller's path, batched, escalating, exactly once,
never silently lossy (site/plugins/accounting.md).

The package: :mod:`.plugin` (the :class:`Accounting` plugin: ``flush()``, ``close()``,
``stats()``), :mod:`.submitting` (``submit()`` and its fast path), :mod:`.settings` (its
settings), :mod:`.writer` (the writer thread, handed its collaborators; it inherits the settling
of outcomes from :mod:`.settling`), :mod:`.atexit_drain` (draining forgotten stores at exit),
:mod:`.batches` (the exactly-once bookkeeping), :mod:`.ledger` (the queue, counters and
``flush()`` waits), :mod:`.segments` (how queued rows are kept, and the batches cut from them),
:mod:`.rows` (turning rows into INSERTs), :mod:`.converters` (a model's row converters),
:mod:`.escalation` (the fault episode), :mod:`.deadletter` (the dead-letter file),
:mod:`.status` (the health component) and :mod:`.clock` (the writer's clock).
The entry point stays ``corestore_plugins.accounting:Accounting``.
"""
from __future__ import annotations

import logging

from .batches import BATCHES_TABLE
from .clock import Clock, ManualClock, SystemClock
from .deadletter import DeadLetter
from .plugin import Accounting
from .settings import ON_FULL, ON_UNKNOWN_TABLE

__all__ = ["Accounting", "DeadLetter", "Clock", "SystemClock", "ManualClock", "BATCHES_TABLE", "ON_FULL",
           "ON_UNKNOWN_TABLE"]

logger = logging.getLogger(__name__)
