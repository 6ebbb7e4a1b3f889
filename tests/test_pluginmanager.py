"""Per-class hook tables (issue 18): registering through corestore's plugin manager gives exactly
what pluggy's own ``register()`` gives, and a table follows the class when it changes."""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pluggy
import pytest

from corestore import hookimpl, hookspecs, registry
from corestore.pluginmanager import CorestorePluginManager, new_plugin_manager
from corestore.profiles import resolve_profile


def _table(pm: pluggy.PluginManager) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for name in hookspecs.HOOK_NAMES:
        caller = getattr(pm.hook, name)
        out[name] = [(i.plugin_name, i.function, dict(i.opts), i.argnames, i.kwargnames)
                     for i in caller.get_hookimpls()]
        out[name + ".spec"] = [(caller.spec.argnames, caller.spec.opts)] if caller.spec else []
    return out


def _pluggy_pm() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _default_instances(tmp_path: Path) -> list[tuple[str, Any]]:
    profile = resolve_profile("default", config=None, path=str(tmp_path / "x.db"))
    out = []
    for name in profile.plugins:
        cls = registry.load_plugin_class(name)
        settings = registry.build_settings(cls, profile.settings_for(name), where="test")
        out.append((name, cls(settings) if settings is not None else cls()))
    return out


def test_default_plugins_register_as_pluggy_registers_them(tmp_path: Path) -> None:
    for _round in range(2):  # the first registration computes the tables, the second uses them
        ours, theirs = new_plugin_manager(), _pluggy_pm()
        for name, plugin in reversed(_default_instances(tmp_path)):
            ours.register(plugin, name=name)
            theirs.register(plugin, name=name)
        assert _table(ours) == _table(theirs)


class _Plain:
    name = "plain"

    @hookimpl
    def on_open(self, store: Any, connection: Any) -> None:
        pass

    @hookimpl(trylast=True)
    def on_close(self, store: Any) -> None:
        pass


def test_a_hook_added_to_the_class_later_is_registered() -> None:
    class Late(_Plain):
        pass

    new_plugin_manager().register(Late(), name="late")  # table computed without on_health

    def on_health(self: Any, store: Any) -> None:
        return None

    Late.on_health = hookimpl(on_health)  # type: ignore[attr-defined]
    ours, theirs = new_plugin_manager(), _pluggy_pm()
    ours.register(Late(), name="late")
    theirs.register(Late(), name="late")
    assert [i.plugin_name for i in ours.hook.on_health.get_hookimpls()] == ["late"]
    assert _table(ours).keys() == _table(theirs).keys()


def test_instance_attributes_go_through_pluggy() -> None:
    def on_fork_child(store: Any) -> None:
        pass

    plain = _Plain()
    new_plugin_manager().register(_Plain(), name="warm")
    plain.on_fork_child = hookimpl(on_fork_child)  # type: ignore[attr-defined]
    plain.on_open = 42  # type: ignore[assignment,method-assign]  # shadows the class's hook: not a hook
    ours, theirs = new_plugin_manager(), _pluggy_pm()
    ours.register(plain, name="p")
    theirs.register(plain, name="p")
    assert _table(ours) == _table(theirs)
    assert [i.plugin_name for i in ours.hook.on_fork_child.get_hookimpls()] == ["p"]
    assert ours.hook.on_open.get_hookimpls() == []


def test_pluggy_errors_are_kept() -> None:
    class Bad:
        @hookimpl
        def on_open(self, store: Any, connection: Any, nonsense: Any) -> None:
            pass

    for _ in range(2):
        with pytest.raises(pluggy.PluginValidationError):
            new_plugin_manager().register(Bad(), name="bad")
    pm = new_plugin_manager()
    pm.register(_Plain(), name="x")
    with pytest.raises(ValueError, match="already registered"):
        pm.register(_Plain(), name="x")
    assert isinstance(pm, CorestorePluginManager)


