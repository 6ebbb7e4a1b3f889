"""The typed hook caller: the only code in corestore that calls hooks.

:func:`corestore.registry.build_hook_caller` builds one per store from its profile's plugins; it
decides once, at open, which hooks have implementations, so a hook nobody implements costs
nothing on the hot path. Importable as ``corestore.registry.HookCaller`` as well.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from . import hookspecs
from .errors import Classification, InvariantViolation, PluginError, UnsavedDataError
from .health import HealthComponent, HealthStatus
from .hookdispatch import specialise
from .operation import SUCCEEDED, Operation, Outcome, Violation

if TYPE_CHECKING:  # pragma: no cover
    from .health import HealthReport
    from .store import Store

__all__ = ["HookCaller"]

logger = logging.getLogger(__name__)


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
    return _adapter_factory(spec, names)(fn)


_factories: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[[Callable[..., Any]], Callable[..., Any]]] = {}


def _adapter_factory(spec: tuple[str, ...], names: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``fn -> adapter`` for one (spec, subset) pair, compiled once per process (compiling is
    most of the cost of building a store's caller; the shapes are few)."""
    factory = _factories.get((spec, names))
    if factory is None:
        source = f"lambda fn: lambda {', '.join(spec)}: fn({', '.join(names)})"
        factory = eval(source, {})  # noqa: S307 - names come from the hookspec and pluggy, not input
        _factories[(spec, names)] = factory
    return factory


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
        if self.wants_outcome:  # the class's after_operation stays the plain, cheaper one otherwise
            self.after_operation = self._after_operation_with_outcome  # type: ignore[method-assign]
        else:
            self._calls["after_operation"] = tuple(
                (i.plugin_name, _positional(i, "after_operation", ("store", "operation"))) for i in after)
        # before_operation runs on every operation's path: its implementations are called
        # directly, in pluggy's order, the first raise stopping the rest (what pluggy does
        # without wrappers, for a third of the cost); through pluggy when one is a wrapper.
        before = self._impls["before_operation"]
        self._before_direct = None if "before_operation" in self.wrapped else before
        self.has_operation_hooks = (self.has_before_operation or self.has_on_success or self.has_on_commit_invariant
                                    or self.has_after_operation)
        self.needs_operation = True  # decided by specialise()
        specialise(self, _SPEC_ARGS)  # the per-operation hooks: generated for this store's implementations

    def implementers(self, hook: str) -> list[str]:
        """Names of the plugins implementing ``hook``, in call order."""
        return [impl.plugin_name for impl in self._impls[hook]]

    # -- open ------------------------------------------------------------------------------
    def on_store_open(self, store: Store) -> None:
        if self._impls["on_store_open"]:
            self.pm.hook.on_store_open(store=store)

    def on_open(self, store: Store, connection: Any) -> None:
        if self.has_on_open:
            self.pm.hook.on_open(store=store, connection=connection)

    # -- operate ---------------------------------------------------------------------------
    def classify_error(self, store: Store, error: BaseException, operation: Operation | None) -> Classification:
        if "classify_error" in self.wrapped:
            return self._classify_through_pluggy(store, error, operation)
        for plugin, fn in self._calls["classify_error"]:
            try:
                result: Classification | None = fn(store, error, operation)
            except Exception:
                logger.exception("classify_error of plugin %r raised; asking the next one", plugin)
                continue
            if result is not None:
                if result.source != plugin:
                    result = attrs.evolve(result, source=plugin)
                return result
        return _core_table(store, error)  # the core table always answers

    def _classify_through_pluggy(self, store: Store, error: BaseException,
                                 operation: Operation | None) -> Classification:
        """``classify_error`` with a wrapper: pluggy's dispatch (first non-None result, wrappers
        around it); classifying never fails, so an exception falls back to the core table."""
        try:
            result = self.pm.hook.classify_error(store=store, error=error, operation=operation)
        except Exception:
            logger.exception("classify_error raised (through its wrappers); the core table decides")
            result = None
        if not isinstance(result, Classification):
            if result is not None:
                logger.warning("classify_error returned %r, not a Classification; the core table decides", result)
            return _core_table(store, error)
        return result

    def before_operation(self, store: Store, operation: Operation) -> None:
        if self.has_before_operation:
            direct = self._before_direct
            if direct is None:
                self.pm.hook.before_operation(store=store, operation=operation)
                return
            for _plugin, fn in self._calls["before_operation"]:
                fn(store, operation)

    def on_success(self, store: Store, operation: Operation) -> None:
        for plugin, fn in self._calls["on_success"]:  # isolated, inlined: it runs on every commit
            try:
                fn(store, operation)
            except Exception:
                logger.exception("on_success of plugin %r raised; the other plugins still run", plugin)

    def after_operation(self, store: Store, operation: Operation | None, error: BaseException | None = None,
                        retrying: bool = False) -> None:
        """``error``: what ended the operation (None: success); ``retrying``: ``run()`` tries again.
        No implementation names ``outcome`` here (else :meth:`_after_operation_with_outcome`
        replaces this method on the instance): neither is used."""
        if operation is None:
            return
        for plugin, fn in self._calls["after_operation"]:  # isolated, inlined: it runs on every operation
            try:
                fn(store, operation)
            except Exception:
                logger.exception("after_operation of plugin %r raised; the other plugins still run", plugin)

    def _after_operation_with_outcome(self, store: Store, operation: Operation | None,
                                      error: BaseException | None = None, retrying: bool = False) -> None:
        """``after_operation`` when an implementation names ``outcome``: build it (every success
        shares :data:`~corestore.operation.SUCCEEDED`) and pass it to each implementation."""
        if operation is None:
            return
        outcome = SUCCEEDED if error is None and not retrying else Outcome(error=error, retrying=retrying)
        for plugin, fn in self._calls["after_operation"]:
            try:
                fn(store, operation, outcome)
            except Exception:
                logger.exception("after_operation of plugin %r raised; the other plugins still run", plugin)

    # -- commit ----------------------------------------------------------------------------
    def on_commit_invariant(self, store: Store, connection: Any, operation: Operation) -> tuple[list[Violation], bool]:
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

    def _invariants_through_pluggy(self, store: Store, connection: Any,
                                   operation: Operation) -> tuple[list[Violation], bool]:
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
    def on_fatal(self, store: Store, error: BaseException, classification: Classification,
                 operation: Operation | None) -> None:
        if self.has_on_fatal:
            self._isolated("on_fatal", store, error, classification, operation)

    def on_persistent_failure(self, store: Store, report: HealthReport) -> None:
        self._isolated("on_persistent_failure", store, report)

    # -- health ----------------------------------------------------------------------------
    def on_health(self, store: Store) -> list[HealthComponent]:
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

    def on_health_changed(self, store: Store, previous: HealthStatus, current: HealthStatus) -> None:
        self._isolated("on_health_changed", store, previous, current)

    # -- close -----------------------------------------------------------------------------
    def on_close(self, store: Store) -> None:
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

    # -- fork ------------------------------------------------------------------------------
    def on_fork_child(self, store: Store) -> None:
        self._isolated("on_fork_child", store)

    def _isolated(self, hook: str, *args: Any) -> None:
        for plugin, fn in self._calls[hook]:
            try:
                fn(*args)
            except Exception:
                logger.exception("%s of plugin %r raised; the other plugins still run", hook, plugin)


def _core_table(store: Any, error: BaseException) -> Classification:
    """The store's engine's own code table (SQLite result codes, PostgreSQL SQLSTATEs)."""
    backend = getattr(store, "backend", None)
    if backend is not None:
        return backend.classify_exception(error)  # type: ignore[no-any-return]
    from .classify import classify_exception

    return classify_exception(error)
