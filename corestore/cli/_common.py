"""What every ``corestore`` command shares: the exit code for usage errors, the config file
lookup, JSON-or-text output, and :func:`add_command`, which adds a subcommand to the parser the
same way for the core's commands and for those of the ``corestore.cli`` entry-point group."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ..health import EXIT_USAGE
from ..profiles import ENV_CONFIG

__all__ = ["EXIT_USAGE", "Parser", "config_path", "emit", "add_command", "AddArguments", "Run"]

logger = logging.getLogger(__name__)

#: ``add_arguments(parser)``: adds a command's arguments to its subparser.
AddArguments = Callable[[argparse.ArgumentParser], None]
#: ``run(args) -> exit code``: runs a command.
Run = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors exit 64, not argparse's 2 (which means DOWN)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def config_path(args: argparse.Namespace) -> str | None:
    """``--config``, else ``$CORESTORE_CONFIG``, else ``./corestore.toml`` if it exists."""
    if getattr(args, "config", None):
        return str(args.config)
    if os.environ.get(ENV_CONFIG):
        return os.environ[ENV_CONFIG]
    return "corestore.toml" if os.path.isfile("corestore.toml") else None


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def add_command(subparsers: Any, name: str, help: str, add_arguments: AddArguments, run: Run) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` to ``subparsers`` (what ``add_subparsers()`` returned): its
    arguments from ``add_arguments``, the shared ``--config`` and ``--json`` options, and ``run``
    as what ``corestore NAME`` calls. Returns the subparser.

    This is what a ``corestore.cli`` entry point calls (site/cli.md, "Adding a command")."""
    p: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help)
    p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    add_arguments(p)
    p.set_defaults(_corestore_run=run)
    return p
