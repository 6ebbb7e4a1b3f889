"""The per-store pluggy plugin manager, with each plugin class's hook table computed once.

pluggy's ``register()`` asks :meth:`pluggy.PluginManager.parse_hookimpl_opts` about every name
``dir(plugin)`` lists, and each answer is an ``inspect.getattr_static`` walk of the class's MRO:
about 60 names per plugin, a quarter of a millisecond per plugin, paid again for every store a
process opens. Almost all of those names are not hooks, and whether a class attribute is a hook
depends on the class alone. :class:`CorestorePluginManager` remembers, per class, the names pluggy
found not to be hooks and answers ``None`` for them at once; every other name (the hooks, the
instance's own attributes, ``__slots__`` values) still goes through pluggy's own
``parse_hookimpl_opts``, and ``register()`` itself (validation against the specs, ordering,
wrappers, historic calls) is pluggy's, unchanged. The hookspec module is read the same way.

A table is trusted only while the class is unchanged: it keeps the attributes of every class in
the MRO as they were when it was computed and is recomputed when any of them was replaced,
added or removed (a test that monkeypatches a hook onto a plugin class sees it registered).
"""
from __future__ import annotations

import logging
import operator
import threading
import types
from typing import Any

import pluggy

from . import hookspecs

__all__ = ["CorestorePluginManager", "new_plugin_manager"]

logger = logging.getLogger(__name__)


class _NotHooks:
    """The names of one class (or module) that pluggy's parsing found not to be hooks, and the
    attributes it was computed from."""

    __slots__ = ("names", "owners", "keys", "values")

    def __init__(self, names: frozenset[str], owners: tuple[Any, ...]) -> None:
        self.names = names
        self.owners = owners
        dicts = [vars(owner) for owner in owners]
        self.keys = tuple(tuple(d) for d in dicts)
        self.values = tuple(tuple(d.values()) for d in dicts)  # held: their ids cannot be reused

    def still_valid(self) -> bool:
        """True while no attribute of any owner was replaced, added or removed (identity)."""
        is_ = operator.is_
        for owner, keys, values in zip(self.owners, self.keys, self.values, strict=True):
            d = vars(owner)
            if len(d) != len(keys) or not all(map(is_, d, keys)) or not all(map(is_, d.values(), values)):
                return False
        return True


#: per class (per module for specs); a table holds its class's attributes, so it keeps the class
#: alive: the tables are forgotten all at once past :data:`_MAX_TABLES` classes (a process that
#: makes plugin classes in a loop)
_impl_tables: dict[type, _NotHooks] = {}
_spec_tables: dict[Any, _NotHooks] = {}
_tables_lock = threading.Lock()
_MAX_TABLES = 512


def _remember(tables: dict[Any, _NotHooks], key: Any, table: _NotHooks) -> None:
    with _tables_lock:
        if len(tables) >= _MAX_TABLES:
            tables.clear()
        tables[key] = table


def _instance_names(plugin: object) -> set[str]:
    """Names stored on the instance itself (``__dict__``), which pluggy reads before the class."""
    try:
        own = object.__getattribute__(plugin, "__dict__")
    except AttributeError:
        return set()
    return set(own) if isinstance(own, dict) else set()


def _owners(cls: type) -> tuple[type, ...]:
    return tuple(k for k in cls.__mro__ if k is not object)


class CorestorePluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``corestore`` project, with per-class hook tables (module doc)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self._skip: frozenset[str] = frozenset()
        self._spec_skip: frozenset[str] = frozenset()

    # -- implementations -------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        skip = self._not_hooks(plugin)
        previous, self._skip = self._skip, skip
        try:
            return super().register(plugin, name)
        finally:
            self._skip = previous

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if name in self._skip:
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def _not_hooks(self, plugin: Any) -> frozenset[str]:
        """Names of ``plugin`` that are certainly not hook implementations: its class's table
        less what the instance stores itself (``__slots__`` names never enter a table)."""
        if isinstance(plugin, (type, types.ModuleType)):
            return frozenset()  # classes and modules as plugins: pluggy's own lookup
        cls = type(plugin)
        table = _impl_tables.get(cls)
        if table is None or not table.still_valid():
            table = self._class_table(plugin, cls)
        own = _instance_names(plugin)
        return table.names - own if own else table.names

    def _class_table(self, plugin: Any, cls: type) -> _NotHooks:
        owners = _owners(cls)
        own = _instance_names(plugin)
        names = set()
        for attr in dir(plugin):
            if attr in own:
                continue
            static = None
            for owner in owners:
                if attr in vars(owner):
                    static = vars(owner)[attr]
                    break
            if isinstance(static, types.MemberDescriptorType):
                continue  # a __slots__ value is the instance's own
            if super().parse_hookimpl_opts(plugin, attr) is None:
                names.add(attr)
        table = _NotHooks(frozenset(names), owners)
        _remember(_impl_tables, cls, table)
        return table

    # -- specifications --------------------------------------------------------------------
    def add_hookspecs(self, module_or_class: Any) -> None:
        skip: frozenset[str] = frozenset()
        if isinstance(module_or_class, types.ModuleType):
            table = _spec_tables.get(module_or_class)
            if table is None or not table.still_valid():
                parse = super().parse_hookspec_opts
                names = frozenset(n for n in dir(module_or_class) if parse(module_or_class, n) is None)
                table = _NotHooks(names, (module_or_class,))
                _remember(_spec_tables, module_or_class, table)
            skip = table.names
        previous, self._spec_skip = self._spec_skip, skip
        try:
            super().add_hookspecs(module_or_class)
        finally:
            self._spec_skip = previous

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        if name in self._spec_skip:
            return None
        return super().parse_hookspec_opts(module_or_class, name)


def new_plugin_manager() -> CorestorePluginManager:
    """A manager for one store, with corestore's hook specifications added."""
    pm = CorestorePluginManager()
    pm.add_hookspecs(hookspecs)
    return pm
