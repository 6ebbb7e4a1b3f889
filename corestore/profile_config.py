"""The TOML configuration: loading and checking a config file, resolving a profile name (with
``extends`` and a ``[databases.NAME]`` binding's overrides) into a :class:`Profile`, and the
``enable``/``disable``/``settings`` overrides of ``corestore.open()``. Import these from
:mod:`corestore.profiles`; the resolution rules are in its docstring.
"""
from __future__ import annotations

import os
import threading
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import ConfigError
from .frozen import FrozenMap, freeze
from .profile_model import BUILTIN_PROFILES, DRIVERS, PG_DRIVERS, Profile, RetryPolicy, _init_timeout, validate_pragma
from .redact import check_server_url, is_server_url, redact_url

__all__ = ["Binding", "Config", "load_config", "resolve_profile", "with_overrides", "ENV_CONFIG", "MAX_CONFIG_DEPTH"]

ENV_CONFIG = "CORESTORE_CONFIG"
#: The largest nesting of tables/arrays a config file may have (deeper is refused, not a RecursionError).
MAX_CONFIG_DEPTH = 32


_PROFILE_KEYS = ("extends", "plugins", "enable", "disable", "pragmas", "settings", "retry", "read_only", "driver",
                 "vfs", "init_timeout_s", "server_settings")
_DATABASE_KEYS = ("path", "url", "profile") + tuple(k for k in _PROFILE_KEYS if k != "extends")


@attrs.frozen(kw_only=True)
class Binding:
    """A ``[databases.NAME]`` table: where the database lives, its profile and overrides."""

    name: str
    #: the file path, or (a ``url`` binding) the PostgreSQL URL, whose ``repr`` is redacted
    path: str = attrs.field(repr=lambda p: repr(redact_url(p)))
    profile: str
    overrides: FrozenMap


@attrs.frozen(kw_only=True)
class Config:
    """A parsed configuration file: raw profile tables and database bindings."""

    source: str
    profiles: FrozenMap
    databases: Mapping[str, Binding]

    def profile_names(self) -> list[str]:
        return sorted(set(BUILTIN_PROFILES) | set(self.profiles))


_config_cache: dict[tuple[str, float, int], Config] = {}
_config_lock = threading.Lock()


def load_config(path: str | os.PathLike[str] | None) -> Config | None:
    """Read and check a TOML config (``path``, else ``$CORESTORE_CONFIG``, else none at all).

    Everything in it is validated here, before anything is opened: unknown keys, wrong types,
    unknown parents and ``extends`` cycles are a :class:`ConfigError` naming the file, the table
    and the key.
    """
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
        if path is None:
            return None
    source = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    key = (source, st.st_mtime, st.st_size)
    with _config_lock:
        cached = _config_cache.get(key)
    if cached is not None:
        return cached
    try:
        with open(source, "rb") as fh:
            data = fh.read()
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a TOML config file") from None
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line}: not valid UTF-8 (byte {data[err.start]:#04x} at offset "
                          f"{err.start}); a TOML config file must be UTF-8") from None
    _check_depth(text, source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested more than Python can parse; "
                          f"at most {MAX_CONFIG_DEPTH} levels are allowed") from None
    config = _parse_config(raw, source)
    for name in config.profiles:  # resolve every profile once so errors surface at load
        resolve_profile(name, config=config, path="")
    for binding in config.databases.values():  # and every binding with its overrides
        resolve_profile(binding.profile, config=config, path=binding.path, binding=binding)
    with _config_lock:
        _config_cache[key] = config
    return config


def _check_depth(text: str, source: str) -> None:
    """Refuse inline arrays/tables nested deeper than :data:`MAX_CONFIG_DEPTH` before parsing
    (a cheap upper bound: brackets and braces outside strings and comments)."""
    depth = 0
    quote = ""
    comment = False
    line = 1
    escaped = False
    for ch in text:
        if ch == "\n":
            line += 1
            comment = False
            if quote in ('"', "'"):
                quote = ""  # a newline ends a basic/literal string (multi-line strings are rare in configs)
            continue
        if comment:
            continue
        if quote:
            if quote == '"' and ch == "\\" and not escaped:
                escaped = True
                continue
            if ch == quote and not escaped:
                quote = ""
            escaped = False
            continue
        if ch in ('"', "'"):
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{source}: line {line}: arrays or tables nested more than {MAX_CONFIG_DEPTH} deep")
        elif ch in "]}":
            depth = max(0, depth - 1)


def _parse_config(raw: Mapping[str, Any], source: str) -> Config:
    for key in raw:
        if key not in ("profiles", "databases"):
            raise ConfigError(f"{source}: unknown top-level table [{key}]; allowed: [profiles.NAME], [databases.NAME]")
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, Mapping):
        raise ConfigError(f"{source}: [profiles] must be a table of tables")
    for pname, table in profiles.items():
        where = f"{source}: [profiles.{pname}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        _check_keys(table, _PROFILE_KEYS, where)
    databases: dict[str, Binding] = {}
    dbs = raw.get("databases", {})
    if not isinstance(dbs, Mapping):
        raise ConfigError(f"{source}: [databases] must be a table of tables")
    base_dir = os.path.dirname(source)
    for dname, table in dbs.items():
        where = f"{source}: [databases.{dname}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        _check_keys(table, _DATABASE_KEYS, where)
        if "url" in table:
            if "path" in table:
                raise ConfigError(f"{where}: give either 'path' (SQLite) or 'url' (PostgreSQL), not both")
            if not is_server_url(table["url"]):
                raise ConfigError(f"{where}: key 'url' must be a postgresql:// URL, got "
                                  f"{redact_url(str(table['url']))!r}")
            check_server_url(table["url"], where=f"{where}: key 'url'")
        elif "path" not in table or not isinstance(table["path"], str) or not table["path"]:
            raise ConfigError(f"{where}: key 'path' is required (a file path, or ':memory:'), "
                              "or 'url' for a PostgreSQL server")
        pname = table.get("profile", "postgresql" if "url" in table else "default")
        if not isinstance(pname, str):
            raise ConfigError(f"{where}: key 'profile' must be a profile name")
        if pname not in BUILTIN_PROFILES and pname not in profiles:
            raise ConfigError(
                f"{where}: key 'profile' names unknown profile {pname!r}; known: "
                f"{', '.join(sorted(set(BUILTIN_PROFILES) | set(profiles)))}"
            )
        dpath = table["url"] if "url" in table else table["path"]
        if dpath != ":memory:" and not os.path.isabs(dpath) and "url" not in table:
            dpath = os.path.join(base_dir, dpath)
        overrides = {k: v for k, v in table.items() if k not in ("path", "url", "profile")}
        _check_types(overrides, where)
        databases[dname] = Binding(name=dname, path=dpath, profile=pname, overrides=freeze(overrides))
    return Config(source=source, profiles=freeze(profiles), databases=databases)


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    _check_types(table, where)


