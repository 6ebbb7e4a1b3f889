"""Per-store hook dispatch for the hooks on every operation's path, generated once at open.

**When.** :class:`corestore.hookcaller.HookCaller` calls :func:`specialise` at the end of its
construction; it replaces, on that instance only, ``before_operation``, ``on_success``,
``after_operation`` (when no implementation asks for ``outcome``) and ``on_commit_invariant``
(when none is a wrapper) by functions generated for exactly the implementations this store has.

With an implementation that names ``outcome``, ``after_operation`` is generated too (mode
``"outcome"``): the :class:`~corestore.Outcome` is built in the generated function (every
success shares :data:`~corestore.operation.SUCCEEDED`) and each implementation is called
directly; before issue 21's cost work it went through the general loop and an adapter per
implementation, about 1,300 instructions more per operation with ``telemetry`` beside the
``default`` profile's circuit breaker.

**Why.** The general methods loop over ``(plugin, callable)`` pairs and call an adapter lambda
for an implementation that takes fewer arguments than the hookspec; the generated function
calls each implementation directly with just the arguments it names, in pluggy's order. Same
semantics, line for line: ``before_operation`` stops at the first exception (it propagates, as
pluggy does); ``on_success`` and ``after_operation`` are isolated (an exception is logged and
the next implementation still runs); ``on_commit_invariant`` collects violations and turns any
other exception into a violation. Measured with callgrind: about 1,000 instructions less per
``default`` transaction. Hooks with a wrapper implementation keep pluggy's dispatch.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from .errors import InvariantViolation
from .operation import SUCCEEDED, Outcome, Violation

if TYPE_CHECKING:  # pragma: no cover
    from .hookcaller import HookCaller

__all__ = ["specialise", "generate"]

logger = logging.getLogger("corestore.hookcaller")  # the messages are the hook caller's


def _isolated_failure(hook: str, plugin: str) -> None:
    logger.exception("%s of plugin %r raised; the other plugins still run", hook, plugin)


def _invariant_failure(plugin: str, err: Exception, violations: list[Violation]) -> bool:
    """What :meth:`HookCaller.on_commit_invariant` does with an implementation's exception;
    True when it asked for the violations to be raised (an :class:`InvariantViolation`)."""
    if isinstance(err, InvariantViolation):
        violations.extend(err.violations or [Violation(check=f"{plugin}.raised", message=str(err))])
        return True
    logger.error("on_commit_invariant of plugin %r raised after a durable commit", plugin, exc_info=err)
    violations.append(Violation(check=f"{plugin}.error", message=f"invariant check raised {type(err).__name__}: {err}",
                                evidence={}))
    return False


#: generated source compiled once per shape: (hook, params, each implementation's argument
#: names, mode, defaults) -> a factory taking ``f0, p0, f1, p1, ...`` (the functions and the
#: plugin names) and returning the dispatch function. Bounded: forgotten all at once past
#: :data:`_MAX_FACTORIES` (shapes are few: one per profile's set of implementations).
_factories: dict[tuple[Any, ...], Callable[..., Callable[..., Any]]] = {}
_factories_lock = threading.Lock()
_MAX_FACTORIES = 256


def _factory(hook: str, params: Sequence[str], argnames: tuple[tuple[str, ...], ...], mode: str,
             defaults: str) -> Callable[..., Callable[..., Any]]:
    """The compiled factory for one shape (:data:`_factories`); ``exec`` runs once per shape
    and process, not once per store: compiling the source was most of a fresh open's dispatch
    cost."""
    key = (hook, tuple(params), argnames, mode, defaults)
    factory = _factories.get(key)
    if factory is not None:
        return factory
    env: dict[str, Any] = {"_isolated_failure": _isolated_failure, "_invariant_failure": _invariant_failure,
                           "SUCCEEDED": SUCCEEDED, "Outcome": Outcome}
    free = ", ".join(f"f{i}, p{i}" for i in range(len(argnames)))
    lines = [f"def _make({free}):", f"  def {hook}({', '.join(params)}{defaults}):"]
    if mode in ("after", "outcome"):
        lines.append("    if operation is None:\n        return")
    if mode == "outcome":
        lines.append("    if error is None and not retrying:\n        outcome = SUCCEEDED\n"
                     "    else:\n        outcome = Outcome(error=error, retrying=retrying)")
    if mode == "collect":
        lines.append("    violations = []\n    raise_requested = False")
    for i, names in enumerate(argnames):
        call = f"f{i}({', '.join(names)})"
        if mode == "plain":
            lines.append(f"    {call}")
        elif mode == "collect":
            lines.append(f"    try:\n        r = {call}\n    except Exception as err:\n"
                         f"        raise_requested = _invariant_failure(p{i}, err, violations) or raise_requested\n"
                         "    else:\n        if r:\n            violations.extend(r)")
        else:
            lines.append(f"    try:\n        {call}\n    except Exception:\n        _isolated_failure({hook!r}, p{i})")
    lines.append("    return (violations, raise_requested)" if mode == "collect" else "    return None")
    lines.append(f"  return {hook}")
    exec("\n".join(lines), env)  # noqa: S102 - names come from the hookspec and pluggy, not input
    made: Callable[..., Callable[..., Any]] = env["_make"]
    with _factories_lock:
        if len(_factories) >= _MAX_FACTORIES:
            _factories.clear()
        _factories[key] = made
    return made


def generate(hook: str, params: Sequence[str], impls: Sequence[pluggy.HookImpl], mode: str,
             defaults: str = "") -> Callable[..., Any]:
    """A function ``hook(*params)`` calling each of ``impls`` with the arguments it names.
    ``mode``: ``"plain"`` (first exception propagates), ``"isolated"`` (logged, the rest run),
    ``"collect"`` (``on_commit_invariant``), ``"after"`` (isolated; nothing when the operation
    is None), ``"outcome"`` (as ``"after"``, building ``outcome`` from ``error`` and ``retrying``
    first). ``defaults`` is appended to the parameter list (``", error=None"``). The source is
    compiled once per shape (:func:`_factory`); each store's function closes over its own
    implementations."""
    factory = _factory(hook, params, tuple(tuple(impl.argnames) for impl in impls), mode, defaults)
    bound: list[Any] = []
    for impl in impls:
        bound += (impl.function, impl.plugin_name)
    fn: Callable[..., Any] = factory(*bound)
    return fn


#: hooks whose implementations may ask for the ``operation`` argument
OPERATION_HOOKS = ("classify_error", "before_operation", "on_success", "on_commit_invariant", "on_fatal")


def specialise(caller: HookCaller, spec_args: dict[str, tuple[str, ...]]) -> None:
    """Install the generated dispatch on ``caller`` (see the module docstring), and decide
    ``caller.needs_operation``: whether the core must build an :class:`~corestore.Operation` for
    each unit of work. Only when an implementation names the ``operation`` argument (pluggy passes
    an implementation just the arguments it names), or implements ``after_operation`` (the core
    calls it only with an operation): otherwise nobody would ever see the object."""
    impls = caller._impls  # noqa: SLF001 - the hook caller's own table, read once at open
    caller.needs_operation = caller.has_after_operation or any(
        "operation" in impl.argnames for hook in OPERATION_HOOKS for impl in impls[hook])
    plain = {name: tuple(i for i in impls[name] if not (i.hookwrapper or i.wrapper)) for name in impls}
    before = plain["before_operation"]
    if "before_operation" not in caller.wrapped:
        if len(before) == 1 and tuple(before[0].argnames) == spec_args["before_operation"]:
            caller.before_operation = before[0].function  # type: ignore[method-assign, assignment]  # one, taking them all
        else:
            caller.before_operation = generate(  # type: ignore[method-assign]
                "before_operation", spec_args["before_operation"], before, "plain")
    caller.on_success = generate(  # type: ignore[method-assign]  # isolated: wrappers are refused there
        "on_success", spec_args["on_success"], plain["on_success"], "isolated")
    if not caller.wants_outcome:
        caller.after_operation = generate(  # type: ignore[method-assign]
            "after_operation", ("store", "operation"), plain["after_operation"], "after",
            ", error=None, retrying=False")
    else:  # same semantics as HookCaller._after_operation_with_outcome, without its loop and adapters
        caller.after_operation = generate(  # type: ignore[method-assign]
            "after_operation", ("store", "operation"), plain["after_operation"], "outcome",
            ", error=None, retrying=False")
    if "on_commit_invariant" not in caller.wrapped:
        caller.on_commit_invariant = generate(  # type: ignore[method-assign]
            "on_commit_invariant", spec_args["on_commit_invariant"], plain["on_commit_invariant"], "collect")
