"""The ``corestore`` command line: ``plugins``, ``profiles``, ``demo``, ``doctor``, ``health`` and
``backup``, plus the commands of the ``corestore.cli`` entry-point group. ``--json`` everywhere; exit codes
0 UP, 1 DEGRADED, 2 DOWN, 64 usage or config error.

The CLI reads ``--config``, else ``$CORESTORE_CONFIG``, else ``./corestore.toml`` when present
(the library itself never reads the working directory; a command run by a person may).

The core's commands are plain functions listed in :data:`COMMANDS`; importing a module registers
nothing. A command that lives outside the core (a contrib package, an application) is an entry
point in the ``corestore.cli`` group whose target is a callable ``register(subparsers)`` that
calls :func:`add_command` (site/cli.md, "Adding a command"). ``python -m corestore``,
``python -m corestore.cli`` and the ``corestore`` console script all run :func:`main`.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .. import registry
from ..check import check_profile
from ..errors import ConfigError, PluginError, StoreError
from ..health import HealthStatus
from ..profiles import BUILTIN_PROFILES, load_config, resolve_profile
from ..redact import redact_url
from . import backup as _backup
from . import doctor as _doctor
from . import health as _health
from ._common import EXIT_USAGE, AddArguments, Parser, Run, add_command, config_path, emit

__all__ = [
    "main",
    "EXIT_USAGE",
    "build_parser",
    "COMMANDS",
    "CLI_ENTRY_POINT_GROUP",
    "add_command",
    "command",
    "config_path",
    "emit",
]

logger = logging.getLogger(__name__)

#: Entry-point group of commands that live outside the core: ``name = "package.module:register"``,
#: where ``register(subparsers)`` calls :func:`add_command`.
CLI_ENTRY_POINT_GROUP = "corestore.cli"

#: The core's commands: name -> (help, add_arguments, run), in ``--help`` order (filled below).
COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {}


def command(name: str, help: str) -> Callable[[AddArguments], Callable[..., Any]]:
    """Add a core command to :data:`COMMANDS` (for code in this module): decorate its
    ``add_arguments``; its runner is ``add_arguments.run``. Commands outside the core use the
    ``corestore.cli`` entry-point group instead."""

    def deco(add_arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[..., Any]:
        def bind(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
            COMMANDS[name] = (help, add_arguments, run)
            return run

        add_arguments.run = bind  # type: ignore[attr-defined]
        return add_arguments

    return deco


# -- plugins -------------------------------------------------------------------------------------
def _plugins_args(p: argparse.ArgumentParser) -> None:
    pass


def _profiles_using(cfg: Any) -> dict[str, list[str]]:
    names = cfg.profile_names() if cfg else sorted(BUILTIN_PROFILES)
    users: dict[str, list[str]] = {}
    for pname in names:
        prof = resolve_profile(pname, config=cfg, path=":memory:")
        for plugin in prof.plugins:
            users.setdefault(plugin, []).append(pname)
    return users


def run_plugins(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args))
    users = _profiles_using(cfg)
    rows: list[dict[str, Any]] = []
    for name, ep in sorted(registry.discover().items()):
        dist = getattr(ep, "dist", None)
        rows.append({
            "name": name,
            "target": ep.value,
            "distribution": f"{dist.name} {dist.version}" if dist else None,
            "profiles": users.get(name, []),
        })
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'name':<{width}}  {'enabled by profiles':<28}  target"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {', '.join(r['profiles']) or '-':<28}  {r['target']}")
    emit(args, {"plugins": rows}, "\n".join(lines))
    return 0


# -- profiles ------------------------------------------------------------------------------------
def _profiles_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true",
                   help="run every check corestore.open() runs short of opening the database file "
                        "(plugins, settings, hooks, paths); exit 64 on anything open() would refuse")


def run_profiles(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args))
    databases = {}
    if cfg:  # bindings first: a bad profile is reported with the same message open(NAME) gives
        for dname, binding in sorted(cfg.databases.items()):
            prof = resolve_profile(binding.profile, config=cfg, path=binding.path, binding=binding)
            if args.check:
                check_profile(prof)
            databases[dname] = {"path": redact_url(binding.path), "profile": binding.profile, "plugins": list(prof.plugins)}
    out = []
    for pname in cfg.profile_names() if cfg else sorted(BUILTIN_PROFILES):
        prof = resolve_profile(pname, config=cfg, path=":memory:")
        entry: dict[str, Any] = {
            "name": pname,
            "plugins": list(prof.plugins),
            "pragmas": dict(prof.pragmas),
            "settings": {k: dict(v) for k, v in prof.settings.items()},
            "read_only": prof.read_only,
            "driver": prof.driver,
        }
        if args.check:
            check_profile(prof)
            entry["check"] = "ok"
        out.append(entry)
    lines = [f"config: {cfg.source if cfg else '(none: built-in profiles only)'}"]
    for entry in out:
        lines.append(f"  {entry['name']:<12} plugins: {', '.join(entry['plugins']) or '-'}"
                     + ("  [ok]" if args.check else ""))
    for dname, d in databases.items():
        lines.append(f"  database {dname}: {d['path']} (profile {d['profile']})" + ("  [ok]" if args.check else ""))
    emit(args, {"config": cfg.source if cfg else None, "profiles": out, "databases": databases}, "\n".join(lines))
    return 0


# -- demo ----------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="directory for the demo database (default: a new temporary directory)")
    p.add_argument("--threads", type=int, default=4, help="writer threads (default 4)")
    p.add_argument("--seconds", type=float, default=2.0, help="how long to write (default 2)")


def run_demo(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.seconds <= 0:
        raise ConfigError(f"--threads must be >= 1 and --seconds > 0 (got --threads {args.threads} "
                          f"--seconds {args.seconds:g})")
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        return _run_demo(args, args.dir)
    with tempfile.TemporaryDirectory(prefix="corestore-demo-") as directory:  # removed afterwards
        return _run_demo(args, directory)


def _run_demo(args: argparse.Namespace, directory: str) -> int:
    import peewee

    from ..profiles import Profile
    from ..store import open as open_store

    path = os.path.join(directory, "demo.db")
    base = resolve_profile("default", config=load_config(config_path(args)), path=path)
    installed = registry.discover()
    plugins = base.plugins + (("accounting",) if "accounting" in installed and "accounting" not in base.plugins else ())
    profile: Profile = attrs.evolve(base, plugins=plugins)

    class Event(peewee.Model):
        thread = peewee.IntegerField()
        seq = peewee.IntegerField()
        payload = peewee.TextField()

    class Usage(peewee.Model):
        thread = peewee.IntegerField()
        tokens = peewee.IntegerField()
        ts = peewee.FloatField(null=True)

    def setup(store: Any) -> None:
        store.bind([Event, Usage])
        store.database.create_tables([Event, Usage])

    store = open_store(profile, setup=setup)
    acc = store.plugins.get("accounting")
    counts = {"writes": 0, "submitted": 0}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def worker(n: int) -> None:
        seq = 0
        while time.monotonic() < stop:
            seq += 1
            try:
                def write(seq: int = seq) -> Any:
                    return Event.create(thread=n, seq=seq, payload="x" * 64)
                store.run(write, name="demo-write")
                with lock:
                    counts["writes"] += 1
                if acc is not None and acc.submit(Usage, {"thread": n, "tokens": seq % 100}):
                    with lock:
                        counts["submitted"] += 1
            except StoreError as err:
                with lock:
                    key = err.kind.name if err.kind else type(err).__name__
                    errors[key] = errors.get(key, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,), name=f"demo-writer-{i}") for i in range(args.threads)]
    for t in threads:
        t.start()
    tty = sys.stdout.isatty() and not args.json
    while any(t.is_alive() for t in threads):
        if tty:
            with lock:
                line = f"\r{counts['writes']:>7} writes  {counts['submitted']:>7} accounted  errors: {sum(errors.values())}"
            sys.stdout.write(line)
            sys.stdout.flush()
        time.sleep(0.2)
    for t in threads:
        t.join()
    if tty:
        sys.stdout.write("\n")
    if acc is not None:
        acc.flush(5.0)
    report = store.health()
    acc_stats = acc.stats() if acc is not None else None
    with store.read():
        rows = Event.select().count()
        usage_rows = Usage.select().count() if acc is not None else 0
    store.close()
    data = {
        "database": path,
        "kept": bool(args.dir),
        "profile": list(profile.plugins),
        "threads": args.threads,
        "seconds": args.seconds,
        "writes": counts["writes"],
        "rows": rows,
        "accounted_rows": usage_rows,
        "errors": errors,
        "health": report.to_dict(),
        "accounting": {k: v for k, v in acc_stats.items() if isinstance(v, (int, float))} if acc_stats else None,
    }
    lines = [
        f"database   {path}" + ("" if args.dir else " (a temporary directory, removed on exit; --dir keeps it)"),
        f"plugins    {', '.join(profile.plugins)}",
        f"writes     {counts['writes']} committed by {args.threads} threads in {args.seconds:g} s ({rows} rows in the table)",
        f"errors     {', '.join(f'{k}={v}' for k, v in sorted(errors.items())) or 'none'}",
    ]
    if acc_stats is not None:
        lines.append(
            f"accounting submitted={acc_stats['submitted']} written={acc_stats['written']} "
            f"dropped={acc_stats['dropped']} rejected={acc_stats['rejected']} dead_lettered={acc_stats['dead_lettered']} "
            f"pending={acc_stats['pending']} ({usage_rows} rows in the table)"
        )
    lines.append(f"health     {report.status.name}")
    width = max([len(name) for name in report.components] + [15])
    for name, comp in report.components.items():
        lines.append(f"  {name:<{width}}  {comp.status.name:<9} {comp.summary}")
    emit(args, data, "\n".join(lines))
    return report.status.exit_code


COMMANDS.update({
    "plugins": ("list the plugins installed through entry points and the profiles enabling them", _plugins_args, run_plugins),
    "profiles": ("show the resolved profiles and database bindings (--check validates them)", _profiles_args, run_profiles),
    "demo": ("run a short multi-threaded write workload on an embedded database and report", _demo_args, run_demo),
    "doctor": (_doctor.HELP, _doctor.add_arguments, _doctor.run_doctor),
    "health": (_health.HELP, _health.add_arguments, _health.run_health),
    "backup": (_backup.HELP, _backup.add_arguments, _backup.run_backup),
})


# -- main ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: the core's (:data:`COMMANDS`), then the entry points'."""
    parser = Parser(prog="corestore", description="SQLite storage that survives real failures.")
    parser.add_argument("--config", help="TOML config (default: $CORESTORE_CONFIG, else ./corestore.toml if present)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    parser.add_argument("--version", action="version", version=f"corestore {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        add_command(sub, name, help_text, add_arguments, run)
    _load_optional_commands(sub)
    return parser


def _version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("corestore")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source tree)
        from .. import __version__

        return __version__


def _load_optional_commands(subparsers: Any) -> None:
    """Add the commands of the ``corestore.cli`` entry-point group: each entry point's target is
    called with ``subparsers`` and adds its command through :func:`add_command`. One that fails
    to load or register, or that takes the name of a command already there, is logged and left
    out: a broken extension must not take the rest of the CLI down."""
    for ep in sorted(importlib.metadata.entry_points(group=CLI_ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in subparsers.choices:
            logger.warning("CLI extension %r (%s) left out: a command of that name exists", ep.name, ep.value)
            continue
        try:
            register = ep.load()
            if not callable(register):
                raise TypeError(f"{ep.value} is not callable; a {CLI_ENTRY_POINT_GROUP} entry point names a "
                                "function register(subparsers) that calls corestore.cli.add_command")
            register(subparsers)
        except Exception as err:  # noqa: BLE001 - see the docstring
            logger.warning("CLI extension %r (%s) failed to load: %s: %s", ep.name, ep.value, type(err).__name__, err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = getattr(args, "_corestore_run", None)
    if not args.command or run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        try:
            code: int = run(args)
        except (ConfigError, PluginError) as err:
            code = _fail(args, err, EXIT_USAGE)
        except StoreError as err:
            status = HealthStatus.DOWN if err.classification and err.classification.is_fault else HealthStatus.DEGRADED
            code = _fail(args, err, status.exit_code)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader went away (`corestore plugins | head -1`): not an error of ours; point stdout
        # at /dev/null so the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _fail(args: argparse.Namespace, err: BaseException, code: int) -> int:
    """Report ``err`` on stderr; with ``--json`` also a JSON object on stdout (``error``,
    ``exit_code``, ``command``), so a script always gets valid JSON."""
    print(f"corestore {args.command}: {err}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"command": args.command, "error": str(err), "error_type": type(err).__name__,
                          "exit_code": code}, indent=2, sort_keys=True))
    return code

