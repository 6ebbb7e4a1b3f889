"""The documentation site (``site/``, ``mkdocs.yml``) is part of the product: these tests keep it
true to the code (as datasette's ``tests/test_docs.py`` does for its hooks).

* Every hookspec has its section in the hook reference and appears on the lifecycle page.
* Every shipped plugin (an entry point of ``pyproject.toml``) has a page in the nav whose
  ``<!-- settings: NAME -->`` marker renders every field of its ``Settings`` class (the tables
  are generated at build time by ``site/_hooks.py``, so they cannot drift).
* Every ``--8<--`` include points to an existing file, every ``::: dotted.path`` to a real object,
  and no page carries an inline Python block: code is included from files that run.
* Every file in ``site/snippets/`` runs somewhere. ``core_*`` and ``policy_*`` snippets are run
  here, each in a fresh interpreter in an empty directory (a companion ``<stem>.toml`` is copied
  there as ``corestore.toml``); any other snippet (``<plugin>_*``, ``failpoint_*`` ...) belongs
  to the engineer of that page, and its file name (or a quoted glob matching it, as in
  ``glob("failpoint_*.py")``) must appear in one of the other test modules.
* Every TOML block written inline on a page parses, and one that configures corestore loads,
  resolves and validates each plugin's settings.
* The third-party plugin of the "Write your own policy" guide (``site/examples/acme_policy``) is
  installed through the entry point its ``pyproject.toml`` declares, run through a real store,
  and its own test suite (``tmp_store`` / ``failpoint`` fixtures) passes.
* ``mkdocs build --strict`` passes, when mkdocs is installed (the ``docs`` extra; CI also runs
  the build on its own).
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import corestore
from corestore import ErrorKind, HealthStatus, hookspecs, registry
from corestore.profiles import BUILTIN_PROFILES, KNOWN_PRAGMAS, RetryPolicy, load_config, resolve_profile

from helpers import ROOT, child_env

SITE = ROOT / "site"
SNIPPETS = SITE / "snippets"
EXAMPLE = SITE / "examples" / "acme_policy"
OWN_SNIPPET_PREFIXES = ("core_", "policy_")


def load_site_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corestore_site_hooks", SITE / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


site_hooks = load_site_hooks()


def shipped_plugins() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return dict(tomllib.load(fh)["project"]["entry-points"]["corestore"])


def pages() -> list[Path]:
    """Every Markdown page of the site (the example package is code, not pages)."""
    return sorted(p for p in SITE.rglob("*.md") if EXAMPLE not in p.parents)


def nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    nav = nav[: re.search(r"\n\S", nav[1:]).start() + 1]  # up to the next top-level key
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.MULTILINE)


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


# -- hooks ---------------------------------------------------------------------------------------
def test_hook_names_match_the_hookspecs() -> None:
    specs = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "corestore_spec")}
    assert specs == set(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_hook_is_documented(hook: str) -> None:
    reference = (SITE / "reference" / "hooks.md").read_text()
    assert re.search(rf"^::: corestore\.hookspecs\.{hook}\s*$", reference, re.MULTILINE), (
        f"site/reference/hooks.md has no `::: corestore.hookspecs.{hook}` section")
    assert "<!-- hooks: summary -->" in reference
    assert f"`{hook}" in (SITE / "concepts" / "hooks.md").read_text(), (
        f"the lifecycle page site/concepts/hooks.md does not mention {hook}")
    table = site_hooks.render_markers("<!-- hooks: summary -->")
    assert f"[`{hook}(" in table


# -- plugin pages and their settings ----------------------------------------------------------------
@pytest.mark.parametrize("plugin", sorted(shipped_plugins()))
def test_every_shipped_plugin_has_a_page_with_its_settings(plugin: str) -> None:
    page = SITE / "plugins" / f"{plugin}.md"
    assert page.is_file(), f"shipped plugin {plugin!r} has no page {page.relative_to(ROOT)}"
    assert f"plugins/{plugin}.md" in nav_pages(), f"plugins/{plugin}.md is not in the nav of mkdocs.yml"
    text = page.read_text()
    cls = registry.load_plugin_class(plugin)
    rows = registry.settings_help(cls)
    if not rows:
        return
    marker = f"<!-- settings: {plugin} -->"
    assert re.search(rf"^{re.escape(marker)}\s*$", text, re.MULTILINE), (
        f"{page.relative_to(ROOT)} must carry the generated settings table: a line `{marker}`")
    rendered = site_hooks.render_markers(text, where=str(page))
    for row in rows:
        assert row["help"], f"{plugin}.Settings.{row['name']} has no metadata help"
        line = next((ln for ln in rendered.splitlines() if ln.startswith(f"| `{row['name']}` |")), None)
        assert line is not None, f"setting {row['name']!r} of {plugin} is missing from its page"
        assert row["help"].replace("|", r"\|").replace("<", "&lt;").replace(">", "&gt;") in line


def settings_defaults(plugin: str) -> dict[str, object]:
    import attrs

    out: dict[str, object] = {}
    for field in attrs.fields(registry.load_plugin_class(plugin).Settings):
        default = field.default
        out[field.name] = default.factory() if isinstance(default, attrs.Factory) else default
    return out


@pytest.mark.parametrize("plugin", sorted(shipped_plugins()))
def test_settings_defaults_are_shown_in_toml(plugin: str) -> None:
    """Users write TOML: ``true``, ``"reject"``, ``["CORRUPT"]``; a default of None is "not set".
    Each default shown must parse as TOML back to the value the Settings class has, and the
    table carries no Python spelling (``True``, ``'reject'``, ``None``, ``str \\| None``)."""
    table = site_hooks.settings_table(plugin)
    for name, default in settings_defaults(plugin).items():
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, f"{plugin}.{name}: the row does not split into 4 cells: {line}"
        shown = cells[2]
        if default is None:
            assert shown == site_hooks.NOT_SET, f"{plugin}.{name}: a None default must read {site_hooks.NOT_SET!r}: {line}"
            continue
        assert shown.startswith("`") and shown.endswith("`"), line
        parsed = tomllib.loads(f"v = {shown[1:-1]}")["v"]
        expected = list(default) if isinstance(default, tuple) else default
        assert parsed == expected and type(parsed) is type(expected), (
            f"{plugin}.{name}: default shown as {shown}, which TOML reads as {parsed!r}, not {default!r}")
    assert not re.search(r"`(True|False|None)`|`'[^`]*'`", table), f"Python reprs in the {plugin} settings table"
    assert "\\|" not in "".join(re.findall(r"`[^`]*`", table)), "an escaped pipe inside a code span shows a backslash"


def test_table_cells_escape_html_and_pipes_only_outside_code() -> None:
    cell = site_hooks._cell("default <db>.x | `a | b` & `<c>`")
    assert cell == r"default &lt;db&gt;.x \| `a | b` &amp; `<c>`"
    assert site_hooks.toml_value(("A", "B")) == '["A", "B"]' and site_hooks.toml_value(True) == "true"
    assert site_hooks.toml_value({"a": 1, "b c": "x"}) == '{ a = 1, "b c" = "x" }'
    assert site_hooks.toml_type("str | None") == "string (optional)"
    assert site_hooks.toml_type("tuple[str, ...]") == "array of strings"


def test_settings_marker_generates_every_field_and_fails_loudly() -> None:
    table = site_hooks.settings_table("wal_guard")
    for row in registry.settings_help(registry.load_plugin_class("wal_guard")):
        assert f"| `{row['name']}` | {site_hooks.toml_type(row['type'])} |" in table
    with pytest.raises(ValueError, match="unknown plugin 'no_such_plugin'"):
        site_hooks.render_markers("<!-- settings: no_such_plugin -->")
    with pytest.raises(ValueError, match="unknown errors marker argument 'nope'"):
        site_hooks.render_markers("<!-- errors: nope -->")
    with pytest.raises(ValueError, match="unknown marker <!-- setting: wal_guard -->"):
        site_hooks.render_markers("<!-- setting: wal_guard -->")  # a typo fails, it does not vanish
    assert site_hooks.render_markers("<!-- just a comment -->") == "<!-- just a comment -->"


def test_generated_reference_tables_cover_the_code() -> None:
    taxonomy = site_hooks.render_markers("<!-- errors: taxonomy -->")
    for kind in ErrorKind:
        assert f"| `{kind.name}` |" in taxonomy
    builtin = site_hooks.render_markers("<!-- profiles: builtin -->")
    for name, raw in BUILTIN_PROFILES.items():
        assert f"| `{name}` |" in builtin
        for plugin in raw["plugins"]:
            assert f"`{plugin}`" in builtin
    retry = site_hooks.render_markers("<!-- profiles: retry -->")
    for field in RetryPolicy.__attrs_attrs__:
        assert f"| `{field.name}` |" in retry
    pragmas = site_hooks.render_markers("<!-- profiles: pragmas -->")
    for name in KNOWN_PRAGMAS:
        assert f"| `{name}` |" in pragmas


def test_every_marker_on_the_site_renders() -> None:
    for page in pages():
        site_hooks.render_markers(page.read_text(), where=str(page))


# -- nav -----------------------------------------------------------------------------------------------
def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    nav = nav_pages()
    missing = [p for p in nav if not (SITE / p).is_file()]
    assert not missing, f"pages in the nav of mkdocs.yml that are not written: {missing}"
    expected = {"cli.md", "testing-faults.md"} | {f"plugins/{name}.md" for name in shipped_plugins()}
    assert expected <= set(nav), f"pages the site must have, missing from the nav: {sorted(expected - set(nav))}"
    orphans = [str(p.relative_to(SITE)) for p in pages() if str(p.relative_to(SITE)) not in nav]
    assert not orphans, f"pages not in the nav of mkdocs.yml: {orphans}"


# -- includes, API directives, inline code ----------------------------------------------------------
INCLUDE = re.compile(r"""^\s*-{1,}8<-{1,}\s+["']([^"']+)["']""", re.MULTILINE)
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def all_includes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in pages():
        for target in INCLUDE.findall(page.read_text()):
            found.setdefault(target.split(":")[0], []).append(str(page.relative_to(SITE)))
    return found


def test_every_include_points_to_an_existing_file() -> None:
    includes = all_includes()
    assert includes, "no --8<-- includes found at all"
    missing = {t: p for t, p in includes.items() if not (SITE / t).is_file()}
    assert not missing, f"--8<-- includes of files that do not exist (under site/): {missing}"


def test_every_api_directive_names_a_real_object() -> None:
    for page in pages():
        for dotted in DIRECTIVE.findall(page.read_text()):
            module_name, _, attr = dotted.rpartition(".")
            try:
                module = importlib.import_module(dotted)
            except ImportError:
                module = importlib.import_module(module_name)
                assert hasattr(module, attr), f"{page.relative_to(SITE)}: `::: {dotted}` names nothing"


def test_no_reference_to_documents_outside_the_repository() -> None:
    """Code, tests and docs cite the project's own pages (site/...), never the design notes or
    incident files a user of the package does not have."""
    pattern = re.compile("DESIGN " + "\u00a7|" + "incidents" + "/")
    found = []
    for top in ("corestore", "plugins", "contrib", "site", "tests", "benchmarks"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix not in (".py", ".md", ".toml", ".c", ".yml") or "build" in path.parts:
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


def test_no_mermaid_on_the_site() -> None:
    """Diagrams are tables or text: mermaid renders only with a script fetched from a CDN, so the
    site would show raw diagram source to a reader offline (or behind a proxy)."""
    for page in pages():
        assert not fenced_blocks(page.read_text(), "mermaid"), f"{page.relative_to(ROOT)}: a ```mermaid block"
    config = [line.split("#")[0] for line in (ROOT / "mkdocs.yml").read_text().splitlines()]
    assert not [line for line in config if "mermaid" in line], "mkdocs.yml still configures a mermaid fence"


def test_no_inline_python_on_the_site() -> None:
    offenders = []
    for page in pages():
        for block in fenced_blocks(page.read_text(), "(?:python|py|pycon)"):
            if any(ln.strip() and not INCLUDE.match(ln) for ln in block.splitlines()):
                offenders.append(str(page.relative_to(SITE)))
    assert not offenders, (
        f"inline Python blocks in {sorted(set(offenders))}: put the code in site/snippets/<prefix>_*.py, run it "
        "from a test, and include it with --8<-- \"snippets/<file>\"")


def test_inline_toml_on_the_site_is_valid_config(tmp_path: Path) -> None:
    checked = 0
    for page in pages():
        for n, block in enumerate(fenced_blocks(page.read_text(), "toml")):
            if INCLUDE.search(block):
                continue  # an included file: checked where it is run
            where = f"{page.relative_to(SITE)} toml block {n + 1}"
            try:
                raw = tomllib.loads(block)
            except tomllib.TOMLDecodeError as err:
                pytest.fail(f"{where}: not valid TOML: {err}")
            if not ({"profiles", "databases"} & set(raw)):
                continue
            config_file = tmp_path / f"block{checked}.toml"
            config_file.write_text(block)
            validate_config(config_file, where)
            checked += 1


def validate_config(path: Path, where: str) -> None:
    """Load a config, resolve every profile and binding, and build every enabled plugin's Settings."""
    try:
        cfg = load_config(path)
        assert cfg is not None
        profiles = [resolve_profile(n, config=cfg, path=str(path.with_suffix(".db"))) for n in cfg.profile_names()]
        profiles += [resolve_profile(b.profile, config=cfg, path=b.path, binding=b) for b in cfg.databases.values()]
        for profile in profiles:
            for plugin in profile.plugins:
                cls = registry.load_plugin_class(plugin, where=profile.origin)
                registry.build_settings(cls, profile.settings_for(plugin), where=profile.origin)
    except corestore.StoreError as err:
        pytest.fail(f"{where}: {err}")


