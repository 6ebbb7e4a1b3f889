"""Plugin discovery and the typed hook caller.

Plugins are found through entry points in the ``corestore`` group, read with
``importlib.metadata``; a plugin module is imported only when a profile enables it (never
pluggy's ``load_setuptools_entrypoints``, which imports the whole group). First-party plugins are
found the same way as third-party ones.

Each store gets its own ``pluggy.PluginManager`` holding just its profile's plugins, wrapped in a
:class:`HookCaller`: the only code in corestore that calls hooks. It decides once, at open, which
hooks have implementations, so a hook nobody implements costs nothing on the hot path.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import attrs
import pluggy

from . import hookspecs
from .classify import CoreClassifier
from .errors import Classification, ConfigError, InvariantViolation, PluginError, UnsavedDataError
from .health import HealthComponent, HealthStatus
from .operation import Operation, Violation

if TYPE_CHECKING:  # pragma: no cover
    from .health import HealthReport
    from .profiles import Profile
    from .store import Store

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_PLUGINS",
    "discover",
    "load_plugin_class",
    "build_settings",
    "settings_help",
    "HookCaller",
    "build_hook_caller",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "corestore"
ENV_PLUGINS = "CORESTORE_PLUGINS"

_class_cache: dict[str, type] = {}
_class_lock = threading.Lock()


def discover() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin entry point in the ``corestore`` group, by name, without importing any."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def env_plugins() -> tuple[str, ...]:
    """Plugins the ``CORESTORE_PLUGINS`` variable (comma-separated) enables for every store."""
    raw = os.environ.get(ENV_PLUGINS, "")
    return tuple(n.strip() for n in raw.split(",") if n.strip())


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
        raise PluginError(f"{where}: plugin {name!r} ({ep.value}) failed to import: {type(err).__name__}: {err}") from err
    if not isinstance(cls, type):
        raise PluginError(f"{where}: plugin {name!r} ({ep.value}) is not a class")
    declared = getattr(cls, "name", None)
    if declared != name:
        raise PluginError(f"{where}: plugin class {cls.__qualname__} declares name {declared!r}, but its entry point is {name!r}")
    with _class_lock:
        _class_cache[name] = cls
    return cls


def build_settings(cls: type, raw: Mapping[str, Any], *, where: str) -> Any:
    """Convert a raw settings table into ``cls.Settings`` (None when the plugin has none).

    Unknown keys and values its validators refuse are a :class:`ConfigError` naming ``where``,
    the key and what is allowed.
    """
    settings_cls = getattr(cls, "Settings", None)
    if settings_cls is None:
        if raw:
            raise ConfigError(f"{where} settings.{cls.name}: plugin {cls.name!r} takes no settings; got {', '.join(raw)}")
        return None
    fields = attrs.fields_dict(settings_cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{where} settings.{cls.name}: unknown key {key!r}; allowed: {', '.join(fields)}"
            )
    values = {k: (v.thaw() if hasattr(v, "thaw") else v) for k, v in raw.items()}
    try:
        return settings_cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{where} settings.{cls.name}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} settings.{cls.name}: {err}") from None


def settings_help(cls: type) -> list[dict[str, str]]:
    """Rows (name, type, default, help) describing ``cls.Settings``, for the CLI and the docs."""
    settings_cls = getattr(cls, "Settings", None)
    if settings_cls is None:
        return []
    rows = []
    for field in attrs.fields(settings_cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[union-attr]
        ftype = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        rows.append({
            "name": field.name,
            "type": str(ftype),
            "default": repr(default),
            "help": str(field.metadata.get("help", "")),
        })
    return rows


_SPEC_ARGS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(getattr(hookspecs, name)).parameters) for name in hookspecs.HOOK_NAMES
}


def _positional(impl: pluggy.HookImpl, hook: str) -> Callable[..., Any]:
    """A callable taking the hook's arguments positionally, in spec order: the implementation
    itself when it takes them all (the hot path: no dict, no pluggy dispatch), else a generated
    adapter passing just the subset it asked for (as fast as a direct call)."""
    spec = _SPEC_ARGS[hook]
    fn = impl.function
    names = tuple(impl.argnames)
    if names == spec:
        return fn
    source = f"lambda {', '.join(spec)}: fn({', '.join(names)})"
    return eval(source, {"fn": fn})  # noqa: S307 - names come from the hookspec and pluggy, not input


class HookCaller:
    """One method per hook; the only caller of hooks in corestore.

    ``has_<hook>`` booleans, fixed at construction, let the hot path skip hooks nobody
    implements. Isolated hooks (see :data:`corestore.hookspecs.ISOLATED_HOOKS`) call each
    implementation on its own, so one that raises is logged and does not stop the others.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._impls: dict[str, tuple[pluggy.HookImpl, ...]] = {}
        for name in hookspecs.HOOK_NAMES:
            impls = tuple(reversed(getattr(pm.hook, name).get_hookimpls()))  # pluggy's call order
            if name in hookspecs.ISOLATED_HOOKS:
                for impl in impls:
                    if impl.hookwrapper or impl.wrapper:
                        raise PluginError(
                            f"plugin {impl.plugin_name!r}: hook {name} is isolated (each implementation runs on "
                            "its own) and cannot be implemented as a wrapper"
                        )
            self._impls[name] = impls
        self._calls: dict[str, tuple[tuple[str, Callable[..., Any]], ...]] = {
            name: tuple((impl.plugin_name, _positional(impl, name)) for impl in impls) for name, impls in self._impls.items()
        }
        self.has_on_open = bool(self._impls["on_open"])
        self.has_before_operation = bool(self._impls["before_operation"])
        self.has_on_success = bool(self._impls["on_success"])
        self.has_on_commit_invariant = bool(self._impls["on_commit_invariant"])
        self.has_on_fatal = bool(self._impls["on_fatal"])
        self.has_after_operation = bool(self._impls["after_operation"])
        # before_operation runs on every operation's path: its implementations are called
        # directly, in pluggy's order, the first raise stopping the rest (what pluggy does
        # without wrappers, for a third of the cost); through pluggy when one is a wrapper.
        before = self._impls["before_operation"]
        self._before_direct = None if any(i.hookwrapper or i.wrapper for i in before) else before
        self.has_operation_hooks = (self.has_before_operation or self.has_on_success or self.has_on_commit_invariant
                                    or self.has_after_operation)

    def implementers(self, hook: str) -> list[str]:
        """Names of the plugins implementing ``hook``, in call order."""
        return [impl.plugin_name for impl in self._impls[hook]]

    # -- open ------------------------------------------------------------------------------
    def on_open(self, store: "Store", connection: Any) -> None:
        if self.has_on_open:
            self.pm.hook.on_open(store=store, connection=connection)

    # -- operate ---------------------------------------------------------------------------
    def classify_error(self, store: "Store", error: BaseException, operation: Operation | None) -> Classification:
        for plugin, fn in self._calls["classify_error"]:
            try:
                result = fn(store, error, operation)
            except Exception:
                logger.exception("classify_error of plugin %r raised; asking the next one", plugin)
                continue
            if result is not None:
                if result.source != plugin:
                    result = attrs.evolve(result, source=plugin)
                return result
        from .classify import classify_exception  # the core table always answers

        return classify_exception(error)

    def before_operation(self, store: "Store", operation: Operation) -> None:
        if self.has_before_operation:
            direct = self._before_direct
            if direct is None:
                self.pm.hook.before_operation(store=store, operation=operation)
                return
            for _plugin, fn in self._calls["before_operation"]:
                fn(store, operation)

    def on_success(self, store: "Store", operation: Operation) -> None:
        for plugin, fn in self._calls["on_success"]:  # isolated, inlined: it runs on every commit
            try:
                fn(store, operation)
            except Exception:
                logger.exception("on_success of plugin %r raised; the other plugins still run", plugin)

    def after_operation(self, store: "Store", operation: Operation | None) -> None:
        if operation is None:
            return
        for plugin, fn in self._calls["after_operation"]:  # isolated, inlined: it runs on every operation
            try:
                fn(store, operation)
            except Exception:
                logger.exception("after_operation of plugin %r raised; the other plugins still run", plugin)

    # -- commit ----------------------------------------------------------------------------
    def on_commit_invariant(self, store: "Store", connection: Any, operation: Operation) -> tuple[list[Violation], bool]:
        """Collect violations from every implementation; returns ``(violations, raise_requested)``.

        An implementation asks for the violation to be *raised* to the caller by raising
        :class:`~corestore.InvariantViolation` (its ``violations`` are collected; the core raises
        one ``InvariantViolation(committed=True)`` after every check ran). Any other exception
        becomes a violation itself: it runs after a durable commit, so it must not surface as a
        retryable error.
        """
        violations: list[Violation] = []
        raise_requested = False
        for plugin, fn in self._calls["on_commit_invariant"]:
            try:
                result = fn(store, connection, operation)
            except InvariantViolation as err:
                raise_requested = True
                violations.extend(err.violations or [Violation(check=f"{plugin}.raised", message=str(err))])
                continue
            except Exception as err:
                logger.exception("on_commit_invariant of plugin %r raised after a durable commit", plugin)
                violations.append(Violation(
                    check=f"{plugin}.error",
                    message=f"invariant check raised {type(err).__name__}: {err}",
                    evidence={},
                ))
                continue
            if result:
                violations.extend(result)
        return violations, raise_requested

    # -- fail ------------------------------------------------------------------------------
    def on_fatal(self, store: "Store", error: BaseException, classification: Classification, operation: Operation | None) -> None:
        if self.has_on_fatal:
            self._isolated("on_fatal", store, error, classification, operation)

    def on_persistent_failure(self, store: "Store", report: "HealthReport") -> None:
        self._isolated("on_persistent_failure", store, report)

    # -- health ----------------------------------------------------------------------------
    def on_health(self, store: "Store") -> list[HealthComponent]:
        components: list[HealthComponent] = []
        for plugin, fn in self._calls["on_health"]:
            try:
                result = fn(store)
            except Exception as err:
                logger.warning("on_health of plugin %r raised %s: %s", plugin, type(err).__name__, err)
                components.append(HealthComponent(
                    name=plugin, status=HealthStatus.UNKNOWN,
                    summary=f"health check raised {type(err).__name__}: {err}",
                ))
                continue
            if result is None:
                continue
            for item in result if isinstance(result, (list, tuple)) else [result]:
                if isinstance(item, HealthComponent):
                    components.append(item)
                else:  # a wrong return value must not break the report either
                    components.append(HealthComponent(
                        name=plugin, status=HealthStatus.UNKNOWN,
                        summary=f"on_health returned {type(item).__name__}, not a HealthComponent",
                    ))
        return components

    def on_health_changed(self, store: "Store", previous: HealthStatus, current: HealthStatus) -> None:
        self._isolated("on_health_changed", store, previous, current)

    # -- close -----------------------------------------------------------------------------
    def on_close(self, store: "Store") -> None:
        """Isolated like the others, except that an :class:`UnsavedDataError` (accepted data
        only in memory) is raised to ``store.close()``'s caller after every plugin ran."""
        unsaved: UnsavedDataError | None = None
        for plugin, fn in self._calls["on_close"]:
            try:
                fn(store)
            except UnsavedDataError as err:
                unsaved = unsaved or err
            except Exception:
                logger.exception("on_close of plugin %r raised; the other plugins still run", plugin)
        if unsaved is not None:
            raise unsaved

    def _isolated(self, hook: str, *args: Any) -> None:
        for plugin, fn in self._calls[hook]:
            try:
                fn(*args)
            except Exception:
                logger.exception("%s of plugin %r raised; the other plugins still run", hook, plugin)


