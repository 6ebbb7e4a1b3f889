"""The house rules of site/architecture.md, enforced by parsing the imports of the three source
roots with ``ast`` (every import counts: top level, inside functions, under ``TYPE_CHECKING``).

* nothing under ``corestore/`` imports ``corestore_plugins`` or ``corestore_contrib``;
* ``corestore_plugins`` imports ``corestore`` (its public face and public modules, never a private
  ``corestore._name``) and not ``corestore_contrib``;
* ``corestore_contrib`` may import both;
* no module in ``corestore/`` or ``plugins/`` is over 500 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

#: package name -> its directory
PACKAGES = {
    "corestore": ROOT / "corestore",
    "corestore_plugins": ROOT / "plugins" / "corestore_plugins",
    "corestore_contrib": ROOT / "contrib" / "corestore_contrib",
}
#: package -> the packages it must not import
FORBIDDEN = {
    "corestore": {"corestore_plugins", "corestore_contrib"},
    "corestore_plugins": {"corestore_contrib"},
    "corestore_contrib": set(),
}
MAX_LINES = 500


def modules(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def dotted(path: Path, package: str) -> str:
    parts = list(path.relative_to(PACKAGES[package]).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports (relative imports resolved), plus literal names handed to
    ``importlib.import_module``/``__import__`` (an import by another spelling is still one)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = dotted(path, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module is in
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def violations(package: str) -> set[tuple[str, str]]:
    out = set()
    for path in modules(package):
        for name in imported_modules(path, package):
            top = name.split(".")[0]
            if top in FORBIDDEN[package]:
                out.add((rel(path), name))
    return out


def test_the_three_roots_exist_and_hold_modules() -> None:
    for package in PACKAGES:
        assert len(modules(package)) > 2, package


def test_import_parser_sees_relative_lazy_and_dynamic_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: a rule it cannot see is no rule."""
    pkg = tmp_path / "corestore"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "from . import store\nfrom .errors import ConfigError\n"
        "def f():\n    import corestore_plugins.health\n"
        "    importlib.import_module('corestore_contrib.stress')\n"
        "if TYPE_CHECKING:\n    from corestore_plugins import quarantine\n"
    )
    monkeypatch.setitem(PACKAGES, "corestore", pkg)
    found = imported_modules(pkg / "x.py", "corestore")
    assert {"corestore.store", "corestore.errors", "corestore_plugins.health", "corestore_contrib.stress",
            "corestore_plugins.quarantine"} <= found


def test_core_imports_neither_plugins_nor_contrib() -> None:
    new = violations("corestore")
    assert not new, "corestore/ must not import corestore_plugins or corestore_contrib (site/architecture.md): " + \
        ", ".join(f"{f} imports {m}" for f, m in sorted(new))


def test_plugins_import_the_core_but_not_contrib() -> None:
    found = violations("corestore_plugins")
    assert not found, "corestore_plugins must not import corestore_contrib (site/architecture.md): " + \
        ", ".join(f"{f} imports {m}" for f, m in sorted(found))


def test_plugins_use_only_public_core_modules() -> None:
    private = sorted(
        (rel(path), name)
        for path in modules("corestore_plugins")
        for name in imported_modules(path, "corestore_plugins")
        if name.split(".")[0] == "corestore" and any(part.startswith("_") for part in name.split(".")[1:2])
    )
    assert not private, "plugins import corestore's public modules only: " + ", ".join(
        f"{f} imports {m}" for f, m in private)


def _line_counts() -> dict[str, int]:
    paths = modules("corestore") + modules("corestore_plugins")
    return {rel(p): len(p.read_text().splitlines()) for p in paths}


def test_no_module_in_core_or_plugins_is_over_500_lines() -> None:
    over = {name: n for name, n in _line_counts().items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams): {over}"
