"""Open gates: a process-wide, per-file check that ``corestore.open()`` runs before anything else.

A plugin that keeps process-wide state per database file (the circuit breaker) registers a gate
for the file's real path; ``open()`` calls it right after resolving the profile, before the store
cache, before a :class:`~corestore.Store` is built and before any file is touched. A gate raises
(e.g. :class:`~corestore.CircuitOpenError`) to refuse, or returns None to let the open go on,
where the usual ``before_operation`` (an :class:`~corestore.Operation` of kind ``"open"``) and
fault reporting follow. A gate must be cheap (it runs on every ``open()``) and must not admit or
count anything that ``before_operation`` will count again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .profiles import Profile

__all__ = ["register", "unregister", "check"]

logger = logging.getLogger(__name__)

Gate = Callable[["Profile"], None]

_gates: dict[str, dict[str, Gate]] = {}  # real path -> {owner name -> gate}
_lock = threading.Lock()


def register(path: str, owner: str, gate: Gate) -> None:
    """Install ``gate`` for the file at real path ``path`` under ``owner`` (a plugin name);
    replaces that owner's earlier gate for the path."""
    with _lock:
        gates = dict(_gates.get(path, {}))
        gates[owner] = gate
        _gates[path] = gates  # replaced, never mutated: check() reads without the lock


def unregister(path: str, owner: str) -> None:
    """Remove ``owner``'s gate for ``path`` (no error if there is none)."""
    with _lock:
        gates = dict(_gates.get(path, {}))
        gates.pop(owner, None)
        if gates:
            _gates[path] = gates
        else:
            _gates.pop(path, None)


def check(profile: Profile) -> None:
    """Run every gate registered for ``profile.path`` (raises what a gate raises)."""
    gates = _gates.get(profile.path)
    if gates:
        for gate in gates.values():
            gate(profile)