def _check_types(table: Mapping[str, Any], where: str) -> None:
    for key in ("plugins", "enable", "disable"):
        if key in table and (not isinstance(table[key], (list, tuple))
                             or not all(isinstance(v, str) for v in table[key])):
            raise ConfigError(f"{where}: key {key!r} must be a list of plugin names, got {table[key]!r}")
    for key in ("pragmas", "settings", "retry", "server_settings"):
        if key in table and not isinstance(table[key], Mapping):
            raise ConfigError(f"{where}: key {key!r} must be a table, got {table[key]!r}")
    if "settings" in table:
        for plugin, sub in table["settings"].items():
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{where}: key 'settings.{plugin}' must be a table, got {sub!r}")
    if "read_only" in table and not isinstance(table["read_only"], bool):
        raise ConfigError(f"{where}: key 'read_only' must be true or false, got {table['read_only']!r}")
    if "extends" in table and not isinstance(table["extends"], str):
        raise ConfigError(f"{where}: key 'extends' must be a profile name, got {table['extends']!r}")
    if "driver" in table and table["driver"] not in DRIVERS + PG_DRIVERS:
        raise ConfigError(f"{where}: key 'driver' = {table['driver']!r} is not allowed; allowed: "
                          f"{', '.join(DRIVERS + PG_DRIVERS)}")
    if "vfs" in table and (not isinstance(table["vfs"], str) or not table["vfs"]):
        raise ConfigError(f"{where}: key 'vfs' = {table['vfs']!r} must be the name of a registered SQLite VFS "
                          "(a non-empty string; needs driver = 'apsw')")
    if "init_timeout_s" in table:
        try:
            _init_timeout(None, attrs.fields(Profile).init_timeout_s, table["init_timeout_s"])
        except ConfigError as err:
            raise ConfigError(f"{where}: key {err}") from None
    if "pragmas" in table:
        for pname, value in table["pragmas"].items():
            validate_pragma(pname, value, where=f"{where} key 'pragmas.{pname}'")
    if "retry" in table:
        RetryPolicy.from_mapping(table["retry"], where=f"{where} key 'retry'")


