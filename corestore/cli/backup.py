"""``corestore backup SRC DEST``: copy a database online through SQLite's backup API, verify the
copy (``quick_check``, or ``integrity_check`` with ``--integrity``), then rename it into place
(:mod:`corestore.backup`). SRC is opened read-only with no plugins: the command never changes it.

Exit codes: 0 the verified copy is at DEST; 64 refused before anything was copied (usage); 1/2 a
fault (DEGRADED/DOWN, as every other command).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

from ..errors import ConfigError
from ._common import EXIT_USAGE, emit

__all__ = ["HELP", "add_arguments", "run_backup"]

logger = logging.getLogger(__name__)

HELP = "copy a database online, verify the copy, then rename it into place"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``corestore backup``."""
    p.add_argument("src", metavar="SRC", help="the database to copy (a path; opened read-only)")
    p.add_argument("dest", metavar="DEST", help="where the verified copy goes (replaced atomically)")
    p.add_argument("--integrity", action="store_true", help="verify with integrity_check instead of quick_check")


def _progress_bar() -> Callable[[int, int], None] | None:
    """``pages copied / total`` as a bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(copied: int, total: int) -> None:
        width = 30
        done = int(width * copied / total) if total else width
        sys.stderr.write(f"\rbackup: [{'#' * done}{'.' * (width - done)}] {copied}/{total} pages")
        if copied >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def run_backup(args: argparse.Namespace) -> int:
    """Copy SRC to DEST through SQLite's backup API, verified before it is renamed into place.
    SRC is opened read-only with no plugins (the command never changes it); exit 0 on success."""
    from ..backup import BackupRefused
    from ..opening import open as open_store
    from ..profiles import Profile

    src = os.path.abspath(args.src)
    if not os.path.isfile(src):
        raise ConfigError(f"{args.src}: no such database file (the backup command never creates one)")
    store = open_store(Profile(name="backup", path=src, read_only=True))
    try:
        started = time.monotonic()
        dest = store.backup(args.dest, verify="integrity_check" if args.integrity else "quick_check",
                            progress=None if getattr(args, "json", False) else _progress_bar())
    except BackupRefused as err:  # nothing was copied: a usage error (exit 64)
        from . import _fail  # the package's one way of reporting an error (text, or JSON with --json)

        return _fail(args, err, EXIT_USAGE)
    finally:
        store.close()
    size = os.stat(dest).st_size
    data = {"command": "backup", "src": src, "dest": dest, "bytes": size,
            "verified": "integrity_check" if args.integrity else "quick_check",
            "seconds": round(time.monotonic() - started, 3), "exit_code": 0}
    emit(args, data, f"backup of {src} verified ({data['verified']}) and written to {dest} ({size} bytes)")
    return 0
