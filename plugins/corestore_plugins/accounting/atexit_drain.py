"""Draining at interpreter exit: every live :class:`~corestore_plugins.accounting.Accounting`
is kept in a weak set, and an ``atexit`` handler drains the ones whose store the application
forgot to close (moved verbatim out of ``plugin.py``; ``_INSTANCES`` stays importable there).
"""
from __future__ import annotations

import atexit
import logging
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .plugin import Accounting

__all__: list[str] = []

# Logged on the plugin's channel, as before the split (log filters keep working).
logger = logging.getLogger("corestore_plugins.accounting.plugin")

_INSTANCES: weakref.WeakSet[Accounting] = weakref.WeakSet()


def _drain_at_exit() -> None:
    """atexit: drain every accounting whose store the application forgot to close."""
    for acc in list(_INSTANCES):
        if acc._closed or acc._thread is None:
            continue
        logger.warning("accounting: %s: the store was not closed; draining its queue at exit",
                       acc._store.path if acc._store is not None else "?")
        try:
            acc.close()
        except Exception:  # noqa: BLE001 - keep draining the others
            logger.exception("accounting: draining at exit failed")


atexit.register(_drain_at_exit)
