"""Plugin discovery through entry points: third-party plugins found like first-party ones,
imported only when enabled, failures confined to the profiles that need them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import corestore
from corestore import PluginError, Profile
from corestore.registry import discover, load_plugin_class

import plugin_fixtures
from helpers import child_env, run_python


def test_first_party_plugins_are_entry_points() -> None:
    eps = discover()
    for name in ("wal_guard", "wal_invariants", "circuit_breaker", "accounting", "health", "quarantine"):
        assert eps[name].group == "corestore"
        assert eps[name].value.startswith("corestore_plugins.")


def test_third_party_plugin_listed_imported_only_when_enabled_and_run(tmp_path: Path) -> None:
    """A dist-info on sys.path, as pip leaves it: listed by the CLI, imported only for the
    profile that enables it, and its hooks run."""
    site = tmp_path / "site"
    pkg = site / "acme_policy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import sys\n"
        "from corestore import hookimpl\n"
        "IMPORTED = True\n"
        "class Acme:\n"
        "    name = 'acme'\n"
        "    def __init__(self):\n"
        "        self.opened = 0\n"
        "    @hookimpl\n"
        "    def on_open(self, store, connection):\n"
        "        self.opened += 1\n"
    )
    info = site / "acme_policy-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-policy\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[corestore]\nacme = acme_policy:Acme\n")
    cfg = tmp_path / "corestore.toml"
    cfg.write_text('[profiles.withacme]\nextends = "minimal"\nenable = ["acme"]\n')
    env = child_env(PYTHONPATH=str(site))
    env["PYTHONPATH"] = env["PYTHONPATH"]  # site is appended after the project roots

    listed = run_python(
        "import sys, json; from corestore.cli import main; sys.exit(main(['--json', '--config', sys.argv[1], 'plugins']))",
        str(cfg), env=env,
    )
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["plugins"]}
    assert rows["acme"]["distribution"] == "acme-policy 2.0"
    assert rows["acme"]["profiles"] == ["withacme"]

    code = """
        import sys, corestore
        db, cfg = sys.argv[1], sys.argv[2]
        s = corestore.open(db, profile="minimal", config=cfg)
        assert "acme_policy" not in sys.modules, "imported although no profile enabled it"
        s.close()
        s = corestore.open(db, profile="withacme", config=cfg)
        assert "acme_policy" in sys.modules
        s.database.execute_sql("select 1")
        print(s.plugin("acme").opened)
        s.close()
    """
    result = run_python(code, str(tmp_path / "a.db"), str(cfg), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_plugin_that_fails_to_import_only_breaks_profiles_that_need_it(tmp_path: Path, install_plugins) -> None:
    install_plugins(t_broken="plugin_broken:Nothing")
    ok = corestore.open(str(tmp_path / "a.db"), profile="minimal")
    ok.close()
    with pytest.raises(PluginError,
                       match=r"plugin 't_broken' \(plugin_broken:Nothing\) failed to import: ImportError: plugin_broken needs"):
        corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("t_broken",)))
    assert not (tmp_path / "b.db").exists()


def test_plugin_name_must_match_entry_point(install_plugins) -> None:
    install_plugins(t_other="plugin_fixtures:Recorder")
    with pytest.raises(PluginError, match="declares name 't_recorder', but its entry point is 't_other'"):
        load_plugin_class("t_other")


def test_wrapper_on_isolated_hook_is_refused(tmp_path: Path, install_plugins) -> None:
    install_plugins(t_wrapper="plugin_fixtures:Wrapper")
    with pytest.raises(PluginError, match="hook on_close is isolated"):
        corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("t_wrapper",)))


def test_env_allow_list_enables_plugins(tmp_path: Path, install_plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder")
    monkeypatch.setenv("CORESTORE_PLUGINS", "t_recorder")
    store = corestore.open(str(tmp_path / "a.db"), profile="minimal")
    assert "t_recorder" in store.plugins
    store.close()


def test_store_plugin_by_name_and_class(tmp_path: Path, install_plugins) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder", t_toggle="plugin_fixtures:Toggle")
    store = corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("t_recorder",)))
    rec = store.plugin("t_recorder")
    assert store.plugin(plugin_fixtures.Recorder) is rec
    assert rec.settings.label == "rec"
    with pytest.raises(PluginError, match=r"plugin 't_toggle' is not enabled in profile 'custom'; enabled: t_recorder"):
        store.plugin("t_toggle")
    with pytest.raises(PluginError, match="'t_toggle' is not enabled"):
        store.plugin(plugin_fixtures.Toggle)
    store.close()


def test_two_stores_run_different_policies(tmp_path: Path, install_plugins) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder", t_gate="plugin_fixtures:Gate")
    a = corestore.open(Profile(path=str(tmp_path / "a.db"), plugins=("t_gate",)))
    b = corestore.open(Profile(path=str(tmp_path / "b.db"), plugins=("t_recorder",)))
    with pytest.raises(PermissionError):
        with a.transaction(name="forbidden"):
            pass
    with b.transaction(name="forbidden"):
        pass
    assert a.hooks.implementers("before_operation") == ["t_gate"]
    assert b.hooks.implementers("before_operation") == ["t_recorder"]
    a.close()
    b.close()


def test_clear_cache_reads_a_reinstalled_entry_point_again(install_plugins) -> None:
    """Plugin classes are cached by name; ``registry.clear_cache(name)`` is the public way to make
    the next lookup read the installed entry points again (a test that reinstalls a name)."""
    from corestore import registry

    install_plugins(t_recorder="plugin_fixtures:Recorder")
    assert load_plugin_class("t_recorder") is plugin_fixtures.Recorder
    install_plugins("corestore-test-plugins-2", t_recorder="plugin_fixtures:Toggle")
    # refresh_entry_points() (what install_plugins calls) forgot the class: the new target is read
    with pytest.raises(PluginError, match="declares name 't_toggle', but its entry point is 't_recorder'"):
        load_plugin_class("t_recorder")
    registry.clear_cache()  # all names
    with pytest.raises(PluginError, match="declares name 't_toggle'"):
        load_plugin_class("t_recorder")


def test_clear_cache_keeps_a_cached_class_until_called(install_plugins) -> None:
    from corestore import registry

    install_plugins(t_recorder="plugin_fixtures:Recorder")
    assert load_plugin_class("t_recorder") is plugin_fixtures.Recorder
    install_plugins("corestore-test-plugins-2", t_gate="plugin_fixtures:Gate")  # t_recorder not reinstalled
    assert load_plugin_class("t_recorder") is plugin_fixtures.Recorder  # still the cached class
    registry.clear_cache("t_recorder")
    assert load_plugin_class("t_recorder") is plugin_fixtures.Recorder  # read again, same target