# -- snippets ----------------------------------------------------------------------------------------
def own_snippets() -> list[str]:
    return sorted(p.name for p in SNIPPETS.glob("*.py") if p.name.startswith(OWN_SNIPPET_PREFIXES))


def test_every_snippet_is_run_by_a_test() -> None:
    others = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name != "test_docs.py")
    globs = set(re.findall(r"""["']([\w.-]+\*[\w.*-]*)["']""", others))  # e.g. glob("failpoint_*.py")
    unexecuted = []
    for snippet in sorted(p for p in SNIPPETS.iterdir() if p.is_file()):
        if snippet.name.startswith(OWN_SNIPPET_PREFIXES):
            if snippet.suffix == ".toml":
                assert snippet.with_suffix(".py").is_file(), f"{snippet.name} has no companion {snippet.stem}.py to run it"
            continue
        if snippet.name not in others and not any(fnmatch.fnmatchcase(snippet.name, g) for g in globs):
            unexecuted.append(snippet.name)
    assert not unexecuted, (
        f"snippets no test runs: {unexecuted}. core_*/policy_* run here; any other must be named (or matched "
        "by a quoted glob such as \"failpoint_*.py\") in the test module of its page's owner")


def test_every_own_snippet_is_on_a_page() -> None:
    included = all_includes()
    for name in own_snippets():
        assert f"snippets/{name}" in included, f"site/snippets/{name} is not included by any page"


