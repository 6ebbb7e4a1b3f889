"""``corestore health NAME|PATH``: print a store's :class:`~corestore.HealthReport`, from the
snapshot its profile's ``health`` plugin writes (when it does, and the writing process is still
alive and has not closed the store), else by opening the database read-only through its profile
(``mode=ro``: the journal mode is never switched, no snapshot is written).

Exit codes: 0 UP, 1 DEGRADED, 2 DOWN, 64 usage or configuration error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import ConfigError, StoreError
from ..health import HealthStatus, to_jsonable
from ..sidecar_formats import read_snapshot, resolve_snapshot_path
from ._common import config_path

__all__ = ["HELP", "add_arguments", "run_health", "format_health"]

logger = logging.getLogger(__name__)

HELP = "print a database's health report (from its snapshot, else opened read-only)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``corestore health``."""
    p.add_argument("target", metavar="NAME|PATH", help="a database bound in [databases], or a file path")
    p.add_argument("--profile", help="profile for a PATH (default: 'default'; for a NAME: its binding's)")


def _pid_alive(pid: Any) -> bool | None:
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resolve_target(args: argparse.Namespace) -> Any:
    from ..opening import looks_like_bare_name
    from ..profiles import load_config, resolve_profile

    cfg = load_config(config_path(args))
    target = args.target
    binding = cfg.databases.get(target) if cfg else None
    if binding is not None:
        return resolve_profile(args.profile or binding.profile, config=cfg, path=binding.path, binding=binding)
    if looks_like_bare_name(target) and target != ":memory:":
        known = ", ".join(sorted(cfg.databases)) if cfg and cfg.databases else "(none)"
        raise ConfigError(f"{cfg.source if cfg else 'no config file'}: {target!r} is not bound in [databases] "
                          f"(bound: {known}); give a file path (e.g. './{target}.db') or --config")
    if target == ":memory:":
        raise ConfigError("':memory:' lives only inside the process that opened it; nothing to check from outside")
    return resolve_profile(args.profile or "default", config=cfg, path=target)


def _synthetic(path: str, profile: str, status: HealthStatus, summary: str, **details: Any) -> dict[str, Any]:
    return {
        "status": status.value, "database": path, "profile": profile,
        "checked_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "components": {"database": {"status": status.value, "summary": summary, "details": to_jsonable(details)}},
    }


