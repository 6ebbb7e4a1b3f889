"""Plugin discovery, settings building and wiring a store's hook caller.

Plugins are found through entry points in the ``corestore`` group, read with
``importlib.metadata``; a plugin module is imported only when a profile enables it (never
pluggy's ``load_setuptools_entrypoints``, which imports the whole group). First-party plugins are
found the same way as third-party ones.

Each store gets its own ``pluggy.PluginManager`` holding just its profile's plugins, wrapped in a
:class:`HookCaller`: the only code in corestore that calls hooks. It decides once, at open, which
hooks have implementations, so a hook nobody implements costs nothing on the hot path. The
caller itself lives in :mod:`corestore.hookcaller`; it is importable from here as well.

Plugin classes are imported once per process and cached by name. The entry points themselves
are read once per process too (reading them means opening every installed distribution's
metadata: about a millisecond per read, which each fresh ``corestore.open()`` used to pay); the
list is read again when ``sys.path`` changes. A test or tool that installs or removes entry
points at run time calls :func:`clear_cache` (or :func:`refresh_entry_points`) so the next lookup
reads the installed entry points again. The plugin manager and its per-class hook tables live in
:mod:`corestore.pluginmanager`.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from . import hookspecs
from .classify import CoreClassifier
from .errors import ConfigError, PluginError
from .hookcaller import HookCaller
from .pluginmanager import new_plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    from .profiles import Profile

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_PLUGINS",
    "discover",
    "env_plugins",
    "load_plugin_class",
    "check_engine",
    "clear_cache",
    "refresh_entry_points",
    "build_settings",
    "readable_validation_error",
    "settings_help",
    "HookCaller",
    "build_hook_caller",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "corestore"
ENV_PLUGINS = "CORESTORE_PLUGINS"

_class_cache: dict[str, type] = {}
_class_lock = threading.Lock()
#: (``sys.path`` when read, the entry points by name): :func:`discover`'s per-process cache
_discovered: tuple[tuple[str, ...], dict[str, importlib.metadata.EntryPoint]] | None = None


def discover() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin entry point in the ``corestore`` group, by name, without importing any.

    Read once per process and kept while ``sys.path`` stays the same; :func:`clear_cache` and
    :func:`refresh_entry_points` make the next call read the installed entry points again. The
    caller gets its own copy of the mapping.
    """
    global _discovered
    path = tuple(sys.path)
    cached = _discovered
    if cached is not None and cached[0] == path:
        return dict(cached[1])
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    with _class_lock:
        _discovered = (path, found)
    return dict(found)


def env_plugins() -> tuple[str, ...]:
    """Plugins the ``CORESTORE_PLUGINS`` variable (comma-separated) enables for every store."""
    raw = os.environ.get(ENV_PLUGINS, "")
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def check_engine(cls: type, name: str, profile: Profile, *, where: str = "<profile>") -> None:
    """Refuse a plugin whose ``engines`` (a class attribute; absent: every engine) does not list
    the profile's engine: ``wal_guard`` on a PostgreSQL profile is a :class:`ConfigError` naming
    it, at ``open()`` and in ``corestore profiles --check``."""
    engines = getattr(cls, "engines", None)
    if engines is None or profile.engine in engines:
        return
    raise ConfigError(
        f"{where}: plugin {name!r} works on {', '.join(engines)} only, and this profile is a {profile.engine} "
        f"profile ({profile.path or profile.name}); remove it from the profile's plugins (disable = [{name!r}]) "
        + ("or use the built-in 'postgresql' profile" if profile.engine == "postgresql" else "")
    )


