"""The plugin contract (issue 16, items 1 and 2): every hook is dispatched with pluggy's
semantics (wrappers, ``tryfirst``/``trylast``, ``firstresult``) or refused at open with a
``PluginError`` naming the plugin and the hook; unknown hooks and unknown arguments are refused at
open and by ``corestore profiles --check`` (the real console script), except ``optionalhook``.
Plugins are installed through real entry points."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corestore
from corestore import ErrorKind, InvariantViolation, PluginError, Profile
from corestore.hookspecs import HOOK_NAMES, ISOLATED_HOOKS

from helpers import Holder, child_env
from plugin_fixtures import EVENTS
from plugin_wrappers import ISOLATED_WRAPPERS

PRAGMAS = {"busy_timeout": 200, "journal_mode": "wal", "synchronous": "normal"}


@pytest.fixture
def plugins(install_plugins):
    entry_points = {
        "t_recorder": "plugin_fixtures:Recorder", "t_busy_is_fatal": "plugin_fixtures:BusyIsFatal",
        "t_gate": "plugin_fixtures:Gate", "t_checker": "plugin_fixtures:Checker",
        "t_wrap_all": "plugin_wrappers:WrapAll", "t_old_style": "plugin_wrappers:OldStyle",
        "t_raise_on_violation": "plugin_wrappers:RaiseOnViolation", "t_first": "plugin_wrappers:First",
        "t_last": "plugin_wrappers:Last", "t_typo": "plugin_wrappers:Typo",
        "t_bad_argument": "plugin_wrappers:BadArgument", "t_optional": "plugin_wrappers:Optional",
    }
    entry_points.update({f"t_wrap_{hook}": f"plugin_wrappers:{cls.__name__}" for hook, cls in ISOLATED_WRAPPERS.items()})
    return install_plugins(**entry_points)


def open_with(path: Path, *plugins: str, **kw) -> corestore.Store:
    return corestore.open(Profile(path=str(path), plugins=plugins, pragmas=kw.pop("pragmas", PRAGMAS), **kw))


def events(plugin: str, hook: str) -> list[tuple]:
    return [e[2:] for e in EVENTS if e[0] == plugin and e[1] == hook]


def console(*args: str, site: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``corestore`` console script of this environment (with the test plugins' site)."""
    script = Path(sys.executable).parent / "corestore"
    extra = {"PYTHONPATH": str(site)} if site is not None else {}
    env = child_env(**extra)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), child_env()["PYTHONPATH"]])
    env.pop("CORESTORE_CONFIG", None)
    env.pop("CORESTORE_PLUGINS", None)
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def config(tmp_path: Path, *plugins: str) -> Path:
    cfg = tmp_path / "corestore.toml"
    cfg.write_text(f"[profiles.main]\nextends = \"minimal\"\nplugins = {json.dumps(list(plugins))}\n\n"
                   f"[databases.app]\npath = \"app.db\"\nprofile = \"main\"\n")
    return cfg


# -- wrappers on every hook ---------------------------------------------------------------------
def test_every_hook_has_a_wrapper_test_here() -> None:
    source = Path(__file__).read_text()
    for name in HOOK_NAMES:
        if name not in ISOLATED_HOOKS:
            assert f"def test_hook_{name}_wrapper(" in source
    assert set(ISOLATED_WRAPPERS) == set(ISOLATED_HOOKS)  # test_hook_isolated_wrapper_is_refused covers these


