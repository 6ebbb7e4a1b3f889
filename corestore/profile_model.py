"""The profile value types: :class:`Profile`, :class:`RetryPolicy`, the pragma rules and the
built-in profiles. Import them from :mod:`corestore.profiles` (the face of this module and
:mod:`corestore.profile_config`).

A :class:`Profile` is frozen, deeply immutable and hashable, so ``attrs.evolve(profile, ...)``
gives a new one and the store cache keys on the value.
"""
from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError
from .frozen import FrozenMap, freeze
from .settings import C_INT_MAX, INT64_MAX, number

__all__ = [
    "Profile",
    "RetryPolicy",
    "BUILTIN_PROFILES",
    "DEFAULT_PLUGINS",
    "WAL_RESET_MITIGATION",
    "DRIVERS",
    "PG_DRIVERS",
    "PG_DEFAULT_PLUGINS",
    "KNOWN_PRAGMAS",
    "validate_pragma",
]
DEFAULT_PLUGINS = ("wal_guard", "wal_invariants", "circuit_breaker", "health")
DRIVERS = ("sqlite3", "apsw")
#: The drivers of a PostgreSQL profile (one with a ``url``): psycopg 3 through peewee.
PG_DRIVERS = ("psycopg",)
#: The plugins of the built-in ``postgresql`` profile (the default for a PostgreSQL URL).
PG_DEFAULT_PLUGINS = ("circuit_breaker", "health")
#: The pragmas a PostgreSQL profile may keep: ``busy_timeout`` bounds the store's own waits for a
#: connection lock (it is not sent to the server; server settings go in ``server_settings``).
PG_PRAGMAS = frozenset({"busy_timeout"})

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
        raise ConfigError(f"{where}: pragma {name} = {value!r} must be an integer from {low} to {high} "
                          "(SQLite's limit)")
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
        raise ConfigError(f"<profile>: retry.{attribute.name} = {value!r} must be an integer from 0 to 1000000 "
                          "(attempts)")


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
    def from_mapping(cls, raw: Mapping[str, Any], *, where: str = "<profile>") -> RetryPolicy:
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
    allowed = PG_DRIVERS if instance.url else DRIVERS
    if value not in allowed:
        what = "a PostgreSQL profile (url set)" if instance.url else "a SQLite profile"
        raise ConfigError(f"<profile>: driver = {value!r} is not allowed for {what}; allowed: {', '.join(allowed)}")


def _default_driver(instance: Any) -> str:
    return PG_DRIVERS[0] if instance.url else DRIVERS[0]


def _url_validator(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        # a profile checked on its own (no path yet) may carry server_settings for the URLs it serves
        if instance.server_settings and instance.path:
            raise ConfigError(f"<profile>: server_settings needs a PostgreSQL url; {instance.path!r} is a SQLite "
                              "file (SQLite takes pragmas)")
        return
    from .redact import check_server_url, is_server_url, redact_url

    if not is_server_url(value):
        raise ConfigError(f"<profile>: url = {redact_url(str(value))!r} must start with postgresql:// or postgres://")
    check_server_url(value)  # a malformed URL (an unencoded / ? # @ in the password): ConfigError, redacted
    extra = sorted(k for k in instance.pragmas if k not in PG_PRAGMAS)
    if extra:
        raise ConfigError(f"<profile>: pragmas {', '.join(extra)} are SQLite's; a PostgreSQL profile (url set) allows "
                          f"only {', '.join(sorted(PG_PRAGMAS))} (put server parameters in server_settings)")
    if instance.vfs is not None:
        raise ConfigError("<profile>: vfs is SQLite's; a PostgreSQL profile (url set) has none")


def _url_repr(value: Any) -> str:
    from .redact import redact_url

    return "None" if value is None else repr(redact_url(value))


_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def _server_settings_converter(value: Mapping[str, Any] | None) -> FrozenMap:
    out: dict[str, Any] = {}
    for name, setting in (value or {}).items():
        if not isinstance(name, str) or not _SETTING_NAME.match(name):
            raise ConfigError(f"<profile>: server_settings key {name!r} is not a PostgreSQL parameter name "
                              "(lower-case letters, digits, underscores; e.g. statement_timeout)")
        if isinstance(setting, bool):
            setting = "on" if setting else "off"
        if not isinstance(setting, (str, int, float)):
            raise ConfigError(f"<profile>: server_settings.{name} = {setting!r} must be a string, number or boolean")
        out[name] = str(setting)
    return FrozenMap(out)


def _vfs_validator(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"<profile>: vfs = {value!r} must be the name of a registered SQLite VFS "
                          "(a non-empty string)")
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
    #: A PostgreSQL server's URL (``postgresql://user:password@host:port/db``); None for SQLite.
    #: Its ``repr`` is redacted; ``path`` then holds the redacted URL, the store's name everywhere.
    url: str | None = attrs.field(default=None, repr=_url_repr, validator=_url_validator)
    driver: str = attrs.field(default=attrs.Factory(_default_driver, takes_self=True), validator=_driver_validator)
    vfs: str | None = attrs.field(default=None, validator=_vfs_validator)
    pragmas: FrozenMap = attrs.field(factory=FrozenMap, converter=_pragmas_converter)
    plugins: tuple[str, ...] = attrs.field(default=(), converter=_plugins_converter)
    settings: FrozenMap = attrs.field(factory=FrozenMap, converter=_settings_converter)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, converter=_retry_converter)
    read_only: bool = False
    #: Longest wait for the cross-process init lock (``setup`` and the WAL switch run under it).
    init_timeout_s: float = attrs.field(default=30.0, validator=_init_timeout_validator)
    #: PostgreSQL run-time parameters set on every new connection (``SET name = value``), e.g.
    #: ``statement_timeout``, ``lock_timeout``, ``default_transaction_isolation``.
    server_settings: FrozenMap = attrs.field(factory=FrozenMap, converter=_server_settings_converter)
    config_dir: str | None = None
    origin: str = attrs.field(default="<code>", eq=False, repr=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, name: str = "custom", origin: str = "<code>",
                     config_dir: str | None = None) -> Profile:
        """Build a profile from a plain mapping (no inheritance), naming ``origin`` in errors."""
        allowed = ("path", "url", "driver", "vfs", "pragmas", "plugins", "settings", "retry", "read_only",
                   "init_timeout_s", "server_settings")
        for key in raw:
            if key not in allowed:
                raise ConfigError(f"{origin}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        try:
            return cls(name=name, origin=origin, config_dir=config_dir, **dict(raw))
        except ConfigError as err:
            raise ConfigError(str(err).replace("<profile>", origin, 1)) from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{origin}: {err}") from None

    @property
    def engine(self) -> str:
        """``"postgresql"`` for a profile with a ``url``, else ``"sqlite"``."""
        return "postgresql" if self.url else "sqlite"

    def settings_for(self, plugin: str) -> Mapping[str, Any]:
        """The raw settings table for ``plugin`` (empty when the profile sets none)."""
        table: Mapping[str, Any] = self.settings.get(plugin, FrozenMap())
        return table


#: What the built-in ``default`` adds when the stdlib ``sqlite3`` links a SQLite with the WAL-reset
#: bug (:mod:`corestore.sqlitebugs`): the mitigation (site/plugins/checkpoint_governor.md).
WAL_RESET_MITIGATION = ("checkpoint_governor",)


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
    # the default for a PostgreSQL URL (site/postgresql.md): no SQLite-only plugin, no pragma
    "postgresql": {"plugins": list(PG_DEFAULT_PLUGINS), "pragmas": {"busy_timeout": 5000}},
})
