"""Profiles and configuration: immutability, inheritance, bindings, and bad input that never
half-works (each error names the file, the table and the key)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import attrs
import pytest

import corestore
from corestore import ConfigError, PluginError, Profile, profiles
from corestore.profiles import load_config, resolve_profile


def write_config(tmp_path: Path, text: str, name: str = "corestore.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_profile_is_frozen_hashable_and_evolvable(tmp_path: Path) -> None:
    p = Profile(path=str(tmp_path / "a.db"), pragmas={"busy_timeout": 100}, plugins=["health"],
                settings={"health": {"probe_interval_s": 1, "tags": ["a", "b"]}})
    assert hash(p) == hash(Profile(path=str(tmp_path / "a.db"), pragmas={"busy_timeout": 100}, plugins=("health",),
                                   settings={"health": {"tags": ["a", "b"], "probe_interval_s": 1}}))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.path = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.pragmas["busy_timeout"] = 1  # type: ignore[index]
    assert p.settings["health"]["tags"] == ("a", "b")  # lists become tuples: deeply immutable
    q = attrs.evolve(p, pragmas={"busy_timeout": 200})
    assert q.pragmas["busy_timeout"] == 200 and p.pragmas["busy_timeout"] == 100
    assert q != p and len({p, q, attrs.evolve(q, pragmas={"busy_timeout": 100})}) == 2


def test_builtin_profiles() -> None:
    default = resolve_profile("default", config=None, path="x.db")
    # on a stdlib SQLite with the WAL-reset bug the default carries the mitigation (issue 20)
    mitigation = profiles.WAL_RESET_MITIGATION if profiles._MITIGATE_BY_DEFAULT else ()
    assert default.plugins == ("wal_guard", "wal_invariants", "circuit_breaker", "health") + mitigation
    assert default.pragmas["journal_mode"] == "wal" and default.pragmas["synchronous"] == "full"
    assert default.pragmas["busy_timeout"] == 5000
    assert default.pragmas["wal_autocheckpoint"] == (0 if mitigation else 1000)
    assert resolve_profile("minimal", config=None, path="x.db").plugins == ()


def test_extends_enable_disable_and_merge(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
        [profiles.default]
        [profiles.default.pragmas]
        busy_timeout = 7000

        [profiles.ingest]
        extends = "default"
        enable = ["accounting"]
        disable = ["health"]
        [profiles.ingest.settings.accounting]
        queue_size = 10
        [profiles.ingest.retry]
        budget_s = 2.5

        [profiles.bulk]
        extends = "ingest"
        [profiles.bulk.settings.accounting]
        batch_size = 5

        [databases.events]
        path = "data/events.db"
        profile = "bulk"
        read_only = false
        [databases.events.settings.accounting]
        queue_size = 99
    """)
    config = load_config(cfg)
    ingest = resolve_profile("ingest", config=config, path="x.db")
    mitigation = profiles.WAL_RESET_MITIGATION if profiles._MITIGATE_BY_DEFAULT else ()
    assert ingest.plugins == ("wal_guard", "wal_invariants", "circuit_breaker") + mitigation + ("accounting",)
    assert ingest.pragmas["busy_timeout"] == 7000 and ingest.pragmas["journal_mode"] == "wal"
    assert ingest.retry.budget_s == 2.5
    binding = config.databases["events"]
    assert binding.path == str(tmp_path / "data" / "events.db")  # relative to the config file
    events = resolve_profile(binding.profile, config=config, path=binding.path, binding=binding)
    assert dict(events.settings["accounting"]) == {"queue_size": 99, "batch_size": 5}


def test_profile_without_extends_starts_empty(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, """
        [profiles.bare]
        plugins = ["health"]
    """))
    bare = resolve_profile("bare", config=cfg, path="x.db")
    assert bare.plugins == ("health",) and dict(bare.pragmas) == {}


def test_config_only_from_argument_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corestore.toml").write_text('[databases.orders]\npath = "orders.db"\nprofile = "minimal"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORESTORE_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="not bound"):
        corestore.open("orders")  # the working directory's corestore.toml is never read
    assert not (tmp_path / "orders").exists()
    monkeypatch.setenv("CORESTORE_CONFIG", str(tmp_path / "corestore.toml"))
    store = corestore.open("orders")
    assert store.path == os.path.realpath(tmp_path / "orders.db") and store.profile.name == "minimal"
    store.close()