def build_hook_caller(profile: "Profile", *, extra: Iterable[str] = ()) -> tuple[HookCaller, dict[str, Any]]:
    """Import and instantiate the profile's plugins, register them (hooks run in profile order)
    and return the caller with the instances by name."""
    where = profile.origin
    names = list(profile.plugins) + [n for n in extra if n not in profile.plugins]
    unknown_settings = [k for k in profile.settings if k not in names]
    installed = discover()
    for key in unknown_settings:
        if key not in installed:
            raise ConfigError(f"{where}: settings.{key}: no installed plugin is called {key!r}; installed: {', '.join(sorted(installed))}")
    instances: dict[str, Any] = {}
    for name in names:
        cls = load_plugin_class(name, where=where)
        settings = build_settings(cls, profile.settings_for(name), where=where)
        try:
            instance = cls(settings) if settings is not None else cls()
        except (ConfigError, PluginError):
            raise
        except Exception as err:
            raise PluginError(f"{where}: plugin {name!r} failed to start: {type(err).__name__}: {err}") from err
        instances[name] = instance
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(CoreClassifier(), name="core")
    for name in reversed(names):  # pluggy calls the last registered first
        try:
            pm.register(instances[name], name=name)
        except (ValueError, pluggy.PluginValidationError) as err:
            raise PluginError(f"{where}: plugin {name!r} does not fit the corestore hooks: {err}") from err
    return HookCaller(pm), instances