def _merge(base: dict[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    """Apply one profile/binding table on top of ``base`` (a resolved raw profile)."""
    out: dict[str, Any] = {
        "plugins": list(base.get("plugins", [])),
        "pragmas": dict(base.get("pragmas", {})),
        "settings": {k: dict(v) for k, v in base.get("settings", {}).items()},
        "retry": dict(base.get("retry", {})),
    }
    if "server_settings" in base or "server_settings" in table:
        out["server_settings"] = {**base.get("server_settings", {}), **table.get("server_settings", {})}
    for key in ("read_only", "driver", "vfs", "init_timeout_s"):
        if key in base:
            out[key] = base[key]
    if "plugins" in table:
        out["plugins"] = list(table["plugins"])
    for name in table.get("enable", ()):
        if name not in out["plugins"]:
            out["plugins"].append(name)
    for name in table.get("disable", ()):
        out["plugins"] = [p for p in out["plugins"] if p != name]
    out["pragmas"].update(table.get("pragmas", {}))
    for plugin, sub in table.get("settings", {}).items():
        out["settings"].setdefault(plugin, {}).update(sub)
    out["retry"].update(table.get("retry", {}))
    for key in ("read_only", "driver", "vfs", "init_timeout_s"):
        if key in table:
            out[key] = table[key]
    return out


def _resolve_raw(config: Config | None, name: str, chain: tuple[str, ...]) -> dict[str, Any]:
    source = config.source if config else "<built-in>"
    if name in chain:
        raise ConfigError(f"{source}: [profiles.{chain[0]}] key 'extends': cycle {' -> '.join(chain + (name,))}")
    table = config.profiles.get(name) if config else None
    if table is None:
        if name in BUILTIN_PROFILES:
            return _merge({}, BUILTIN_PROFILES[name])
        known = sorted(set(BUILTIN_PROFILES) | set(config.profiles if config else ()))
        where = f"{source}: [profiles.{chain[-1]}] key 'extends'" if chain else source
        raise ConfigError(f"{where}: unknown profile {name!r}; known: {', '.join(known)}")
    parent = table.get("extends")
    if parent is not None:
        base = _resolve_raw(config, parent, chain + (name,))
    elif name in BUILTIN_PROFILES:
        base = _merge({}, BUILTIN_PROFILES[name])
    else:
        base = {}
    return _merge(base, table)


def _govern_manual_checkpoints(raw: dict[str, Any]) -> None:
    """A profile that enables ``wal_guard`` and turns SQLite's automatic checkpoints off
    (``wal_autocheckpoint <= 0``) gets ``checkpoint_governor``, so its WAL can never grow unbounded
    (even when the profile's ``disable`` names it: set ``wal_autocheckpoint`` > 0 to run without)."""
    plugins = list(raw.get("plugins") or ())
    auto = (raw.get("pragmas") or {}).get("wal_autocheckpoint")
    if "wal_guard" in plugins and "checkpoint_governor" not in plugins and isinstance(auto, int) \
            and not isinstance(auto, bool) and auto <= 0:
        raw["plugins"] = plugins + ["checkpoint_governor"]


def resolve_profile(
    name: str,
    *,
    config: Config | None,
    path: str,
    binding: Binding | None = None,
) -> Profile:
    """Resolve profile ``name`` (with inheritance and the binding's overrides) for ``path``."""
    raw = _resolve_raw(config, name, ())
    origin = f"{config.source}: [profiles.{name}]" if config and name in config.profiles else f"profile {name!r}"
    if binding is not None:
        raw = _merge(raw, binding.overrides)
        origin = f"{config.source}: [databases.{binding.name}]" if config else origin
    if is_server_url(path):  # a PostgreSQL binding: the store is named by the redacted URL
        raw["url"] = path
        raw["path"] = redact_url(path)
    else:
        raw["path"] = path
    _govern_manual_checkpoints(raw)
    return Profile.from_mapping(raw, name=name, origin=origin,
                                config_dir=os.path.dirname(config.source) if config else None)


def with_overrides(
    profile: Profile,
    *,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Profile:
    """``profile`` with ``enable``/``disable``/``settings`` applied the way a profile table's keys
    of the same names apply (``corestore.open(path, enable=[...], ...)``): ``enable`` appends the
    plugins not already listed, ``disable`` removes plugins, ``settings`` merges key by key into
    each plugin's table. The name stays; ``origin`` says what was added in code."""
    if isinstance(enable, str) or isinstance(disable, str):
        raise ConfigError("corestore.open(): enable= and disable= take a list of plugin names, not a string")
    if settings is not None and not isinstance(settings, Mapping):
        raise ConfigError(f"corestore.open(): settings= must be a mapping of plugin name to a table, got {settings!r}")
    raw: dict[str, Any] = {
        "plugins": list(profile.plugins),
        "settings": {k: dict(v.thaw() if hasattr(v, "thaw") else v) for k, v in profile.settings.items()},
    }
    table: dict[str, Any] = {"enable": list(enable), "disable": list(disable), "settings": dict(settings or {})}
    _check_types(table, "corestore.open()")
    merged = _merge(raw, table)
    governed = {"plugins": merged["plugins"], "pragmas": dict(profile.pragmas)}
    _govern_manual_checkpoints(governed)  # disabling the governor never leaves a WAL unbounded
    merged["plugins"] = governed["plugins"]
    parts = [f"{k}={table[k]!r}" for k in ("enable", "disable", "settings") if table[k]]
    origin = f"{profile.origin} + corestore.open({', '.join(parts)})"
    try:
        return attrs.evolve(profile, plugins=merged["plugins"], settings=merged["settings"], origin=origin)
    except ConfigError as err:
        raise ConfigError(str(err).replace("<profile>", origin, 1)) from None
