"""Plugins for ``test_hook_on_fork_child`` (tests/test_fork.py): one records the call in the
child, one raises (the hook is isolated: the other still runs)."""
from __future__ import annotations

import os
from typing import Any

from corestore import hookimpl

#: (plugin, pid, store path) per on_fork_child call, in this process.
CALLS: list[tuple[str, int, str]] = []


class ForkRecorder:
    name = "t_fork_recorder"

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    @hookimpl
    def on_fork_child(self, store: Any) -> None:
        CALLS.append((self.name, os.getpid(), store.path))


class ForkRaiser:
    name = "t_fork_raiser"

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    @hookimpl
    def on_fork_child(self, store: Any) -> None:
        raise RuntimeError("t_fork_raiser fails in the child")