def test_same_path_and_profile_share_a_store(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    a = corestore.open(path, profile="minimal")
    b = corestore.open(str(tmp_path / "." / "a.db"), profile="minimal")
    assert a is b
    a.close()
    assert not b.closed  # one reference left
    b.close()
    assert b.closed
    b.close()  # idempotent


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[profiles.x]\nplugins = ["health"]\ncolour = "red"\n', r"\[profiles\.x\]: unknown key 'colour'; allowed: extends"),
        ('[profiles.x]\nextends = "nope"\n',
         r"\[profiles\.x\] key 'extends': unknown profile 'nope'; known: default, minimal, postgresql, x"),
        ('[profiles.a]\nextends = "b"\n[profiles.b]\nextends = "a"\n', r"cycle a -> b -> a"),
        ('[profiles.x]\n[profiles.x.pragmas]\nbusy_timout = 5\n',
         r"\[profiles\.x\] key 'pragmas\.busy_timout': unknown pragma 'busy_timout'"),
        ('[profiles.x]\n[profiles.x.pragmas]\nsynchronous = "sometimes"\n',
         r"pragma synchronous = 'sometimes' is not allowed; allowed: off, normal, full"),
        ('[profiles.x]\n[profiles.x.pragmas]\nbusy_timeout = "soon"\n', r"busy_timeout = 'soon' must be an integer"),
        ('[profiles.x]\nplugins = "health"\n', r"key 'plugins' must be a list of plugin names"),
        ('[profiles.x]\nread_only = "yes"\n', r"key 'read_only' must be true or false"),
        ('[profiles.x]\n[profiles.x.retry]\nbudget_s = -1\n', r"retry.budget_s = -1 must be >= 0"),
        ('[profiles.x]\n[profiles.x.retry]\nbudgt_s = 1\n', r"unknown retry key 'budgt_s'"),
        ('[profile.x]\n', r"unknown top-level table \[profile\]"),
        ('[databases.d]\nprofile = "minimal"\n', r"\[databases\.d\]: key 'path' is required"),
        ('[databases.d]\npath = "d.db"\nprofile = "fast"\n', r"\[databases\.d\]: key 'profile' names unknown profile 'fast'"),
        ('[profiles.x\n', r"not valid TOML"),
    ],
)
def test_bad_config_names_file_table_and_key(tmp_path: Path, text: str, match: str) -> None:
    cfg = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(cfg)
    assert cfg in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_unknown_plugin_is_plugin_error_naming_installed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[profiles.x]\nplugins = ["wal_gaurd"]\n')
    with pytest.raises(PluginError, match=r"\[profiles\.x\]: unknown plugin 'wal_gaurd'; installed plugins: .*wal_guard"):
        corestore.open(str(tmp_path / "a.db"), profile="x", config=cfg)
    assert not (tmp_path / "a.db").exists()  # nothing half-applied: the file was not created


def test_unknown_and_mistyped_settings_keys(tmp_path: Path, install_plugins) -> None:
    install_plugins(t_recorder="plugin_fixtures:Recorder")
    cfg = write_config(tmp_path, """
        [profiles.x]
        plugins = ["t_recorder"]
        [profiles.x.settings.t_recorder]
        lable = "oops"
        [profiles.y]
        plugins = ["t_recorder"]
        [profiles.y.settings.t_recorder]
        label = 5
        [profiles.z]
        plugins = []
        [profiles.z.settings.no_such_plugin]
        a = 1
    """)
    with pytest.raises(ConfigError,
                       match=r"\[profiles\.x\] settings\.t_recorder: unknown key 'lable'; allowed: label, fail_open"):
        corestore.open(str(tmp_path / "a.db"), profile="x", config=cfg)
    with pytest.raises(ConfigError, match=r"\[profiles\.y\] settings\.t_recorder: .*label"):
        corestore.open(str(tmp_path / "a.db"), profile="y", config=cfg)
    with pytest.raises(ConfigError, match=r"settings\.no_such_plugin: no installed plugin is called 'no_such_plugin'"):
        corestore.open(str(tmp_path / "a.db"), profile="z", config=cfg)
    assert not (tmp_path / "a.db").exists()


def test_unknown_profile_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'fast'; known: default, minimal"):
        corestore.open(str(tmp_path / "a.db"), profile="fast")


def test_paths_missing_parent_directory_and_bare_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parent directory .*nope does not exist"):
        corestore.open(str(tmp_path / "nope" / "a.db"), profile="minimal")
    assert not (tmp_path / "nope").exists()
    with pytest.raises(ConfigError, match="is a directory"):
        corestore.open(str(tmp_path), profile="minimal")
    with pytest.raises(ConfigError, match=r"'orders' is not bound in \[databases\]"):
        corestore.open("orders", profile="minimal")
    assert not os.path.exists("orders")


def test_setup_mismatch_is_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    store = corestore.open(path, profile="minimal", setup=lambda s: None)
    with pytest.raises(ConfigError, match="different setup"):
        corestore.open(path, profile="minimal", setup=lambda s: None)
    store.close()
