"""Test plugins for the hook contract: wrappers (new and old style) on every hook, ordering,
unknown hooks and arguments. Installed through real entry points by ``install_plugins``."""
from __future__ import annotations

from typing import Any

import attrs

from corestore import Classification, ErrorKind, InvariantViolation, Violation, hookimpl
from corestore.hookspecs import HOOK_NAMES, ISOLATED_HOOKS

from plugin_fixtures import record


class WrapAll:
    """A ``wrapper=True`` implementation of every hook that is not isolated; records what it saw."""

    name = "t_wrap_all"

    @hookimpl(wrapper=True)
    def on_store_open(self, store: Any) -> Any:
        record(self.name, "on_store_open", "enter")
        result = yield
        record(self.name, "on_store_open", "exit")
        return result

    @hookimpl(wrapper=True)
    def on_open(self, store: Any, connection: Any) -> Any:
        record(self.name, "on_open", "enter")
        result = yield
        record(self.name, "on_open", "exit")
        return result

    @hookimpl(wrapper=True)
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Any:
        result = yield
        record(self.name, "classify_error", result.kind.name, result.source)
        return result

    @hookimpl(wrapper=True)
    def before_operation(self, store: Any, operation: Any) -> Any:
        record(self.name, "before_operation", "enter", operation.name)
        try:
            return (yield)
        except Exception as err:
            record(self.name, "before_operation", "saw", type(err).__name__)
            raise

    @hookimpl(wrapper=True)
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> Any:
        results = yield
        record(self.name, "on_commit_invariant", len(results))
        return results


class OldStyle:
    """``hookwrapper=True`` (pluggy's old style) on classify_error and on_commit_invariant: turns
    BUSY into FATAL_IO and adds a violation of its own."""

    name = "t_old_style"

    @hookimpl(hookwrapper=True)
    def classify_error(self, store: Any, error: BaseException, operation: Any) -> Any:
        outcome = yield
        result = outcome.get_result()
        if result is not None and result.kind is ErrorKind.BUSY:
            outcome.force_result(attrs.evolve(result, kind=ErrorKind.FATAL_IO, retryable=False,
                                              trips_breaker=True, source=self.name))

    @hookimpl(hookwrapper=True)
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> Any:
        outcome = yield
        outcome.force_result(list(outcome.get_result()) + [[Violation(check="t_old_style.extra", message="added")]])


class RaiseOnViolation:
    """A wrapper on on_commit_invariant that raises the collected violations."""

    name = "t_raise_on_violation"

    @hookimpl(wrapper=True)
    def on_commit_invariant(self, store: Any, connection: Any, operation: Any) -> Any:
        results = yield
        found = [v for r in results for v in (r or ())]
        if found:
            raise InvariantViolation("t_raise_on_violation", violations=tuple(found))
        return results


class Last:
    """``trylast`` on before_operation: runs after every plugin listed after it."""

    name = "t_last"

    @hookimpl(trylast=True)
    def before_operation(self, store: Any, operation: Any) -> None:
        record(self.name, "before_operation", operation.name)


class First:
    """``tryfirst`` on before_operation: runs before every plugin listed before it."""

    name = "t_first"

    @hookimpl(tryfirst=True)
    def before_operation(self, store: Any, operation: Any) -> None:
        record(self.name, "before_operation", operation.name)


class Typo:
    """``on_sucess``: a misspelled hook, refused at open."""

    name = "t_typo"

    @hookimpl
    def on_sucess(self, store: Any, operation: Any) -> None:
        record(self.name, "on_sucess")


class BadArgument:
    """``on_success`` with an argument the hook does not have."""

    name = "t_bad_argument"

    @hookimpl
    def on_success(self, store: Any, outcome: Any) -> None:
        record(self.name, "on_success")


class Optional:
    """A hook of a newer corestore, marked ``optionalhook``: loads, never called."""

    name = "t_optional"

    @hookimpl(optionalhook=True)
    def on_future_hook(self, store: Any) -> None:
        record(self.name, "on_future_hook")

    @hookimpl
    def on_success(self, store: Any) -> None:
        record(self.name, "on_success")


def _isolated_wrapper(hook: str) -> type:
    def impl(self: Any, store: Any) -> Any:
        record(self.name, hook)
        return (yield)

    impl.__name__ = hook
    return type(f"Wrap_{hook}", (), {"name": f"t_wrap_{hook}", hook: hookimpl(wrapper=True)(impl)})


#: one class per isolated hook, with a wrapper implementation of it (refused at open)
ISOLATED_WRAPPERS = {hook: _isolated_wrapper(hook) for hook in HOOK_NAMES if hook in ISOLATED_HOOKS}
globals().update({cls.__name__: cls for cls in ISOLATED_WRAPPERS.values()})

__all__ = ["WrapAll", "OldStyle", "RaiseOnViolation", "Last", "First", "Typo", "BadArgument", "Optional",
           "ISOLATED_WRAPPERS", "Classification"]


class Picky:
    """A plugin whose constructor refuses its settings (beyond what ``Settings`` validates)."""

    name = "t_picky"

    @attrs.frozen(kw_only=True)
    class Settings:
        low: int = attrs.field(default=1, validator=attrs.validators.instance_of(int), metadata={"help": "low"})
        high: int = attrs.field(default=2, validator=attrs.validators.instance_of(int), metadata={"help": "high"})
        mode: str = attrs.field(default="a", validator=attrs.validators.in_(("a", "b")), metadata={"help": "mode"})

    def __init__(self, settings: Picky.Settings) -> None:
        from corestore import ConfigError

        if settings.low >= settings.high:
            raise ConfigError(f"t_picky: low = {settings.low} must be below high = {settings.high}")
        self.settings = settings