def test_entry_points_read_once_and_again_when_sys_path_changes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    registry.clear_cache()
    calls = []
    real = importlib.metadata.entry_points

    def counting(**kw: Any) -> Any:
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    registry.discover()
    registry.discover()
    assert len(calls) == 1
    site = tmp_path / "site"
    info = site / "acme_once-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-once\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[corestore]\nacme_once = acme_once:Plugin\n")
    monkeypatch.syspath_prepend(str(site))
    assert "acme_once" in registry.discover()  # sys.path changed: read again
    assert len(calls) == 2
    registry.clear_cache("anything")
    registry.discover()
    assert len(calls) == 3
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site)])
    assert "acme_once" not in registry.discover()
    registry.clear_cache()


# -- a whole store's registration from a recorded plan (issue 18: a fresh open's registration) ------
def _order(tmp_path: Path) -> list[tuple[Any, str]]:
    from corestore.registry import CoreClassifier

    return [(CoreClassifier(), "core")] + [(plugin, name) for name, plugin in reversed(_default_instances(tmp_path))]


def test_a_planned_registration_lays_out_what_pluggy_does(tmp_path: Path) -> None:
    first = new_plugin_manager()
    order = _order(tmp_path)
    for plugin, name in order:
        first.register(plugin, name=name)
    first.remember_plan(order)
    for _round in range(2):
        order = _order(tmp_path)  # new instances, same names and classes
        ours, theirs = new_plugin_manager(), _pluggy_pm()
        assert ours.register_planned(order)
        for plugin, name in order:
            theirs.register(plugin, name=name)
        assert _table(ours) == _table(theirs)
        assert {n: p for n, p in ours.list_name_plugin()} == {n: p for n, p in theirs.list_name_plugin()}
        for name in hookspecs.HOOK_NAMES:
            for mine, pluggys in zip(getattr(ours.hook, name).get_hookimpls(), getattr(theirs.hook, name).get_hookimpls(),
                                     strict=True):
                assert {a: getattr(mine, a) for a in pluggy.HookImpl.__slots__} == \
                    {a: getattr(pluggys, a) for a in pluggy.HookImpl.__slots__}
        ours.check_pending()


def test_no_plan_is_used_when_a_class_or_an_instance_differs() -> None:
    class Planned(_Plain):
        pass

    def register_all(order: list[tuple[Any, str]]) -> CorestorePluginManager:
        pm = new_plugin_manager()
        for plugin, name in order:
            pm.register(plugin, name=name)
        pm.remember_plan(order)
        return pm

    register_all([(Planned(), "p")])
    assert new_plugin_manager().register_planned([(Planned(), "p")])
    assert not new_plugin_manager().register_planned([(Planned(), "other-name")])
    assert not new_plugin_manager().register_planned([(_Plain(), "p")])  # another class
    shadowed = Planned()
    shadowed.on_open = 42  # type: ignore[assignment,method-assign]  # the instance shadows a hook
    assert not new_plugin_manager().register_planned([(shadowed, "p")])

    def on_health(self: Any, store: Any) -> None:
        return None

    Planned.on_health = hookimpl(on_health)  # type: ignore[attr-defined]
    pm = new_plugin_manager()
    assert not pm.register_planned([(Planned(), "p")])  # the class changed since the plan
    assert pm.list_name_plugin() == []  # nothing registered by a refused plan
    register_all([(Planned(), "p")])
    pm = new_plugin_manager()
    assert pm.register_planned([(Planned(), "p")])
    assert [i.plugin_name for i in pm.hook.on_health.get_hookimpls()] == ["p"]


def test_stores_after_the_first_are_registered_from_the_plan(tmp_path: Path) -> None:
    profile = resolve_profile("default", config=None, path=str(tmp_path / "x.db"))
    first, _ = registry.build_hook_caller(profile)
    second, _ = registry.build_hook_caller(profile)
    key = tuple((name, type(plugin)) for name, plugin in second.pm.list_name_plugin())
    from corestore import pluginmanager

    assert any(set(k) == set(key) for k in pluginmanager._plans)
    for hook in hookspecs.HOOK_NAMES:
        assert first.implementers(hook) == second.implementers(hook)