def example_site(tmp_path: Path) -> Path:
    """A directory with the example package's .dist-info (entry points from its pyproject)."""
    with open(EXAMPLE / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    site = tmp_path / "example-site"
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = project["entry-points"]["corestore"]
    (info / "entry_points.txt").write_text("[corestore]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return site


def snippet_env(tmp_path: Path) -> dict[str, str]:
    env = child_env(PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(example_site(tmp_path)), str(EXAMPLE), env["PYTHONPATH"]])
    env.pop("CORESTORE_CONFIG", None)
    env.pop("CORESTORE_PLUGINS", None)
    return env


@pytest.mark.parametrize("snippet", own_snippets())
def test_snippet_runs(snippet: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    companion = (SNIPPETS / snippet).with_suffix(".toml")
    if companion.is_file():
        shutil.copy(companion, workdir / "corestore.toml")
    proc = subprocess.run([sys.executable, str(SNIPPETS / snippet)], cwd=workdir, env=snippet_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"site/snippets/{snippet} failed:\n{proc.stdout}\n{proc.stderr}"


def test_own_toml_snippets_are_valid_config(tmp_path: Path, install_plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugins("acme-policy", acme_fault_budget="acme_policy:FaultBudget")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        for toml in sorted(SNIPPETS.glob("*.toml")):
            if toml.name.startswith(OWN_SNIPPET_PREFIXES):
                validate_config(toml, f"site/snippets/{toml.name}")
    finally:
        registry.clear_cache("acme_fault_budget")
        sys.modules.pop("acme_policy", None)


# -- the third-party plugin of the guide -------------------------------------------------------------
def test_example_plugin_through_its_entry_point_and_a_real_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed from the entry point its pyproject declares, enabled in a profile, fed real
    disk faults through the failpoint VFS (a store on apsw), reported DEGRADED."""
    fp_mod = pytest.importorskip("corestore_contrib.failpoint")
    monkeypatch.syspath_prepend(str(example_site(tmp_path)))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    importlib.invalidate_caches()
    try:
        assert registry.discover()["acme_fault_budget"].value == "acme_policy:FaultBudget"
        with fp_mod.FailpointVFS("docs-acme-failpoint") as fp:
            profile = corestore.Profile(
                path=str(tmp_path / "orders.db"), name="minimal", driver="apsw", vfs=fp.name,
                plugins=("acme_fault_budget",), settings={"acme_fault_budget": {"max_faults": 1}},
            )
            store = corestore.open(profile)
            try:
                plugin = store.plugin("acme_fault_budget")
                assert type(plugin).__module__ == "acme_policy" and plugin.settings.window_s == 60.0
                store.database.execute_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
                # a transient fault that never heals: run() retries each unit, then gives up
                with fp.armed(op="write", code="IOERR_TRUNCATE"):
                    for _ in range(2):
                        with pytest.raises(corestore.TransientError):
                            store.run(lambda: store.database.execute_sql("INSERT INTO orders DEFAULT VALUES"))
                assert store.stats()["retries"] >= 2 * (store.profile.retry.transient_attempts - 1)
                component = store.health().components["acme_fault_budget"]
                assert component.status is HealthStatus.DEGRADED
                assert component.details["faults_by_kind"] == {"TRANSIENT_IO": 2}  # one on_fatal per run()
            finally:
                store.close()
    finally:
        registry.clear_cache("acme_fault_budget")
        sys.modules.pop("acme_policy", None)


def test_example_plugin_test_suite_passes(tmp_path: Path) -> None:
    """The guide's tests, run as their author would: pytest in the package directory, with
    corestore's pytest plugin providing ``tmp_store`` and ``failpoint``."""
    pytest.importorskip("apsw")
    env = snippet_env(tmp_path)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # load exactly corestore's fixtures, whatever is installed
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "corestore_contrib.pytest_plugin", "-p", "no:cacheprovider",
         "--rootdir", str(EXAMPLE), "-c", str(EXAMPLE / "pyproject.toml"), str(EXAMPLE / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"site/examples/acme_policy tests failed:\n{proc.stdout}\n{proc.stderr}"
    assert re.search(r"\b3 passed\b", proc.stdout), proc.stdout


# -- the build ----------------------------------------------------------------------------------------
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is in the docs extra; CI builds the site with it")
    pytest.importorskip("material", reason="mkdocs-material is in the docs extra")
    # Built from a copy of the project's docs in which the example plugin was installed in place,
    # as a reader of the guide might: what that leaves behind (build/, *.egg-info/) must not be
    # published. The copy keeps the real tree clean; the code is imported from the installed
    # corestore, as in the real build.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(SITE, project / "site", ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    for package in ("corestore", "plugins", "contrib"):
        (project / package).symlink_to(ROOT / package, target_is_directory=True)
    leftovers = project / "site" / "examples" / "acme_policy"
    (leftovers / "build" / "lib" / "acme_policy").mkdir(parents=True)
    (leftovers / "build" / "lib" / "acme_policy" / "__init__.py").write_text("# a copy made by setuptools\n")
    (leftovers / "acme_policy.egg-info").mkdir()
    (leftovers / "acme_policy.egg-info" / "PKG-INFO").write_text("Name: acme-policy\n")
    out = tmp_path / "site"
    env = child_env(PYTHONDONTWRITEBYTECODE="1", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    published = [str(p.relative_to(out)) for p in out.rglob("*") if p.name == "build" or ".egg-info" in p.name]
    assert not published, f"install leftovers of the example plugin published in the site: {published}"
    assert (out / "stylesheets" / "extra.css").is_file(), "the stylesheet that wraps long code lines is not published"
    hooks_page = (out / "reference" / "hooks" / "index.html").read_text()
    for hook in hookspecs.HOOK_NAMES:
        assert f'id="corestore.hookspecs.{hook}"' in hooks_page, f"{hook} not rendered by mkdocstrings"
    for plugin in shipped_plugins():
        page = out / "plugins" / plugin / "index.html"
        if not page.is_file():
            continue  # test_every_shipped_plugin_has_a_page_with_its_settings says so
        html = page.read_text()
        for row in registry.settings_help(registry.load_plugin_class(plugin)):
            assert f"<code>{row['name']}</code>" in html, f"{plugin}: setting {row['name']} not on the built page"
        names = [row["name"] for row in registry.settings_help(registry.load_plugin_class(plugin))]
        table = next((t for t in re.findall(r"<table>.*?</table>", html, re.DOTALL)
                      if names and f"<code>{names[0]}</code>" in t), "")
        assert table, f"{plugin}: no settings table on the built page"
        assert "\\|" not in "".join(re.findall(r"<code>.*?</code>", table)), f"{plugin}: a backslash shown in a code cell"
        assert not re.search(r"<code>(True|False|None|'[^<]*')</code>", table), f"{plugin}: a Python repr in its settings"
    accounting = (out / "plugins" / "accounting" / "index.html").read_text()
    assert "&lt;db&gt;.corestore-deadletter.jsonl" in accounting, "<db> in a settings help text was eaten as HTML"
    for page in out.rglob("*.html"):
        assert 'class="mermaid"' not in page.read_text(), f"{page}: a mermaid diagram needs a script from the network"
    assert not list(out.rglob("_hooks.py")) and not list(out.rglob("__pycache__"))
