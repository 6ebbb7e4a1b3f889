"""The per-store pluggy plugin manager, with each plugin class's hook table computed once.

pluggy's ``register()`` asks :meth:`pluggy.PluginManager.parse_hookimpl_opts` about every name
``dir(plugin)`` lists, and each answer is an ``inspect.getattr_static`` walk of the class's MRO
(several for each hook found): about a tenth to a quarter of a millisecond per plugin, paid again
for every store a process opens, although which class attributes are hooks depends on the class
alone. :class:`CorestorePluginManager` computes a class's table once, with pluggy's own
``parse_hookimpl_opts`` on the first instance it registers: the names that are not hooks, and for
each hook the attribute, how pluggy binds it and its options. Registering a later instance binds
those attributes the way ``getattr`` would and adds them exactly as pluggy's ``register()`` does
(same :class:`pluggy.HookImpl`, same validation against the specifications, same order, historic
calls replayed). The instance's own attributes (``__dict__``, ``__slots__`` values) are still
parsed by pluggy on every registration, since they can differ from one instance to the next; one
of them being a hook, a class with its own ``__dir__``, a class or module registered as a plugin,
or a pluggy without the internals used here, sends the registration through pluggy's
``register()`` unchanged. The hookspec module's table is kept the same way.

A whole store's registration can go further (:meth:`CorestorePluginManager.register_planned`):
once a store's plugins were registered one by one and passed ``check_pending()``, the layout is
recorded per sequence of (name, class) — for each hook, which plugin's which attribute comes in
which position, and the specification it was validated against. A later store with the same
names and classes gets each hook's ``HookImpl`` list set in that order directly (fresh
``HookImpl``s bound to its own instances, argument names from the class table), with no
``_verify_hook``/``_add_hookimpl`` per implementation. The plan is refused (and the plugins
registered one by one) when any class table was recomputed since, when an instance's own
attribute shadows or adds a hook, when a specification object differs, or on a pluggy whose
``HookImpl`` slots are not the ones set here. The tests compare the result with pluggy's own
registration attribute by attribute.

A table is trusted only while the class is unchanged: it keeps the attributes of every class in
the MRO as they were when it was computed and is recomputed when any of them was replaced, added
or removed (a test that monkeypatches a hook onto a plugin class sees it registered).
"""
from __future__ import annotations

import logging
import threading
import types
from typing import Any

import pluggy

from . import hookspecs

try:  # pluggy's own option normaliser (what register() applies to every marker's options)
    from pluggy._config import normalize_hookimpl_opts as _normalize
except ImportError:  # pragma: no cover - an older or newer pluggy: register() through pluggy
    _normalize = None  # type: ignore[assignment]

__all__ = ["CorestorePluginManager", "new_plugin_manager"]

logger = logging.getLogger(__name__)

#: the internals the fast registration uses; without any of them every plugin goes through pluggy
_FAST = (_normalize is not None and hasattr(pluggy.PluginManager, "_verify_hook")
         and hasattr(pluggy.HookCaller, "_add_hookimpl") and hasattr(pluggy.HookCaller, "_maybe_apply_history"))

_FUNCTION, _STATIC, _CLASS, _BOUND = range(4)
#: what pluggy takes for a hook among an instance's own attributes
_HOOKABLE = (types.FunctionType, types.MethodType)
_HOOKABLE_SET = frozenset(_HOOKABLE)


