"""``corestore profiles --check`` (the real console script) and ``corestore.open(NAME)`` agree
(issue 16, item 3): on every configuration below, both accept it, or both refuse it with the same
message. The check runs every check ``open()`` runs short of opening the database file."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import corestore
from corestore import ConfigError, PluginError

from helpers import child_env

# (id, TOML, None when both must accept it, else a fragment of the message both must give)
CASES: list[tuple[str, str, str | None]] = [
    ("default", '[databases.app]\npath = "app.db"\n', None),
    ("minimal", '[databases.app]\npath = "app.db"\nprofile = "minimal"\n', None),
    ("circuit-breaker-settings", '[databases.app]\npath = "app.db"\n[databases.app.settings.circuit_breaker]\n'
                                 'failure_threshold = 5\n', None),
    ("snapshot-relative-to-config", '[databases.app]\npath = "data/app.db"\n[databases.app.settings.health]\n'
                                    'snapshot_path = "run/health.json"\n', None),
    ("accounting", '[databases.app]\npath = "app.db"\nenable = ["accounting"]\n', None),
    ("disable", '[profiles.lean]\ndisable = ["circuit_breaker"]\nextends = "default"\n'
                '[databases.app]\npath = "app.db"\nprofile = "lean"\n', None),
    ("read-only-existing", '[databases.app]\npath = "existing.db"\nread_only = true\n', None),
    ("optional-hook", '[databases.app]\npath = "app.db"\nenable = ["t_optional"]\n', None),
    ("picky-ok", '[databases.app]\npath = "app.db"\nenable = ["t_picky"]\n[databases.app.settings.t_picky]\nlow = 3\n'
                 'high = 4\n', None),
    ("settings-for-unknown-plugin", '[databases.app]\npath = "app.db"\n[databases.app.settings.acounting]\nqueue_size = 1\n',
     "settings.acounting: no installed plugin is called 'acounting'"),
    ("unknown-plugin", '[databases.app]\npath = "app.db"\nenable = ["acounting"]\n', "unknown plugin 'acounting'"),
    ("unknown-plugin-in-profile", '[profiles.main]\nplugins = ["wal_gaurd"]\n[databases.app]\npath = "app.db"\n'
                                  'profile = "main"\n', "unknown plugin 'wal_gaurd'"),
    ("unknown-setting", '[databases.app]\npath = "app.db"\n[databases.app.settings.circuit_breaker]\nthreshold = 3\n',
     "unknown key 'threshold'"),
    ("bad-setting-type", '[databases.app]\npath = "app.db"\n[databases.app.settings.circuit_breaker]\n'
                         'failure_threshold = "3"\n', "failure_threshold = '3' must be an integer"),
    ("attrs-instance-of", '[databases.app]\npath = "app.db"\nenable = ["t_picky"]\n[databases.app.settings.t_picky]\n'
                          'low = "3"\n', "settings.t_picky: low = '3' must be an integer"),
    ("attrs-in", '[databases.app]\npath = "app.db"\nenable = ["t_picky"]\n[databases.app.settings.t_picky]\nmode = "c"\n',
     "settings.t_picky: mode = 'c' is not allowed; allowed: 'a', 'b'"),
    ("constructor-refuses", '[databases.app]\npath = "app.db"\nenable = ["t_picky"]\n[databases.app.settings.t_picky]\n'
                            'low = 5\n', "t_picky: low = 5 must be below high = 2"),
    ("missing-directory", '[databases.app]\npath = "nowhere/app.db"\n', "parent directory"),
    ("path-is-a-directory", '[databases.app]\npath = "data"\n', "is a directory"),
    ("snapshot-missing-directory", '[databases.app]\npath = "app.db"\n[databases.app.settings.health]\n'
                                   'snapshot_path = "nowhere/health.json"\n', "snapshot_path: directory"),
    ("read-only-missing-file", '[databases.app]\npath = "missing.db"\nread_only = true\n', "but the file does not exist"),
    ("accounting-read-only", '[databases.app]\npath = "existing.db"\nread_only = true\nenable = ["accounting"]\n',
     "is read-only; the accounting plugin writes"),
    ("misspelled-hook", '[databases.app]\npath = "app.db"\nenable = ["t_typo"]\n', "unknown hook 'on_sucess'"),
    ("unknown-hook-argument", '[databases.app]\npath = "app.db"\nenable = ["t_bad_argument"]\n',
     "does not fit the corestore hooks"),
    ("wrapper-on-isolated-hook", '[databases.app]\npath = "app.db"\nenable = ["t_wrap_on_fatal"]\n',
     "hook on_fatal is isolated"),
]

PLUGINS = {"t_typo": "plugin_wrappers:Typo", "t_bad_argument": "plugin_wrappers:BadArgument",
           "t_optional": "plugin_wrappers:Optional", "t_picky": "plugin_wrappers:Picky",
           "t_wrap_on_fatal": "plugin_wrappers:Wrap_on_fatal"}


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 15
    assert sum(1 for c in CASES if c[2] is None) >= 5 and sum(1 for c in CASES if c[2] is not None) >= 10


@pytest.mark.parametrize(("case", "toml", "refused"), CASES, ids=[c[0] for c in CASES])
def test_profiles_check_and_open_agree(tmp_path: Path, install_plugins, case: str, toml: str, refused: str | None) -> None:
    site = install_plugins(**PLUGINS)
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    with sqlite3.connect(tmp_path / "existing.db") as conn:  # a WAL database for the read-only cases
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE t (x)")
    cfg = tmp_path / "corestore.toml"
    cfg.write_text(toml)

    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    env.pop("CORESTORE_CONFIG", None)
    env.pop("CORESTORE_PLUGINS", None)
    script = Path(sys.executable).parent / "corestore"
    check = subprocess.run([str(script), "--config", str(cfg), "profiles", "--check"], capture_output=True, text=True,
                           timeout=120, env=env)

    try:
        store = corestore.open("app", config=cfg)
    except (ConfigError, PluginError) as err:
        opened: str | None = str(err)
    else:
        store.close()
        opened = None

    if refused is None:
        assert check.returncode == 0, check.stderr
        assert opened is None, opened
    else:
        assert opened is not None and refused in opened, opened
        assert check.returncode == 64, check.stdout
        assert f"corestore profiles: {opened}" in check.stderr  # the same message