def load_plugin_class(name: str, *, where: str = "<profile>") -> type:
    """Import the plugin called ``name`` (once per process) and return its class.

    Raises :class:`PluginError` naming the plugin, where it was asked for and the plugins that
    are installed.
    """
    with _class_lock:
        cls = _class_cache.get(name)
    if cls is not None:
        return cls
    eps = discover()
    ep = eps.get(name)
    if ep is None:
        raise PluginError(
            f"{where}: unknown plugin {name!r}; installed plugins: {', '.join(sorted(eps)) or '(none)'} "
            f"(a plugin is found through an entry point in the {ENTRY_POINT_GROUP!r} group)"
        )
    try:
        cls = ep.load()
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # SystemExit, GeneratorExit ... at import must not end the process
        raise PluginError(
            f"{where}: plugin {name!r} ({ep.value}) failed to import: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(cls, type):
        raise PluginError(f"{where}: plugin {name!r} ({ep.value}) is not a class")
    declared = getattr(cls, "name", None)
    if declared != name:
        raise PluginError(
            f"{where}: plugin class {cls.__qualname__} declares name {declared!r}, but its entry point is {name!r}"
        )
    with _class_lock:
        _class_cache[name] = cls
    return cls


def clear_cache(*names: str) -> None:
    """Forget the cached plugin classes called ``names`` (all of them when none is given).

    For tests and tools that install or remove entry points while the process runs: the next
    :func:`load_plugin_class` (and so the next ``corestore.open()``) looks the name up in the
    installed entry points again (the per-process list of entry points is read again, whatever
    ``names`` are). Stores already open keep the plugin instances they have.
    """
    global _discovered
    with _class_lock:
        _discovered = None
        if not names:
            _class_cache.clear()
        for name in names:
            _class_cache.pop(name, None)


def refresh_entry_points(*names: str) -> None:
    """:func:`clear_cache` plus ``importlib.invalidate_caches()``: call it after writing a new
    ``.dist-info`` (or a plugin module) onto ``sys.path`` so it is found."""
    importlib.invalidate_caches()
    clear_cache(*names)


def build_settings(cls: type, raw: Mapping[str, Any], *, where: str) -> Any:
    """Convert a raw settings table into ``cls.Settings`` (None when the plugin has none).

    Unknown keys and values its validators refuse are a :class:`ConfigError` naming ``where``,
    the key and what is allowed.
    """
    plugin: str = getattr(cls, "name", cls.__qualname__)  # load_plugin_class checked it is there
    settings_cls = getattr(cls, "Settings", None)
    if settings_cls is None:
        if raw:
            raise ConfigError(f"{where} settings.{plugin}: plugin {plugin!r} takes no settings; got {', '.join(raw)}")
        return None
    try:
        cached = _settings_cache.get(_settings_key(settings_cls, raw))
    except TypeError:  # an unhashable raw table (a plain dict holding lists): built every time
        cached = None
    if cached is not None:
        return cached
    fields = attrs.fields_dict(settings_cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{where} settings.{plugin}: unknown key {key!r}; allowed: {', '.join(fields)}"
            )
    values = {k: (v.thaw() if hasattr(v, "thaw") else v) for k, v in raw.items()}
    try:
        built = settings_cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{where} settings.{plugin}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} settings.{plugin}: {readable_validation_error(err)}") from None
    _remember_settings(settings_cls, raw, built)
    return built


#: (Settings class, raw table) -> the built settings, for every later store of the process with
#: the same table (validating them again is most of a plugin's share of a fresh open). Only
#: values nobody can change are shared: a frozen attrs class whose every field holds an immutable
#: scalar (or a tuple/frozenset of them). Bounded: forgotten all at once past 256.
_settings_cache: dict[tuple[type, Any], Any] = {}
_IMMUTABLE = (str, int, float, bool, bytes, type(None))


def _shareable(value: Any) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_shareable(v) for v in value)
    return isinstance(value, _IMMUTABLE)


def _settings_key(settings_cls: type, raw: Mapping[str, Any]) -> tuple[Any, ...]:
    """The cache key: the value types too (``1``, ``1.0`` and ``True`` are equal keys of a dict,
    but a validator may accept one and refuse another). An empty table (no settings: the
    common case) is the class alone."""
    if not raw:
        return (settings_cls,)
    return settings_cls, raw, tuple((k, type(v)) for k, v in raw.items())


def _remember_settings(settings_cls: type, raw: Mapping[str, Any], built: Any) -> None:
    try:
        key = _settings_key(settings_cls, raw)
        hash(key)
    except TypeError:
        return
    if not attrs.has(settings_cls) or not _is_frozen(settings_cls):
        return
    if not all(_shareable(getattr(built, f.name)) for f in attrs.fields(settings_cls)):
        return
    if len(_settings_cache) >= 256:
        _settings_cache.clear()
    _settings_cache[key] = built


def _is_frozen(cls: type) -> bool:
    """Whether instances of the attrs class ``cls`` refuse attribute assignment (``frozen``)."""
    probe: Any = object.__new__(cls)
    name = attrs.fields(cls)[0].name if attrs.fields(cls) else "_corestore_probe"
    try:
        setattr(probe, name, None)
    except attrs.exceptions.FrozenInstanceError:
        return True
    except Exception:  # noqa: BLE001 - anything else: not known to be frozen, not shared
        return False
    return False


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", tuple: "a list", dict: "a table"}


def _type_words(types: Any) -> str:
    if isinstance(types, type):
        return _TYPE_WORDS.get(types, f"of type {types.__name__}")
    names = set(types) if isinstance(types, tuple) else {types}
    if names <= {int, float}:
        return "a number"
    return " or ".join(_type_words(t) for t in types) if isinstance(types, tuple) else str(types)