class _Table:
    """One class's (or module's) hook table and the attributes it was computed from."""

    __slots__ = ("not_hooks", "slots", "hooks", "owners", "keys", "values", "shapes", "hook_attrs")

    def __init__(self, not_hooks: frozenset[str], slots: frozenset[str], hooks: tuple[Any, ...],
                 owners: tuple[Any, ...]) -> None:
        self.not_hooks = not_hooks
        self.slots = slots
        #: (attribute, hook name, how to bind, the class attribute, the marker's options)
        self.hooks = hooks
        self.owners = owners
        self.hook_attrs = frozenset(hook[0] for hook in hooks)
        dicts = [vars(owner) for owner in owners]
        self.keys = tuple(tuple(d) for d in dicts)
        self.values = tuple(tuple(d.values()) for d in dicts)  # held: their ids cannot be reused
        #: attribute -> (argnames, kwargnames) pluggy's ``varnames`` gave for the first instance
        #: (the same for every instance: they depend on the class attribute and how it binds)
        self.shapes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def still_valid(self) -> bool:
        """True while no attribute of any owner was replaced, added or removed. Compared as
        tuples (C-level; each element is tested for identity first): an attribute replaced by a
        different object compares unequal (functions, descriptors and classes compare by
        identity); one whose ``__eq__`` cannot answer counts as changed."""
        try:
            for owner, keys, values in zip(self.owners, self.keys, self.values, strict=True):
                d = vars(owner)
                if len(d) != len(keys) or tuple(d) != keys or tuple(d.values()) != values:
                    return False
        except Exception:  # noqa: BLE001 - an attribute whose comparison raised: recompute the table
            return False
        return True


#: per class (per module for specs). A table holds its class's attributes and so keeps the class
#: alive: the tables are forgotten all at once past :data:`_MAX_TABLES` (a process that makes
#: plugin classes in a loop).
_impl_tables: dict[type, _Table] = {}
_spec_tables: dict[Any, _Table] = {}
_tables_lock = threading.Lock()
_MAX_TABLES = 512
#: per (name, class) sequence of a store's plugins: (tables, each hook's (plugin index, attribute)
#: order, each hook's specification); see :meth:`CorestorePluginManager.register_planned`
_plans: dict[tuple[tuple[str, type], ...], Any] = {}


def _remember(tables: dict[Any, Any], key: Any, table: Any) -> None:
    with _tables_lock:
        if len(tables) >= _MAX_TABLES:
            tables.clear()
        tables[key] = table


def _instance_names(plugin: object) -> frozenset[str]:
    """Names stored in the instance's own ``__dict__`` (pluggy reads them before the class)."""
    try:
        own = object.__getattribute__(plugin, "__dict__")
    except AttributeError:
        return frozenset()
    return frozenset(own) if isinstance(own, dict) else frozenset()


def _class_attribute(owners: tuple[type, ...], name: str) -> Any:
    """What ``inspect.getattr_static`` finds for ``name`` on an instance without it in its own
    ``__dict__``: the first class in the MRO that defines it (None: none does)."""
    for owner in owners:
        found = vars(owner).get(name, _ABSENT)
        if found is not _ABSENT:
            return found
    return None


_ABSENT = object()


def _bind(kind: int, attribute: Any, plugin: Any, cls: type) -> Any:
    """The hook function exactly as ``getattr(plugin, name)`` (and pluggy) would bind it."""
    if kind == _FUNCTION:
        return attribute.__get__(plugin, cls)
    if kind == _STATIC:
        return attribute.__func__
    if kind == _CLASS:
        return attribute.__get__(cls, cls)
    return attribute  # an already bound method stored on the class


#: the attributes :func:`_hookimpl` sets: exactly pluggy's ``HookImpl.__slots__`` (checked; any
#: other pluggy builds every ``HookImpl`` itself)
_IMPL_SLOTS = frozenset(("argnames", "function", "hookwrapper", "kwargnames", "optionalhook", "opts", "plugin",
                         "plugin_name", "tryfirst", "trylast", "wrapper"))
_FAST_IMPL = frozenset(getattr(pluggy.HookImpl, "__slots__", ())) == _IMPL_SLOTS


_new_impl = object.__new__