def run_health(args: argparse.Namespace) -> int:
    """Run ``corestore health``; returns the exit code."""
    profile = _resolve_target(args)
    path = os.path.realpath(os.path.abspath(os.path.expanduser(profile.path)))
    profile = attrs.evolve(profile, path=path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory; give the path of a database file")
    source: dict[str, Any] = {"kind": "live"}
    data: dict[str, Any] | None = None
    snapshot = _snapshot_for(profile)
    if snapshot is not None:
        source["snapshot_path"] = snapshot
        data, why = _read_live_snapshot(snapshot)
        if data is not None:
            meta = data.pop("snapshot")
            source.update(kind="snapshot", pid=meta.get("pid"), host=meta.get("host"), written_at=meta.get("written_at"))
        else:
            source["snapshot_skipped"] = why
    if data is None:
        data = _live_report(profile)
    status = HealthStatus(data["status"])
    data["source"] = source
    data.setdefault("not_checked", [])  # what a read-only report could not know (plugins that write)
    data["exit_code"] = status.exit_code
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(format_health(data))
    return status.exit_code


def _snapshot_for(profile: Any) -> str | None:
    """The snapshot file the profile's ``health`` plugin writes (None: it writes none), from
    the plugin's validated settings."""
    if "health" not in profile.plugins:
        return None
    from .. import registry

    health_cls = registry.load_plugin_class("health", where=profile.origin)
    settings = registry.build_settings(health_cls, profile.settings_for("health"), where=profile.origin)
    return resolve_snapshot_path(getattr(settings, "snapshot_path", None), profile.path, profile.config_dir)


def _read_live_snapshot(snapshot: str) -> tuple[dict[str, Any] | None, str]:
    """The snapshot when it speaks for a running store; else None and why it was skipped."""
    try:
        data = read_snapshot(snapshot)
    except FileNotFoundError:
        return None, "no snapshot written yet"
    except (OSError, ValueError) as err:
        return None, str(err)
    meta = data["snapshot"]
    if meta.get("closed"):
        return None, f"the writer (pid {meta.get('pid')}) closed the store at {meta.get('written_at')}"
    if meta.get("host") == socket.gethostname() and _pid_alive(meta.get("pid")) is False:
        return None, f"the writer (pid {meta.get('pid')}) is no longer running"
    return data, ""


def _live_report(profile: Any) -> dict[str, Any]:
    """Open the database read-only through its profile (no snapshot, no watcher) and report."""
    from ..store import open as open_store

    path = profile.path
    if not os.path.exists(path):
        return _synthetic(path, profile.name, HealthStatus.DOWN, "the database file does not exist (not created)")
    from .. import registry

    settings = {name: dict(values) for name, values in profile.settings.items()}
    if "health" in settings:
        for key in ("snapshot_path", "watch_interval_s"):
            settings["health"].pop(key, None)
    # a plugin that writes (accounting) cannot run on a read-only open: leave it out and say so
    writers = [name for name in profile.plugins
               if getattr(registry.load_plugin_class(name, where=profile.origin), "writes", False)]
    not_checked = {
        name: {"status": HealthStatus.UNKNOWN.value,
               "summary": f"not checked: the {name} plugin writes, and its state (queue, dead letters, episode) lives "
                          "in the process that runs it; this report opened the database read-only",
               "details": {"checked": False}}
        for name in writers
    }
    ro = attrs.evolve(profile, read_only=True, settings={k: v for k, v in settings.items() if k not in writers},
                      plugins=tuple(p for p in profile.plugins if p not in writers))
    try:
        store = open_store(ro)
    except ConfigError:
        raise
    except StoreError as err:
        c = err.classification
        data = _synthetic(path, profile.name, HealthStatus.DOWN,
                          f"cannot open read-only: {c.name if c and c.name else type(err).__name__}", error=str(err))
        data["components"].update(not_checked)
        data["not_checked"] = sorted(not_checked) + ["every plugin (the database could not be opened)"]
        return data
    try:
        data = store.health().to_dict()
    finally:
        store.close()
    data["components"].update(not_checked)
    data["not_checked"] = sorted(not_checked)
    return data


def format_health(data: Mapping[str, Any]) -> str:
    """The human table of a report (as ``to_dict()`` gives it, plus ``source``)."""
    source = data.get("source", {})
    if source.get("kind") == "snapshot":
        origin = f"snapshot {source.get('snapshot_path')} written by pid {source.get('pid')} at {source.get('written_at')}"
    else:
        origin = "checked now, read-only"
        if source.get("snapshot_skipped"):
            origin += f" (snapshot skipped: {source['snapshot_skipped']})"
    comps = data.get("components", {})
    width = max([len(n) for n in comps] + [9])
    lines = [f"corestore health: {data.get('database')} (profile {data.get('profile')})", f"  {origin}"]
    if data.get("not_checked"):
        lines.append(f"  not checked (a read-only report cannot know): {', '.join(data['not_checked'])}")
    lines.append(f"  {'COMPONENT':<{width}}  {'STATUS':<8}  SUMMARY")
    for name, comp in comps.items():
        lines.append(f"  {name:<{width}}  {str(comp.get('status', '')).upper():<8}  {comp.get('summary', '')}")
        error = (comp.get("details") or {}).get("error")
        if error:
            lines.append(f"  {'':<{width}}  {'':<8}  {error}")
    status = HealthStatus(data["status"])
    lines.append(f"status: {status.name} (exit {status.exit_code})")
    return "\n".join(lines)
