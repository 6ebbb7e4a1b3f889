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

import difflib
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
from .operation import SUCCEEDED, Operation, Outcome, Violation

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
        raise ConfigError(f"{where} settings.{cls.name}: {readable_validation_error(err)}") from None


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


def _positional(impl: pluggy.HookImpl, hook: str, spec: tuple[str, ...] | None = None) -> Callable[..., Any]:
    """A callable taking the hook's arguments (or ``spec``, a prefix of them) positionally, in
    spec order: the implementation itself when it takes them all (the hot path: no dict, no
    pluggy dispatch), else a generated adapter passing just the subset it asked for (as fast as
    a direct call)."""
    spec = spec or _SPEC_ARGS[hook]
    fn = impl.function
    names = tuple(impl.argnames)
    if names == spec:
        return fn
    source = f"lambda {', '.join(spec)}: fn({', '.join(names)})"
    return eval(source, {"fn": fn})  # noqa: S307 - names come from the hookspec and pluggy, not input


def _source_tagging(fn: Callable[..., Any], plugin: str) -> Callable[..., Any]:
    """``fn`` (a ``classify_error`` implementation) with its answer's ``source`` set to ``plugin``,
    for the dispatch through pluggy, where the caller does not see which implementation answered."""

    def tagged(*args: Any) -> Any:
        result = fn(*args)
        if result is not None and getattr(result, "source", plugin) != plugin:
            result = attrs.evolve(result, source=plugin)
        return result

    return tagged


def _is_wrapper(impl: pluggy.HookImpl) -> bool:
    return bool(impl.hookwrapper or impl.wrapper)