def readable_validation_error(err: BaseException) -> str:
    """The message of an attrs validation failure as the shipped settings word it: ``key =
    value must be ...`` (attrs' own ``instance_of``/``in_`` validators put the ``Attribute`` in
    their arguments, which reads as a dump), so a third-party plugin's ``Settings`` built with
    attrs validators gives the same messages as :mod:`corestore.settings`."""
    args = err.args
    if len(args) == 4 and isinstance(args[1], attrs.Attribute):
        _msg, attribute, expected, value = args
        if isinstance(err, TypeError):  # attrs.validators.instance_of(...)
            return f"{attribute.name} = {value!r} must be {_type_words(expected)}"
        try:  # attrs.validators.in_(...)
            allowed = ", ".join(repr(v) for v in expected)
        except TypeError:
            allowed = repr(expected)
        return f"{attribute.name} = {value!r} is not allowed; allowed: {allowed}"
    text = str(err)
    missing = "required keyword-only argument"
    if isinstance(err, TypeError) and missing in text:
        return f"missing required setting(s): {text.split(':', 1)[-1].strip()}"
    return text


def settings_help(cls: type) -> list[dict[str, str]]:
    """Rows (name, type, default, help) describing ``cls.Settings``, for the CLI and the docs."""
    settings_cls = getattr(cls, "Settings", None)
    if settings_cls is None:
        return []
    rows = []
    for field in attrs.fields(settings_cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        ftype = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        rows.append({
            "name": field.name,
            "type": str(ftype),
            "default": repr(default),
            "help": str(field.metadata.get("help", "")),
        })
    return rows


def build_hook_caller(profile: Profile, *, extra: Iterable[str] = ()) -> tuple[HookCaller, dict[str, Any]]:
    """Import and instantiate the profile's plugins, register them (hooks run in profile order)
    and return the caller with the instances by name.

    Everything ``corestore.open()`` checks about plugins happens here, and ``corestore profiles
    --check`` runs the same code: plugin lookup (``extra`` comes from ``$CORESTORE_PLUGINS``),
    settings for plugins that are not installed, each plugin's ``Settings`` and constructor, its
    ``check_profile(profile)`` method when it has one (paths, read-only profiles), and its hook
    implementations (unknown hooks, unknown arguments, wrappers on isolated hooks).
    """
    where = profile.origin
    extra = [n for n in extra if n not in profile.plugins]
    names = list(profile.plugins) + extra
    unknown_settings = [k for k in profile.settings if k not in names]
    installed = discover() if unknown_settings else {}
    for key in unknown_settings:
        if key not in installed:
            raise ConfigError(f"{where}: settings.{key}: no installed plugin is called {key!r}; "
                              f"installed: {', '.join(sorted(installed))}")
    instances: dict[str, Any] = {}
    for name in names:
        here = f"{ENV_PLUGINS} (environment variable)" if name in extra else where
        cls = load_plugin_class(name, where=here)
        check_engine(cls, name, profile, where=here)
        settings = build_settings(cls, profile.settings_for(name), where=where)
        try:
            instance = cls(settings) if settings is not None else cls()
        except ConfigError as err:
            raise ConfigError(f"{where} settings.{name}: {err}") from None
        except PluginError:
            raise
        except Exception as err:
            raise PluginError(f"{where}: plugin {name!r} failed to start: {type(err).__name__}: {err}") from err
        check = getattr(instance, "check_profile", None)
        if callable(check):
            try:
                check(profile)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
        instances[name] = instance
    pm = new_plugin_manager()
    # pluggy calls the last registered first; the same names and classes as an earlier store:
    # registered from that store's validated layout (corestore.pluginmanager.register_planned)
    order = [(CoreClassifier(), "core")] + [(instances[name], name) for name in reversed(names)]
    if not pm.register_planned(order):
        for plugin, name in order:
            try:
                pm.register(plugin, name=name)
            except (ValueError, pluggy.PluginValidationError) as err:
                detail = " ".join(str(err).split())
                raise PluginError(f"{where}: plugin {name!r} does not fit the corestore hooks: {detail}") from err
        _check_pending(pm, where)
        pm.remember_plan(order)
    # else: nothing pending (a plan holds only hooks that have a specification)
    return HookCaller(pm), instances


def _check_pending(pm: pluggy.PluginManager, where: str) -> None:
    """pluggy's ``check_pending()``: an implementation of a hook corestore does not specify is
    refused (a misspelled hook would silently never run), unless marked ``optionalhook=True``."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        plugin = pm.get_name(err.plugin) or repr(err.plugin)
        unknown = next((name for name in vars(pm.hook) if not name.startswith("_")
                        and not getattr(pm.hook, name).has_spec()
                        and any(i.plugin is err.plugin and not i.optionalhook
                                for i in getattr(pm.hook, name).get_hookimpls())),
                       "?")
        close = difflib.get_close_matches(unknown, hookspecs.HOOK_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(
            f"{where}: plugin {plugin!r} implements unknown hook {unknown!r}{hint}; corestore hooks: "
            f"{', '.join(hookspecs.HOOK_NAMES)}. Mark it @hookimpl(optionalhook=True) if it is meant for a "
            "newer corestore"
        ) from err