def test_hook_on_store_open_wrapper(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_wrap_all", "t_recorder")
    assert [e for e in EVENTS if e[1] == "on_store_open"] == [
        ("t_wrap_all", "on_store_open", "enter"), ("t_recorder", "on_store_open", 1), ("t_wrap_all", "on_store_open", "exit")]
    assert store.hooks.wrapped >= {"on_store_open"}
    store.close()


def test_hook_on_open_wrapper(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_wrap_all", "t_recorder")
    assert [e[:3] for e in EVENTS if e[1] == "on_open"] == [
        ("t_wrap_all", "on_open", "enter"), ("t_recorder", "on_open", "sqlite3"), ("t_wrap_all", "on_open", "exit")]
    store.close()


def test_hook_classify_error_wrapper(tmp_path: Path, plugins) -> None:
    """Today a wrapper raised AttributeError in the registry; now pluggy dispatches: first
    non-None wins, the wrapper sees (and may replace) the answer, ``source`` names who answered."""
    path = tmp_path / "a.db"
    plain = open_with(path, "t_wrap_all", "t_recorder")
    overriding = open_with(path, "t_wrap_all", "t_busy_is_fatal", "t_recorder")
    old_style = open_with(path, "t_old_style", "t_recorder")
    plain.database.execute_sql("create table t(x)")
    holder = Holder(str(path))
    try:
        with pytest.raises(corestore.BusyError) as busy:
            with plain.transaction():
                pass
        assert busy.value.classification.source == "core"
        with pytest.raises(corestore.FatalError) as fatal:
            with overriding.transaction():
                pass
        assert fatal.value.classification.source == "t_busy_is_fatal" and fatal.value.kind is ErrorKind.FATAL_IO
        with pytest.raises(corestore.FatalError) as forced:  # an old-style hookwrapper replacing the result
            with old_style.transaction():
                pass
        assert forced.value.classification.source == "t_old_style"
    finally:
        holder.kill()
    assert events("t_wrap_all", "classify_error") == [("BUSY", "core"), ("FATAL_IO", "t_busy_is_fatal")]
    for store in (plain, overriding, old_style):
        store.close()


def test_hook_before_operation_wrapper(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_wrap_all", "t_gate", "t_recorder")
    with store.transaction(name="w"):
        pass
    with pytest.raises(PermissionError):  # the refusal passes through the wrapper to the caller
        with store.transaction(name="forbidden"):
            raise AssertionError("never entered")
    # (None: the store's first connection, an operation of kind "open")
    assert events("t_wrap_all", "before_operation") == [("enter", None), ("enter", "w"), ("enter", "forbidden"),
                                                        ("saw", "PermissionError")]
    # t_gate raised first: the rest did not run
    assert events("t_recorder", "before_operation") == [("open", None), ("write", "w")]
    store.close()


def test_hook_on_commit_invariant_wrapper(tmp_path: Path, plugins, caplog: pytest.LogCaptureFixture) -> None:
    """Today a wrapper made a committed transaction raise AttributeError; now the wrapper sees
    the results, violations are reported, and a raise asked for is an InvariantViolation."""
    store = open_with(tmp_path / "a.db", "t_wrap_all", "t_checker", "t_recorder")
    with caplog.at_level(logging.WARNING, logger="corestore.store"):
        with store.transaction():
            store.database.execute_sql("create table t(x)")
    assert "t_checker.tables" in caplog.text
    assert events("t_wrap_all", "on_commit_invariant") == [(1,)]  # pluggy drops t_recorder's None
    assert store.stats()["violations"] == 1
    store.close()
    old = open_with(tmp_path / "b.db", "t_old_style", "t_checker")
    with old.transaction():
        old.database.execute_sql("create table t(x)")
    assert old.stats()["violations"] == 2  # the old-style wrapper added one
    old.close()
    raising = open_with(tmp_path / "c.db", "t_raise_on_violation", "t_checker")
    with pytest.raises(InvariantViolation) as info:
        with raising.transaction():
            raising.database.execute_sql("create table t(x)")
    assert info.value.committed is True
    assert "t" in raising.database.get_tables()  # durable
    raising.close()


@pytest.mark.parametrize("hook", sorted(ISOLATED_HOOKS))
def test_hook_isolated_wrapper_is_refused(tmp_path: Path, plugins, hook: str) -> None:
    """on_fatal, on_success, ... are isolated: a wrapper cannot wrap implementations that each run
    on their own, so it is refused at open (today a wrapper on_fatal was accepted and never ran)
    and by ``profiles --check``, naming the plugin and the hook."""
    with pytest.raises(PluginError, match=rf"plugin 't_wrap_{hook}': hook {hook} is isolated"):
        open_with(tmp_path / "a.db", f"t_wrap_{hook}")
    assert not os.path.exists(tmp_path / "a.db")  # refused before the file was opened
    out = console("--config", str(config(tmp_path, f"t_wrap_{hook}")), "profiles", "--check", site=plugins)
    assert out.returncode == 64, out.stdout + out.stderr
    assert f"plugin 't_wrap_{hook}': hook {hook} is isolated" in out.stderr


# -- ordering -----------------------------------------------------------------------------------
def test_tryfirst_and_trylast_order_the_implementations(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_last", "t_recorder", "t_first")
    EVENTS.clear()  # the open operation's own calls are in the same order; look at one write
    with store.transaction(name="w"):
        pass
    assert [e[0] for e in EVENTS if e[1] == "before_operation"] == ["t_first", "t_recorder", "t_last"]
    store.close()


# -- unknown hooks and arguments ---------------------------------------------------------------
def test_misspelled_hook_is_refused_at_open_and_by_the_check(tmp_path: Path, plugins) -> None:
    message = "plugin 't_typo' implements unknown hook 'on_sucess' (did you mean 'on_success'?)"
    with pytest.raises(PluginError) as info:
        open_with(tmp_path / "a.db", "t_typo")
    assert message in str(info.value)
    out = console("--config", str(config(tmp_path, "t_typo")), "profiles", "--check", site=plugins)
    assert out.returncode == 64 and message in out.stderr, out.stderr


def test_unknown_hook_argument_is_refused_at_open_and_by_the_check(tmp_path: Path, plugins) -> None:
    with pytest.raises(PluginError, match=r"plugin 't_bad_argument' does not fit the corestore hooks: .*on_success.*outcome"):
        open_with(tmp_path / "a.db", "t_bad_argument")
    out = console("--config", str(config(tmp_path, "t_bad_argument")), "profiles", "--check", site=plugins)
    assert out.returncode == 64 and "plugin 't_bad_argument' does not fit the corestore hooks" in out.stderr, out.stderr


def test_optionalhook_implementation_loads(tmp_path: Path, plugins) -> None:
    store = open_with(tmp_path / "a.db", "t_optional")
    with store.transaction():
        pass
    assert events("t_optional", "on_success") == [()] and events("t_optional", "on_future_hook") == []
    store.close()
    out = console("--config", str(config(tmp_path, "t_optional")), "profiles", "--check", site=plugins)
    assert out.returncode == 0, out.stderr