def _hookimpl(table: _Table, attr: str, plugin: Any, plugin_name: str, function: Any,
              opts: Any) -> pluggy.HookImpl:
    """``pluggy.HookImpl(plugin, plugin_name, function, opts)``, without pluggy's ``varnames``
    (an ``inspect`` walk of the signature, most of a registration's cost) after the class's
    first instance: the argument names are the ones computed then (:attr:`_Table.shapes`)."""
    shape = table.shapes.get(attr)
    if shape is None or not _FAST_IMPL:
        impl = pluggy.HookImpl(plugin, plugin_name, function, opts)
        table.shapes[attr] = (impl.argnames, impl.kwargnames)
        return impl
    impl = _new_impl(pluggy.HookImpl)
    impl.function = function  # type: ignore[misc]  # pluggy's Final is for its users; the slots are plain
    impl.argnames, impl.kwargnames = shape  # type: ignore[misc]
    impl.plugin = plugin  # type: ignore[misc]
    impl.opts = opts  # type: ignore[misc]
    impl.plugin_name = plugin_name  # type: ignore[misc]
    impl.wrapper = opts["wrapper"]  # type: ignore[misc]
    impl.hookwrapper = opts["hookwrapper"]  # type: ignore[misc]
    impl.optionalhook = opts["optionalhook"]  # type: ignore[misc]
    impl.tryfirst = opts["tryfirst"]  # type: ignore[misc]
    impl.trylast = opts["trylast"]  # type: ignore[misc]
    return impl


class CorestorePluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``corestore`` project, with per-class hook tables (module doc)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self._skip: frozenset[str] = frozenset()

    # -- implementations -------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        table = self._table_for(plugin)
        if table is None:
            return super().register(plugin, name)
        own = _instance_names(plugin)
        plugin_name = name or self.get_canonical_name(plugin)
        if (plugin_name in self._name2plugin or self._instance_has_hooks(plugin, own | table.slots)
                or plugin in self._name2plugin.values()):
            # pluggy's own errors and edge cases (a blocked name, an instance-level hook)
            previous, self._skip = self._skip, table.not_hooks - own
            try:
                return super().register(plugin, name)
            finally:
                self._skip = previous
        cls = type(plugin)
        found: list[tuple[str, pluggy.HookImpl, bool]] = []
        for attr, hook_name, kind, attribute, opts in table.hooks:
            if attr in own:
                continue  # the instance's own value shadows the class's hook (pluggy: not a hook)
            hookimpl = _hookimpl(table, attr, plugin, plugin_name, _bind(kind, attribute, plugin, cls), opts)
            hook: pluggy.HookCaller | None = getattr(self.hook, hook_name, None)
            verified = False
            if hook is not None and hook.has_spec():
                self._verify_hook(hook, hookimpl)
                verified = True
            found.append((hook_name, hookimpl, verified))
        self._name2plugin[plugin_name] = plugin
        for hook_name, hookimpl, verified in found:
            hook = getattr(self.hook, hook_name, None)
            if hook is None:
                hook = pluggy.HookCaller(hook_name, self._hookexec)
                setattr(self.hook, hook_name, hook)
            elif not verified and hook.has_spec():
                self._verify_hook(hook, hookimpl)
            hook._maybe_apply_history(hookimpl)
            hook._add_hookimpl(hookimpl)
        return plugin_name

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if name in self._skip:
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def _instance_has_hooks(self, plugin: Any, names: frozenset[str]) -> bool:
        """Whether one of the instance's own attributes (``names``) is a hook. pluggy considers
        only a function or a bound method stored there; just those are parsed by pluggy."""
        if not names:
            return False
        parse = super().parse_hookimpl_opts
        try:
            own = object.__getattribute__(plugin, "__dict__")
        except AttributeError:
            own = {}
        for name in names:
            value = own.get(name, _ABSENT) if isinstance(own, dict) else _ABSENT
            if value is _ABSENT or isinstance(value, _HOOKABLE):
                if parse(plugin, name) is not None:  # a slot, a function or a bound method
                    return True
        return False

    def _table_for(self, plugin: Any) -> _Table | None:
        """The class's table (computed now if missing or stale); None: pluggy registers it."""
        if not _FAST or isinstance(plugin, (type, types.ModuleType)):
            return None
        cls = type(plugin)
        if getattr(cls, "__dir__", None) is not object.__dir__:
            return None
        table = _impl_tables.get(cls)
        if table is None or not table.still_valid():
            table = self._class_table(plugin, cls)
            _remember(_impl_tables, cls, table)
        return table

    def _class_table(self, plugin: Any, cls: type) -> _Table:
        owners = tuple(k for k in cls.__mro__ if k is not object)
        own = _instance_names(plugin)
        parse = super().parse_hookimpl_opts
        not_hooks, slots, hooks = set(), set(), []
        for attr in dir(plugin):
            if attr in own:
                continue
            attribute = _class_attribute(owners, attr)
            if isinstance(attribute, types.MemberDescriptorType):
                slots.add(attr)  # a __slots__ value is the instance's own
                continue
            opts = parse(plugin, attr)
            if opts is None:
                not_hooks.add(attr)
                continue
            assert _normalize is not None
            _normalize(opts)
            if isinstance(attribute, staticmethod):
                kind = _STATIC
            elif isinstance(attribute, classmethod):
                kind = _CLASS
            elif isinstance(attribute, types.MethodType):
                kind = _BOUND
            else:
                kind = _FUNCTION
            hooks.append((attr, opts.get("specname") or attr, kind, attribute, opts))
        return _Table(frozenset(not_hooks), frozenset(slots), tuple(hooks), owners)

    # -- a whole store's plugins ----------------------------------------------------------------
    def register_planned(self, plugins: list[tuple[Any, str]]) -> bool:
        """Register ``plugins`` (``(instance, name)``, in registration order) from the plan
        recorded by :meth:`remember_plan` for the same names and classes: each hook's
        implementations in the order the one-by-one registration gave them, without pluggy's
        per-implementation validation and ordering (done when the plan was recorded, for the
        same class attributes and specifications). False, with nothing registered, when there
        is no plan or any condition of it does not hold (then register one by one)."""
        if not _FAST or not _FAST_IMPL or self._name2plugin:
            return False
        plan = _plans.get(tuple((name, type(plugin)) for plugin, name in plugins))
        if plan is None:
            return False
        tables, layout, specs = plan
        for (plugin, _name), table in zip(plugins, tables, strict=True):
            if self._table_for(plugin) is not table or table is None:
                return False  # a class changed since: its table was recomputed
            if self._instance_differs(plugin, table):
                return False
        if len({id(plugin) for plugin, _name in plugins}) != len(plugins):
            return False
        callers = []
        for hook_name, spec in specs:
            caller = getattr(self.hook, hook_name, None)
            if caller is None or caller.spec is not spec or caller._hookimpls or caller._call_history:
                return False
            callers.append(caller)
        impls: dict[tuple[int, str], pluggy.HookImpl] = {}
        for i, ((plugin, name), table) in enumerate(zip(plugins, tables, strict=True)):
            cls = type(plugin)
            for attr, _hook, kind, attribute, opts in table.hooks:
                impls[i, attr] = _hookimpl(table, attr, plugin, name, _bind(kind, attribute, plugin, cls), opts)
            self._name2plugin[name] = plugin
        for caller, order in zip(callers, layout, strict=True):
            caller._hookimpls[:] = [impls[key] for key in order]
        return True

    def _instance_differs(self, plugin: Any, table: _Table) -> bool:
        """Whether the instance's own attributes change what its class table says (one of them
        shadows a hook, or is a hook itself): :meth:`_instance_has_hooks` in one pass."""
        parse = super().parse_hookimpl_opts
        try:
            own = object.__getattribute__(plugin, "__dict__")
        except AttributeError:
            own = {}
        if not isinstance(own, dict):
            return True
        if not table.hook_attrs.isdisjoint(own):
            return True  # an instance value shadows a class hook
        if not _HOOKABLE_SET.isdisjoint(map(type, own.values())):  # (both types are final: exact = isinstance)
            for name, value in own.items():
                if isinstance(value, _HOOKABLE) and parse(plugin, name) is not None:
                    return True
        return any(parse(plugin, name) is not None for name in table.slots if name not in own)

    def remember_plan(self, plugins: list[tuple[Any, str]]) -> None:
        """Record how ``plugins`` (just registered one by one, in this order, into this fresh
        manager) were laid out, for :meth:`register_planned`. Nothing is recorded unless every
        plugin went through a class table, each hook of each class is one attribute, and every
        hook implemented has a specification (a plan replays validated layouts only)."""
        if not _FAST or not _FAST_IMPL:
            return
        tables = []
        for plugin, name in plugins:
            table = _impl_tables.get(type(plugin))
            if (table is None or not table.still_valid() or self._name2plugin.get(name) is not plugin
                    or _instance_names(plugin) & table.hook_attrs):
                return
            if len({hook for _attr, hook, *_rest in table.hooks}) != len(table.hooks):
                return  # two attributes implementing one hook (specname): not planned
            tables.append(table)
        index = {id(plugin): i for i, (plugin, _name) in enumerate(plugins)}
        specs, layout, placed = [], [], 0
        for hook_name, caller in sorted(vars(self.hook).items()):
            if not isinstance(caller, pluggy.HookCaller) or not caller._hookimpls:
                continue
            if caller.spec is None or caller._call_history:
                return
            order = []
            for impl in caller._hookimpls:
                i = index.get(id(impl.plugin))
                if i is None:
                    return
                attrs_ = [attr for attr, hook, *_rest in tables[i].hooks if hook == hook_name]
                if len(attrs_) != 1:
                    return
                order.append((i, attrs_[0]))
            specs.append((hook_name, caller.spec))
            layout.append(tuple(order))
            placed += len(order)
        if placed != sum(len(t.hooks) for t in tables):
            return
        _remember(_plans, tuple((name, type(plugin)) for plugin, name in plugins),
                  (tuple(tables), tuple(layout), tuple(specs)))

    # -- specifications --------------------------------------------------------------------
    def add_hookspecs(self, module_or_class: Any) -> None:
        """pluggy's ``add_hookspecs``; for a module whose specifications this process has read
        before (corestore's :mod:`~corestore.hookspecs`, once per store), the
        :class:`pluggy.HookCaller` of each hook gets the :class:`~pluggy.HookSpec` built then (a
        spec is read-only once built: pluggy never changes one)."""
        if isinstance(module_or_class, types.ModuleType):
            specs = self._known_specs(module_or_class)
            if specs is not None and _FAST and not any(hasattr(self.hook, name) for name, _spec in specs):
                for name, spec in specs:
                    caller = pluggy.HookCaller(name, self._hookexec)
                    caller.spec = spec
                    if spec.opts.get("historic"):
                        caller._call_history = []
                    setattr(self.hook, name, caller)
                return
        super().add_hookspecs(module_or_class)

    def _known_specs(self, module: types.ModuleType) -> tuple[tuple[str, Any], ...] | None:
        """``(name, HookSpec)`` for each specification in ``module``, read once per process (and
        again when the module's attributes changed)."""
        table = _spec_tables.get(module)
        if table is None or not table.still_valid():
            template = pluggy.PluginManager(self.project_name)
            template.add_hookspecs(module)
            specs = tuple((name, caller.spec) for name, caller in sorted(vars(template.hook).items())
                          if isinstance(caller, pluggy.HookCaller) and caller.spec is not None)
            table = _Table(frozenset(), frozenset(), specs, (module,))
            _remember(_spec_tables, module, table)
        if table.hooks and self.project_name == hookspecs.PROJECT:
            return table.hooks
        return None


def new_plugin_manager() -> CorestorePluginManager:
    """A manager for one store, with corestore's hook specifications added."""
    pm = CorestorePluginManager()
    pm.add_hookspecs(hookspecs)
    return pm
