"""Wait for a condition with a deadline, for tests: never sleep-then-assert.

A test that sleeps a fixed time and then asserts either fails on a slow machine or passes
without having proved anything on a fast one. :func:`wait_until` polls the condition instead,
returns as soon as it holds and fails with a message naming what it waited for when the
deadline passes, so a hang is a failure with a reason, not a stuck suite.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, *, timeout_s: float = 10.0, interval_s: float = 0.005) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value; raise
    ``AssertionError`` naming ``what`` (and the last value seen) after ``timeout_s`` seconds.

    ``what`` reads as the condition: ``wait_until(lambda: q.empty(), "the queue to drain")``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}; last value: {value!r}")
        time.sleep(interval_s)
