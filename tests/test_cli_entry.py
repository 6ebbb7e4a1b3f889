"""How the CLI starts and what it loads: ``python -m corestore``, ``python -m corestore.cli`` and
the ``corestore`` console script run the same ``main`` (no re-import under ``__main__``); the
core's commands are wired explicitly (importing a module registers nothing); commands outside the
core come from the ``corestore.cli`` entry-point group, installed here as a real ``.dist-info``."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import child_env

ENTRY_FORMS = {
    "python -m corestore": [sys.executable, "-m", "corestore"],
    "python -m corestore.cli": [sys.executable, "-m", "corestore.cli"],
    "console script": [str(Path(sys.executable).with_name("corestore"))],
}


def _run(cmd: list[str], *args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = env if env is not None else child_env()
    environment.pop("CORESTORE_CONFIG", None)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=environment, cwd=cwd)


def _make_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    return path


SNIPPET = Path(__file__).resolve().parent.parent / "site" / "snippets" / "cli_extension.py"


def _install_cli_entry_points(site: Path, modules: dict[str, str], **entry_points: str) -> None:
    """A distribution with ``[corestore.cli]`` entry points, as pip would leave it in site-packages."""
    info = site / "acme_cli_tools-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-cli-tools\nVersion: 1.0\n")
    lines = ["[corestore.cli]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


def test_the_three_entry_forms_behave_the_same(tmp_path: Path) -> None:
    if not Path(ENTRY_FORMS["console script"][0]).exists():
        pytest.skip("the corestore console script is not installed next to this interpreter")
    db = _make_db(tmp_path / "app.db")
    results = {}
    for form, cmd in ENTRY_FORMS.items():
        helped = _run(cmd, "--help", cwd=tmp_path)
        doctor = _run(cmd, "--json", "doctor", str(db), cwd=tmp_path)
        health = _run(cmd, "health", str(db), "--json", cwd=tmp_path)
        usage = _run(cmd, "doctor", cwd=tmp_path)
        for proc in (helped, doctor, health, usage):
            assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr, (form, proc.stderr)
        diag = json.loads(doctor.stdout)
        report = json.loads(health.stdout)
        results[form] = (
            helped.returncode, helped.stdout,
            doctor.returncode, [(f["check"], f["severity"]) for f in diag["findings"]], diag["status"],
            health.returncode, report["status"], sorted(report["components"]),
            usage.returncode,
        )
    first = results["python -m corestore.cli"]
    assert first[0] == 0 and "doctor" in first[1] and "health" in first[1]
    assert first[2] == 0 and first[4] == "up" and first[5] == 0 and first[8] == 64
    assert results["python -m corestore"] == first
    assert results["console script"] == first


def test_importing_the_doctor_registers_nothing_and_loads_no_plugin() -> None:
    code = textwrap.dedent("""
        import sys
        import corestore.doctor, corestore.sidecar_formats, corestore.osprobe, corestore.findings
        assert "corestore.cli" not in sys.modules, "the doctor must not import the CLI"
        import corestore.cli
        names = list(corestore.cli.COMMANDS)
        assert names == ["plugins", "profiles", "demo", "doctor", "health", "backup"], names
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("corestore_plugins", "corestore_contrib"))
        assert not loaded, loaded
        print("ok")
    """)
    proc = _run([sys.executable, "-c", code])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_cli_entry_point_group_adds_commands(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_cli_entry_points(site, {"acme_cli": SNIPPET.read_text(), "acme_more": """
        from corestore.cli import add_command, emit

        def _hello_args(p):
            p.add_argument("who")
            p.add_argument("--code", type=int, default=0)

        def _hello(args):
            emit(args, {"hello": args.who, "config": args.config}, f"hello {args.who}")
            return args.code

        def register(subparsers):
            add_command(subparsers, "acme-more", "greet someone else (an acme extension)", _hello_args, _hello)

        def register_doctor(subparsers):
            add_command(subparsers, "doctor", "a fake doctor", lambda p: None, lambda args: 99)

        def broken(subparsers):
            raise RuntimeError("acme is misconfigured")

        not_callable = 42
    """}, **{"acme-hello": "acme_cli:register", "acme-more": "acme_more:register", "doctor": "acme_more:register_doctor",
             "acme-broken": "acme_more:broken", "acme-missing": "acme_more:does_not_exist",
             "acme-value": "acme_more:not_callable"})
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    cli = [sys.executable, "-m", "corestore.cli"]

    helped = _run(cli, "--help", env=env)
    assert helped.returncode == 0, helped.stderr
    assert "acme-hello" in helped.stdout and "greet someone" in helped.stdout and "acme-more" in helped.stdout
    for name in ("acme-broken", "acme-missing", "acme-value"):  # left out, named in a warning, the rest works
        assert name in helped.stderr and name not in helped.stdout, helped.stderr
    assert "acme is misconfigured" in helped.stderr and "not callable" in helped.stderr
    assert "'doctor'" in helped.stderr and "a command of that name exists" in helped.stderr

    # site/snippets/cli_extension.py, the example of site/cli.md
    out = _run(cli, "--config", "/nowhere.toml", "acme-hello", "world", "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout) == {"hello": "world", "config": "/nowhere.toml"}, out.stderr
    assert _run(cli, "acme-hello", "you", env=env).stdout.strip() == "hello you"
    assert _run(cli, "acme-hello", env=env).returncode == 64  # usage errors exit 64 in extensions too
    out = _run(cli, "acme-more", "world", "--json", "--config", "/x.toml", "--code", "1", env=env)
    assert out.returncode == 1 and json.loads(out.stdout) == {"hello": "world", "config": "/x.toml"}, out.stderr

    db = _make_db(tmp_path / "app.db")  # the core's doctor is not replaced by an extension of the same name
    doctor = _run(cli, "doctor", str(db), "--json", env=env)
    assert doctor.returncode == 0 and json.loads(doctor.stdout)["command"] == "doctor", doctor.stderr
