"""Real fault injection through SQLite's own I/O path.

Two harnesses, one vocabulary (ops ``open``, ``read``, ``write``, ``sync``, ``truncate``; files by
role ``main``, ``wal``, ``journal`` or by path):

* :class:`FailpointVFS` (needs apsw) — in-process: an apsw VFS inheriting the default VFS that
  fails chosen operations with a chosen SQLite result code, for N operations, a duration, until
  healed, or until the last connection closes (``heal_on_last_close``). A store runs over it with
  ``Profile(driver="apsw", vfs=fp.name)``.
* :class:`PreloadFailpoint` (Linux, C compiler) — a C shim preloaded into a child process that
  fails ``pread``/``pwrite``/``fsync``/``ftruncate``/``open`` with an ``errno``, under the stdlib
  ``sqlite3`` driver; :func:`run_in_child` runs a function or script there.

The pytest plugin (:mod:`corestore_contrib.pytest_plugin`) wraps both as fixtures. The site page
"Testing against disk faults" shows both and records what SQLite does under each fault.
"""
from __future__ import annotations

from typing import Any

from ._check import integrity_check
from ._preload import (
    CONTROL_ENV,
    PRELOAD_OPS,
    ChildError,
    ChildFailedError,
    ChildProcess,
    ChildResult,
    CompilerNotFoundError,
    FailpointUnavailable,
    PreloadFailpoint,
    PreloadRule,
    PreloadUnsupportedError,
    ShimBuildError,
    build_shim,
    cache_dir,
    preload_counters,
    run_in_child,
    start_child,
)

__all__ = [
    # in-process VFS (apsw)
    "FailpointVFS",
    "Fault",
    "FailpointCounters",
    "VFS_OPS",
    "FILE_ROLES",
    "resolve_code",
    "code_name",
    # preload shim (Linux)
    "PreloadFailpoint",
    "PreloadRule",
    "PRELOAD_OPS",
    "CONTROL_ENV",
    "run_in_child",
    "start_child",
    "ChildProcess",
    "ChildResult",
    "ChildError",
    "ChildFailedError",
    "preload_counters",
    "build_shim",
    "cache_dir",
    "FailpointUnavailable",
    "PreloadUnsupportedError",
    "CompilerNotFoundError",
    "ShimBuildError",
    # checks
    "integrity_check",
]

_VFS_NAMES = frozenset({"FailpointVFS", "Fault", "FailpointCounters", "VFS_OPS", "FILE_ROLES", "resolve_code", "code_name"})


def __getattr__(name: str) -> Any:
    # The VFS needs apsw (corestore's "apsw" extra); the preload failpoint does not.
    if name in _VFS_NAMES:
        try:
            from . import _vfs
        except ImportError as err:
            raise ImportError(
                f"corestore_contrib.failpoint.{name} needs apsw: pip install 'corestore[apsw]' ({err})"
            ) from err
        return getattr(_vfs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