class HookCaller:
    """One method per hook; the only caller of hooks in corestore.

    Every hook is dispatched with pluggy's semantics (``tryfirst``/``trylast`` order,
    ``firstresult``, wrappers). A hook without wrapper implementations is called directly, in
    pluggy's order (the hot path: no dict, no pluggy dispatch); a hook with a wrapper goes
    through pluggy's own ``pm.hook`` call. ``has_<hook>`` booleans, fixed at construction, let
    the hot path skip hooks nobody implements. Isolated hooks (see
    :data:`corestore.hookspecs.ISOLATED_HOOKS`) call each implementation on its own, so one that
    raises is logged and does not stop the others; a wrapper on one of them is refused here with
    a :class:`PluginError` naming the plugin and the hook.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._impls: dict[str, tuple[pluggy.HookImpl, ...]] = {}
        #: hooks with at least one wrapper implementation: dispatched through ``pm.hook``
        self.wrapped: frozenset[str] = frozenset()
        wrapped = set()
        for name in hookspecs.HOOK_NAMES:
            impls = tuple(reversed(getattr(pm.hook, name).get_hookimpls()))  # pluggy's call order
            for impl in impls:
                if not _is_wrapper(impl):
                    continue
                if name in hookspecs.ISOLATED_HOOKS:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r}: hook {name} is isolated (each implementation runs on "
                        "its own, one that raises does not stop the others) and cannot be implemented as a wrapper; "
                        "implement it as a plain @hookimpl"
                    )
                wrapped.add(name)
            self._impls[name] = impls
        self.wrapped = frozenset(wrapped)
        self._calls: dict[str, tuple[tuple[str, Callable[..., Any]], ...]] = {
            name: tuple((impl.plugin_name, _positional(impl, name)) for impl in impls if not _is_wrapper(impl))
            for name, impls in self._impls.items()
        }
        if "classify_error" in self.wrapped:
            # pluggy dispatches it: tag each answer with the plugin that gave it (this manager
            # belongs to this store alone, so its implementations are ours to adapt)
            for impl in self._impls["classify_error"]:
                if not _is_wrapper(impl):
                    impl.function = _source_tagging(impl.function, impl.plugin_name)  # type: ignore[misc]
        self.has_on_open = bool(self._impls["on_open"])
        self.has_before_operation = bool(self._impls["before_operation"])
        self.has_on_success = bool(self._impls["on_success"])
        self.has_on_commit_invariant = bool(self._impls["on_commit_invariant"])
        self.has_on_fatal = bool(self._impls["on_fatal"])
        self.has_after_operation = bool(self._impls["after_operation"])
        # after_operation's ``outcome`` is built only when an implementation names it; otherwise
        # the implementations are called with (store, operation) exactly as before it existed.
        after = self._impls["after_operation"]
        self.wants_outcome = any("outcome" in impl.argnames for impl in after)
        if not self.wants_outcome:
            self._calls["after_operation"] = tuple((i.plugin_name, _positional(i, "after_operation", ("store", "operation")))
                                                   for i in after)
        # before_operation runs on every operation's path: its implementations are called
        # directly, in pluggy's order, the first raise stopping the rest (what pluggy does
        # without wrappers, for a third of the cost); through pluggy when one is a wrapper.
        before = self._impls["before_operation"]
        self._before_direct = None if "before_operation" in self.wrapped else before
        self.has_operation_hooks = (self.has_before_operation or self.has_on_success or self.has_on_commit_invariant
                                    or self.has_after_operation)

    def implementers(self, hook: str) -> list[str]:
        """Names of the plugins implementing ``hook``, in call order."""
        return [impl.plugin_name for impl in self._impls[hook]]

    # -- open ------------------------------------------------------------------------------
    def on_store_open(self, store: "Store") -> None:
        if self._impls["on_store_open"]:
            self.pm.hook.on_store_open(store=store)

    def on_open(self, store: "Store", connection: Any) -> None:
        if self.has_on_open:
            self.pm.hook.on_open(store=store, connection=connection)

    # -- operate ---------------------------------------------------------------------------
    def classify_error(self, store: "Store", error: BaseException, operation: Operation | None) -> Classification:
        if "classify_error" in self.wrapped:
            return self._classify_through_pluggy(store, error, operation)
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

    def _classify_through_pluggy(self, store: "Store", error: BaseException, operation: Operation | None) -> Classification:
        """``classify_error`` with a wrapper: pluggy's dispatch (first non-None result, wrappers
        around it); classifying never fails, so an exception falls back to the core table."""
        from .classify import classify_exception

        try:
            result = self.pm.hook.classify_error(store=store, error=error, operation=operation)
        except Exception:
            logger.exception("classify_error raised (through its wrappers); the core table decides")
            result = None
        if not isinstance(result, Classification):
            if result is not None:
                logger.warning("classify_error returned %r, not a Classification; the core table decides", result)
            return classify_exception(error)
        return result

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

    def after_operation(self, store: "Store", operation: Operation | None, error: BaseException | None = None,
                        retrying: bool = False) -> None:
        """``error``: what ended the operation (None: success); ``retrying``: ``run()`` tries again."""
        if operation is None:
            return
        if self.wants_outcome:
            outcome = SUCCEEDED if error is None and not retrying else Outcome(error=error, retrying=retrying)
            for plugin, fn in self._calls["after_operation"]:
                try:
                    fn(store, operation, outcome)
                except Exception:
                    logger.exception("after_operation of plugin %r raised; the other plugins still run", plugin)
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
        if "on_commit_invariant" in self.wrapped:
            return self._invariants_through_pluggy(store, connection, operation)
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

    def _invariants_through_pluggy(self, store: "Store", connection: Any, operation: Operation) -> tuple[list[Violation], bool]:
        """``on_commit_invariant`` with a wrapper: pluggy's dispatch (an exception stops the
        remaining implementations and passes through the wrappers, as in pluggy)."""
        try:
            results = self.pm.hook.on_commit_invariant(store=store, connection=connection, operation=operation)
        except InvariantViolation as err:
            return list(err.violations or [Violation(check="on_commit_invariant.raised", message=str(err))]), True
        except Exception as err:
            logger.exception("on_commit_invariant raised (through its wrappers) after a durable commit")
            return [Violation(check="on_commit_invariant.error",
                              message=f"invariant check raised {type(err).__name__}: {err}", evidence={})], False
        violations: list[Violation] = []
        for result in results or ():
            if result:
                violations.extend(result)
        return violations, False

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
    installed = discover()
    for key in unknown_settings:
        if key not in installed:
            raise ConfigError(f"{where}: settings.{key}: no installed plugin is called {key!r}; installed: {', '.join(sorted(installed))}")
    instances: dict[str, Any] = {}
    for name in names:
        here = f"{ENV_PLUGINS} (environment variable)" if name in extra else where
        cls = load_plugin_class(name, where=here)
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
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(CoreClassifier(), name="core")
    for name in reversed(names):  # pluggy calls the last registered first
        try:
            pm.register(instances[name], name=name)
        except (ValueError, pluggy.PluginValidationError) as err:
            detail = " ".join(str(err).split())
            raise PluginError(f"{where}: plugin {name!r} does not fit the corestore hooks: {detail}") from err
    _check_pending(pm, where)
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
                        and any(i.plugin is err.plugin and not i.optionalhook for i in getattr(pm.hook, name).get_hookimpls())),
                       "?")
        close = difflib.get_close_matches(unknown, hookspecs.HOOK_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(
            f"{where}: plugin {plugin!r} implements unknown hook {unknown!r}{hint}; corestore hooks: "
            f"{', '.join(hookspecs.HOOK_NAMES)}. Mark it @hookimpl(optionalhook=True) if it is meant for a "
            "newer corestore"
        ) from err
