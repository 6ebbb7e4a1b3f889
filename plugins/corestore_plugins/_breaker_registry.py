"""The process-wide registry of circuit breakers: one :class:`~corestore_plugins._breaker_state.Breaker`
per database file per process, found with :func:`breaker_for` (moved verbatim out of
``_breaker_state.py``; the names stay importable from there).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from ._server import url_server_key

if TYPE_CHECKING:  # pragma: no cover
    from ._breaker_state import Breaker

__all__ = ["breaker_for"]

logger = logging.getLogger(__name__)


# -- the process-wide registry -------------------------------------------------------------------
_registry: dict[str, Breaker] = {}
_registry_lock = threading.Lock()
_registry_pid = os.getpid()


def _lock() -> threading.Lock:
    """The registry lock of this process. The first use in a forked child makes a new one and
    resets every inherited breaker (another thread of the parent may have held a lock at the
    fork, and its operations never end here): ``on_fork_child`` calls it, and so does any
    later lookup, so a child that inherited no store with the plugin is covered too."""
    global _registry_lock, _registry_pid
    if _registry_pid != os.getpid():
        _registry_lock, _registry_pid = threading.Lock(), os.getpid()
        for breaker in list(_registry.values()):
            breaker._after_fork_in_child()
    return _registry_lock


def breaker_for(path: str | os.PathLike[str]) -> Breaker | None:
    """The breaker this process keeps for the database file at ``path``, or for the PostgreSQL
    database a ``postgresql://`` URL or a ``host:port/dbname`` key names (None if no store with
    the plugin has opened it)."""
    text = os.fspath(path)
    key = url_server_key(text) if isinstance(text, str) else None
    if key is None and isinstance(text, str) and text in _registry and not os.path.isabs(text):
        key = text  # a host:port/dbname key as the breaker reports it
    real = key if key is not None else os.path.realpath(text)
    with _lock():
        return _registry.get(real)
