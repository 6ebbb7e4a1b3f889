"""Profiles: the per-database policy (plugins, their settings, pragmas, retry budget), and the
TOML configuration that names them.

A :class:`Profile` is frozen, deeply immutable and hashable, so ``attrs.evolve(profile, ...)``
gives a new one and the store cache keys on the value. Configuration is read only from the
``config=`` argument or the ``CORESTORE_CONFIG`` variable: the library never looks in the working
directory (a service must not behave differently depending on where it was started).

Resolution rules (also on the site's profile reference):

* a profile with ``extends`` starts from its parent; one named like a built-in (``default``,
  ``minimal``) without ``extends`` starts from that built-in; any other starts empty;
* ``plugins`` replaces the inherited list, then ``enable`` appends and ``disable`` removes;
* ``pragmas``, ``retry`` and each plugin's ``settings`` table merge key by key;
* ``[databases.NAME]`` binds a name to a ``path`` (relative paths are relative to the config
  file's directory, never the working directory), a ``profile`` (default ``"default"``) and the
  same override keys as a profile.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import tomllib
from typing import Any, Iterable, Mapping

import attrs

from .errors import ConfigError
from .frozen import FrozenMap, freeze
from .settings import C_INT_MAX, INT64_MAX, number

__all__ = [
    "Profile",
    "RetryPolicy",
    "Config",
    "BUILTIN_PROFILES",
    "DEFAULT_PLUGINS",
    "load_config",
    "resolve_profile",
    "validate_pragma",
    "ENV_CONFIG",
    "with_overrides",
]

ENV_CONFIG = "CORESTORE_CONFIG"
DEFAULT_PLUGINS = ("wal_guard", "wal_invariants", "circuit_breaker", "health")
DRIVERS = ("sqlite3", "apsw")

# Pragmas a profile may set, with the values SQLite accepts where they are an enumeration.
_ENUM_PRAGMAS: dict[str, tuple[str, ...]] = {
    "journal_mode": ("delete", "truncate", "persist", "memory", "wal", "off"),
    "synchronous": ("off", "normal", "full", "extra", "0", "1", "2", "3"),
    "locking_mode": ("normal", "exclusive"),
    "temp_store": ("default", "file", "memory", "0", "1", "2"),
    "auto_vacuum": ("none", "full", "incremental", "0", "1", "2"),
    "secure_delete": ("on", "off", "fast", "0", "1", "true", "false"),
}
_BOOL_PRAGMAS = frozenset({
    "foreign_keys", "fullfsync", "checkpoint_fullfsync", "recursive_triggers", "cell_size_check",
    "trusted_schema", "query_only", "defer_foreign_keys", "automatic_index", "reverse_unordered_selects",
    "ignore_check_constraints", "legacy_alter_table", "read_uncommitted",
})
_INT_PRAGMAS = frozenset({
    "busy_timeout", "cache_size", "wal_autocheckpoint", "journal_size_limit", "mmap_size", "page_size",
    "max_page_count", "threads", "analysis_limit", "cache_spill", "soft_heap_limit", "hard_heap_limit",
    "user_version", "application_id",
})
KNOWN_PRAGMAS = frozenset(_ENUM_PRAGMAS) | _BOOL_PRAGMAS | _INT_PRAGMAS
# SQLite reads these into a C int (the others into a 64-bit integer): (lowest, highest) allowed.
_INT_PRAGMA_RANGES: dict[str, tuple[int, int]] = {
    "busy_timeout": (0, C_INT_MAX),
    "wal_autocheckpoint": (-C_INT_MAX - 1, C_INT_MAX),
    "cache_size": (-C_INT_MAX - 1, C_INT_MAX),
    "threads": (0, C_INT_MAX),
    "analysis_limit": (0, C_INT_MAX),
    "page_size": (512, 65536),
    "user_version": (-C_INT_MAX - 1, C_INT_MAX),
    "application_id": (-C_INT_MAX - 1, C_INT_MAX),
    "cache_spill": (-C_INT_MAX - 1, C_INT_MAX),
}
#: The largest nesting of tables/arrays a config file may have (deeper is refused, not a RecursionError).
MAX_CONFIG_DEPTH = 32


def validate_pragma(name: str, value: Any, *, where: str = "<profile>") -> Any:
    """Check one pragma name and value; return the value normalised (lowercase strings, bools
    as 0/1). Raises :class:`ConfigError` naming ``where`` and what is allowed."""
    if name not in KNOWN_PRAGMAS:
        raise ConfigError(
            f"{where}: unknown pragma {name!r}; allowed: {', '.join(sorted(KNOWN_PRAGMAS))}"
        )
    if name in _ENUM_PRAGMAS:
        text = str(value).lower()
        if isinstance(value, bool) or text not in _ENUM_PRAGMAS[name]:
            raise ConfigError(
                f"{where}: pragma {name} = {value!r} is not allowed; allowed: {', '.join(_ENUM_PRAGMAS[name])}"
            )
        return text
    if name in _BOOL_PRAGMAS:
        if isinstance(value, bool) or value in (0, 1):
            return int(value)
        raise ConfigError(f"{where}: pragma {name} = {value!r} must be true or false")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: pragma {name} = {value!r} must be an integer")
    low, high = _INT_PRAGMA_RANGES.get(name, (-INT64_MAX - 1, INT64_MAX))
    if name == "busy_timeout" and not low <= value <= high:
        raise ConfigError(f"{where}: pragma busy_timeout = {value!r} must be >= 0 (milliseconds) and <= {high} "
                          "(SQLite reads it into a C int)")
    if not low <= value <= high:
        raise ConfigError(f"{where}: pragma {name} = {value!r} must be an integer from {low} to {high} (SQLite's limit)")
    return value


def _pragmas_converter(value: Mapping[str, Any] | None) -> FrozenMap:
    return FrozenMap({k: validate_pragma(k, v) for k, v in (value or {}).items()})


def _settings_converter(value: Mapping[str, Any] | None) -> FrozenMap:
    out: dict[str, Any] = {}
    for plugin, table in (value or {}).items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"<profile>: settings.{plugin} must be a table of settings, got {table!r}")
        out[plugin] = freeze(table)
    return FrozenMap(out)


def _plugins_converter(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    names = tuple(str(v) for v in (value or ()))
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"<profile>: plugin(s) listed twice: {', '.join(sorted(dup))}")
    return names


def _positive(instance: Any, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"<profile>: retry.{attribute.name} = {value!r} must be a finite number >= 0")
    if value < 0:
        raise ConfigError(f"<profile>: retry.{attribute.name} = {value!r} must be >= 0")


def _count(instance: Any, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise ConfigError(f"<profile>: retry.{attribute.name} = {value!r} must be an integer from 0 to 1000000 (attempts)")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How ``store.run()`` retries: BUSY and TRANSIENT_IO within ``budget_s`` seconds in total
    (and the call's deadline), at most ``busy_attempts`` / ``transient_attempts`` attempts, with
    jittered exponential backoff from ``base_delay_s`` to ``max_delay_s``. ``fatal_attempts`` > 1
    retries FATAL_IO after reopening the connection (off by default: a failing disk is not
    retried into)."""

    busy_attempts: int = attrs.field(default=8, validator=_count)
    transient_attempts: int = attrs.field(default=4, validator=_count)
    fatal_attempts: int = attrs.field(default=1, validator=_count)
    base_delay_s: float = attrs.field(default=0.005, validator=_positive)
    max_delay_s: float = attrs.field(default=0.5, validator=_positive)
    budget_s: float = attrs.field(default=10.0, validator=_positive)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, where: str = "<profile>") -> "RetryPolicy":
        fields = attrs.fields_dict(cls)
        for key, value in raw.items():
            if key not in fields:
                raise ConfigError(f"{where}: unknown retry key {key!r}; allowed: {', '.join(fields)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: retry.{key} = {value!r} must be a number")
        try:
            return cls(**raw)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def _retry_converter(value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy:
    if isinstance(value, RetryPolicy):
        return value
    return RetryPolicy.from_mapping(value or {})


def _driver_validator(instance: Any, attribute: Any, value: str) -> None:
    if value not in DRIVERS:
        raise ConfigError(f"<profile>: driver = {value!r} is not allowed; allowed: {', '.join(DRIVERS)}")


def _vfs_validator(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"<profile>: vfs = {value!r} must be the name of a registered SQLite VFS (a non-empty string)")
    if instance.driver != "apsw":
        raise ConfigError(f"<profile>: vfs = {value!r} needs driver = 'apsw' (the sqlite3 driver cannot select a VFS); "
                          f"driver is {instance.driver!r}")


_init_timeout = number(0, 86400.0, low_inclusive=False, unit="seconds")


def _init_timeout_validator(instance: Any, attribute: Any, value: Any) -> None:
    try:
        _init_timeout(instance, attribute, value)
    except ConfigError as err:
        raise ConfigError(f"<profile>: {err}") from None


@attrs.frozen(kw_only=True)
class Profile:
    """The resolved, frozen policy of one store.

    ``plugins`` is ordered: hooks run in this order (the first listed answers ``classify_error``
    first). ``settings`` maps a plugin name to its raw settings table, converted into the
    plugin's ``Settings`` class at open. ``origin`` says where the profile came from (for error
    messages) and takes no part in equality.

    A profile built in code is named ``"custom"`` unless given a ``name``: it starts empty (no
    plugins, no pragmas; SQLite's own defaults), it is not the built-in ``default``. To start
    from ``default`` in code use ``corestore.open(path, enable=[...], disable=[...],
    settings={...})``. ``config_dir`` is the directory of the config file the profile came from
    (None in code): relative paths in plugin settings (``health.snapshot_path``) are relative to it.
    """

    name: str = "custom"
    path: str = ""
    driver: str = attrs.field(default="sqlite3", validator=_driver_validator)
    vfs: str | None = attrs.field(default=None, validator=_vfs_validator)
    pragmas: FrozenMap = attrs.field(factory=FrozenMap, converter=_pragmas_converter)
    plugins: tuple[str, ...] = attrs.field(default=(), converter=_plugins_converter)
    settings: FrozenMap = attrs.field(factory=FrozenMap, converter=_settings_converter)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, converter=_retry_converter)
    read_only: bool = False
    #: Longest wait for the cross-process init lock (``setup`` and the WAL switch run under it).
    init_timeout_s: float = attrs.field(default=30.0, validator=_init_timeout_validator)
    config_dir: str | None = None
    origin: str = attrs.field(default="<code>", eq=False, repr=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, name: str = "custom", origin: str = "<code>",
                     config_dir: str | None = None) -> "Profile":
        """Build a profile from a plain mapping (no inheritance), naming ``origin`` in errors."""
        allowed = ("path", "driver", "vfs", "pragmas", "plugins", "settings", "retry", "read_only", "init_timeout_s")
        for key in raw:
            if key not in allowed:
                raise ConfigError(f"{origin}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        try:
            return cls(name=name, origin=origin, config_dir=config_dir, **dict(raw))
        except ConfigError as err:
            raise ConfigError(str(err).replace("<profile>", origin, 1)) from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{origin}: {err}") from None

    def settings_for(self, plugin: str) -> Mapping[str, Any]:
        """The raw settings table for ``plugin`` (empty when the profile sets none)."""
        return self.settings.get(plugin, FrozenMap())


#: What the built-in ``default`` adds when the stdlib ``sqlite3`` links a SQLite with the WAL-reset
#: bug (:mod:`corestore.sqlitebugs`): the mitigation (site/plugins/checkpoint_governor.md).
WAL_RESET_MITIGATION = ("checkpoint_governor", "write_gate")


def _stdlib_has_wal_reset_bug() -> bool:
    from .sqlitebugs import affecting

    return any(bug.id == "wal-reset" for bug in affecting("sqlite3"))


_MITIGATE_BY_DEFAULT = _stdlib_has_wal_reset_bug()


def _builtin_default_plugins() -> list[str]:
    return list(DEFAULT_PLUGINS) + (list(WAL_RESET_MITIGATION) if _MITIGATE_BY_DEFAULT else [])


def _builtin_default_pragmas() -> dict[str, Any]:
    pragmas: dict[str, Any] = {
        "busy_timeout": 5000,
        "journal_mode": "wal",
        "synchronous": "full",
        # off where the governor mitigates the WAL-reset bug: SQLite's own checkpoints are PASSIVE
        "wal_autocheckpoint": 0 if _MITIGATE_BY_DEFAULT else 1000,
    }
    if sys.platform == "darwin":  # plain fsync is not durable on macOS
        pragmas.update(fullfsync=1, checkpoint_fullfsync=1)
    return pragmas


BUILTIN_PROFILES: Mapping[str, Mapping[str, Any]] = FrozenMap({
    "default": {"plugins": _builtin_default_plugins(), "pragmas": _builtin_default_pragmas()},
    "minimal": {"plugins": [], "pragmas": {"busy_timeout": 5000}},
})

_PROFILE_KEYS = ("extends", "plugins", "enable", "disable", "pragmas", "settings", "retry", "read_only", "driver", "vfs",
                 "init_timeout_s")
_DATABASE_KEYS = ("path", "profile") + tuple(k for k in _PROFILE_KEYS if k != "extends")


@attrs.frozen(kw_only=True)
class Binding:
    """A ``[databases.NAME]`` table: where the database lives, its profile and overrides."""

    name: str
    path: str
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
        raise ConfigError(f"{source}: line {line}: not valid UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); "
                          "a TOML config file must be UTF-8") from None
    _check_depth(text, source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested more than Python can parse; at most {MAX_CONFIG_DEPTH} levels are allowed") from None
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
        if "path" not in table or not isinstance(table["path"], str) or not table["path"]:
            raise ConfigError(f"{where}: key 'path' is required (a file path, or ':memory:')")
        pname = table.get("profile", "default")
        if not isinstance(pname, str):
            raise ConfigError(f"{where}: key 'profile' must be a profile name")
        if pname not in BUILTIN_PROFILES and pname not in profiles:
            raise ConfigError(
                f"{where}: key 'profile' names unknown profile {pname!r}; known: "
                f"{', '.join(sorted(set(BUILTIN_PROFILES) | set(profiles)))}"
            )
        dpath = table["path"]
        if dpath != ":memory:" and not os.path.isabs(dpath):
            dpath = os.path.join(base_dir, dpath)
        overrides = {k: v for k, v in table.items() if k not in ("path", "profile")}
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
        if key in table and (not isinstance(table[key], (list, tuple)) or not all(isinstance(v, str) for v in table[key])):
            raise ConfigError(f"{where}: key {key!r} must be a list of plugin names, got {table[key]!r}")
    for key in ("pragmas", "settings", "retry"):
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
    if "driver" in table and table["driver"] not in DRIVERS:
        raise ConfigError(f"{where}: key 'driver' = {table['driver']!r} is not allowed; allowed: {', '.join(DRIVERS)}")
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
    out = {
        "plugins": list(base.get("plugins", [])),
        "pragmas": dict(base.get("pragmas", {})),
        "settings": {k: dict(v) for k, v in base.get("settings", {}).items()},
        "retry": dict(base.get("retry", {})),
    }
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
    raw: dict[str, Any] = {"plugins": list(profile.plugins),
                           "settings": {k: dict(v.thaw() if hasattr(v, "thaw") else v) for k, v in profile.settings.items()}}
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
