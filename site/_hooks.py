"""mkdocs hooks for the corestore site (``hooks:`` in mkdocs.yml): generated tables, so the
reference can never drift from the code.

A page asks for a generated table with a marker alone on its line::

    <!-- settings: circuit_breaker -->   the plugin's Settings (registry.settings_help)
    <!-- profiles: builtin -->           the built-in profiles (profiles.BUILTIN_PROFILES)
    <!-- profiles: retry -->             RetryPolicy fields and defaults
    <!-- profiles: pragmas -->           the pragmas a profile may set, with allowed values
    <!-- errors: taxonomy -->            ErrorKind -> exception, retry / breaker / reopen, codes
    <!-- errors: sqlstates -->           PostgreSQL SQLSTATE -> kind (corestore.classify_pg)
    <!-- hooks: summary -->              every hookspec: group, firstresult, isolated, summary

An unknown marker (any ``<!-- word: argument -->`` comment), an unknown plugin or a plugin without
``Settings`` fails the build.

Types and defaults are shown as a TOML author writes them (:func:`toml_type`, :func:`toml_value`):
``boolean`` / ``true``, ``string`` / ``"reject"``, ``array of strings`` / ``["CORRUPT"]``; a
``None`` default reads :data:`NOT_SET`. Cells escape ``|`` and ``<>&`` outside code spans only.

Pages written by other parts of the project (:data:`OPTIONAL_PAGES`) may not exist yet: they
are dropped from the nav and links to them become plain text, so the build works either way;
``tests/test_docs.py`` is what insists they exist. This module imports nothing from mkdocs at
import time, so the tests use :func:`render_markers` without mkdocs installed.
"""
from __future__ import annotations

import inspect
import logging
import os
import posixpath
import re
from collections.abc import Callable
from typing import Any

__all__ = ["MARKER", "OPTIONAL_PAGES", "NOT_SET", "render_markers", "settings_table", "toml_type", "toml_value", "GENERATORS"]

logger = logging.getLogger("mkdocs.hooks.corestore")

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))

#: ``<!-- kind: argument -->`` alone on a line.
MARKER = re.compile(r"^<!--\s*(?P<kind>[a-z_]+)\s*:\s*(?P<arg>[A-Za-z0-9_.\-]+)\s*-->[ \t]*$", re.MULTILINE)

#: Pages owned by other engineers: in the nav when they exist.
OPTIONAL_PAGES = frozenset({
    "plugins/wal_guard.md",
    "plugins/wal_invariants.md",
    "plugins/circuit_breaker.md",
    "plugins/accounting.md",
    "plugins/quarantine.md",
    "plugins/health.md",
    "cli.md",
    "testing-faults.md",
    "performance.md",
})


# -- table helpers ---------------------------------------------------------------------------------
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _cell(text: Any) -> str:
    """One table cell: ``|`` outside code spans escaped (Python-Markdown's table parser already
    leaves pipes inside code spans alone, and would show a backslash there), ``<``, ``>`` and
    ``&`` outside code spans turned into entities so help text such as ``<db>.x`` is shown, not
    swallowed as an HTML tag."""
    text = str(text).replace("\n", " ")
    out, pos = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_escape_prose(text[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_escape_prose(text[pos:]))
    return "".join(out)


def _escape_prose(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", r"\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: Any) -> str:
    return f"`{text}`"


# -- values and types as a TOML author writes them ---------------------------------------------------
#: Shown in the Default column for a setting whose default is ``None`` (the key is simply left out).
NOT_SET = "not set"


def toml_value(value: Any) -> str:
    """``value`` in TOML syntax: ``true``, ``"reject"``, ``["CORRUPT", "INVARIANT"]``, ``{ a = 1 }``.
    ``None`` has no TOML form; callers show :data:`NOT_SET` for it."""
    from collections.abc import Mapping

    if value is None:
        raise ValueError("None has no TOML form (the key is left out)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return "[" + ", ".join(toml_value(v) for v in items) + "]"
    if hasattr(value, "value") and hasattr(value, "name"):  # an Enum: its value, as written in TOML
        return toml_value(value.value)
    raise ValueError(f"no TOML form for {type(value).__name__} {value!r}")


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def _default_cell(value: Any) -> str:
    return NOT_SET if value is None else _code(toml_value(value))


_TOML_TYPES = {"str": "string", "int": "integer", "float": "float", "bool": "boolean",
               "dict": "table", "Mapping": "table"}


def toml_type(annotation: Any) -> str:
    """A field's annotation as the TOML type a user writes: ``str | None`` -> "string (optional)",
    ``tuple[str, ...]`` -> "array of strings"."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = str(text).replace("typing.", "").replace("Optional[", "").strip()
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    names = []
    for part in parts:
        seq = re.fullmatch(r"(?:tuple|list|frozenset|set|Sequence)\[(\w+)(?:, \.\.\.)?\]", part)
        if seq:
            names.append(f"array of {_TOML_TYPES.get(seq.group(1), seq.group(1))}s")
        else:
            names.append(_TOML_TYPES.get(part.split("[")[0], part))
    shown = " or ".join(names) or "any"
    return f"{shown} (optional)" if optional else shown


# -- generators ------------------------------------------------------------------------------------
def settings_table(plugin: str) -> str:
    """The settings table of ``plugin`` (its entry-point name), from its ``Settings`` class."""
    from corestore import registry

    cls = registry.load_plugin_class(plugin, where="site")
    rows = registry.settings_help(cls)
    if not rows:
        raise ValueError(f"plugin {plugin!r} ({cls.__module__}.{cls.__qualname__}) has no Settings class")
    missing = [r["name"] for r in rows if not r["help"]]
    if missing:
        raise ValueError(f"plugin {plugin!r}: Settings field(s) without metadata help: {', '.join(missing)}")
    import attrs

    fields = {f.name: f for f in attrs.fields(cls.Settings)}
    body = _table(
        ["Setting", "Type", "Default", "Meaning"],
        [[_code(r["name"]), toml_type(fields[r["name"]].type), _default_cell(_field_default(fields[r["name"]])), r["help"]]
         for r in rows],
    )
    return f"{body}\n\nSet in TOML under `[profiles.NAME.settings.{plugin}]` or `[databases.NAME.settings.{plugin}]`."


def _field_default(field: Any) -> Any:
    import attrs

    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:  # type: ignore[union-attr]
            raise ValueError(f"setting {field.name}: a default computed from the instance cannot be documented")
        default = default.factory()  # type: ignore[union-attr]
    return default


def _builtin_profiles(arg: str) -> str:
    if arg != "builtin":
        return _profiles_other(arg)
    from corestore.profiles import BUILTIN_PROFILES

    rows = []
    for name, raw in BUILTIN_PROFILES.items():
        plugins = ", ".join(_code(p) for p in raw.get("plugins", ())) or "(none)"
        pragmas = ", ".join(f"`{k} = {toml_value(v)}`" for k, v in dict(raw.get("pragmas", {})).items()) or "(none)"
        rows.append([_code(name), plugins, pragmas])
    note = ("On macOS the `default` profile also sets `fullfsync = true` and `checkpoint_fullfsync = true` "
            "(plain `fsync` is not durable there). Where the stdlib `sqlite3` links a SQLite with the WAL-reset "
            "bug (3.7.0 to 3.51.2) `default` also enables `checkpoint_governor` and sets "
            "`wal_autocheckpoint = 0` (the mitigation, [checkpoint_governor](../plugins/checkpoint_governor.md); "
            "before 0.2.0's issue 18 it also enabled `write_gate`); "
            "elsewhere it has no governor and `wal_autocheckpoint = 1000`. The table shows the profile on the machine "
            "that built this site.")
    return _table(["Profile", "Plugins", "Pragmas"], rows) + "\n\n" + note


_RETRY_MEANING = {
    "busy_attempts": "attempts of a unit that keeps failing with BUSY (lock contention), the first included",
    "transient_attempts": "attempts of a unit that keeps failing with TRANSIENT_IO, the first included",
    "fatal_attempts": "attempts for FATAL_IO; 1 = never retried (a failing disk is not retried into); "
                      "more reopens the connection and tries again",
    "base_delay_s": "first backoff delay in seconds; doubles per attempt, jittered to 50-100 %",
    "max_delay_s": "cap of one backoff delay, seconds",
    "budget_s": "total time budget of one `run()` call, seconds (the call's `deadline_s` shortens it)",
}


def _profiles_other(arg: str) -> str:
    import attrs

    from corestore.profiles import _BOOL_PRAGMAS, _ENUM_PRAGMAS, _INT_PRAGMA_RANGES, _INT_PRAGMAS, RetryPolicy

    if arg == "retry":
        rows = []
        for field in attrs.fields(RetryPolicy):
            meaning = _RETRY_MEANING.get(field.name)
            if meaning is None:
                raise ValueError(f"RetryPolicy.{field.name} has no description in site/_hooks.py _RETRY_MEANING")
            ftype = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
            rows.append([_code(field.name), toml_type(ftype), _default_cell(_field_default(field)), meaning])
        return _table(["Key", "Type", "Default", "Meaning"], rows)
    if arg == "pragmas":
        rows = [[_code(n), "one of " + ", ".join(_code(v if v.isdigit() else toml_value(v)) for v in vals)]
                for n, vals in sorted(_ENUM_PRAGMAS.items())]
        rows += [[_code(n), "`true` / `false` (stored as 1 / 0)"] for n in sorted(_BOOL_PRAGMAS)]
        def _range(n: str) -> str:
            low, high = _INT_PRAGMA_RANGES.get(n, (None, None))
            unit = " (milliseconds)" if n == "busy_timeout" else ""
            return f"integer from {low} to {high}{unit}" if low is not None else "integer (64-bit)"

        rows += [[_code(n), _range(n)] for n in sorted(_INT_PRAGMAS)]
        return _table(["Pragma", "Allowed values"], rows)
    raise ValueError(f"unknown profiles marker argument {arg!r} (builtin, retry, pragmas)")


_SQLSTATE_NOTES = {
    "40001": "at COMMIT too: a server error there means rolled back (`committed=False`)",
    "40P01": "the victim of the cycle; the other session goes on",
    "55P03": "`lock_timeout`, `NOWAIT`",
    "08007": "at COMMIT: outcome unknown (`committed=None`), never retried unless idempotent",
    "25P03": "`idle_in_transaction_session_timeout`: the session is gone, nothing committed",
    "57P05": "`idle_session_timeout`: the session is gone",
    "57P01": "also `pg_terminate_backend()`",
    "57014": "`statement_timeout` or a cancel: its own outcome, not a storage fault, never retried",
    "25006": "a standby after failover, `default_transaction_read_only`; inside `read()`: `ReadOnlyError` "
             "(`WRITE_IN_READ`, a caller error)",
    "25P02": "a follow-on of the transaction's first error (not counted, not a fault)",
}


def _sqlstates() -> str:
    from corestore.classify import FLAGS_BY_KIND
    from corestore.classify_pg import CLASS_ROWS, CLIENT_ERROR, CONNECTION_LOST, DRIVER_ERROR, SQLSTATE_ROWS
    from corestore.raising import EXCEPTION_FOR_KIND as _EXCEPTION_FOR_KIND

    yes = {True: "yes", False: "no"}

    def row(code: str, r: Any, note: str | None = None) -> list[str]:
        flags = FLAGS_BY_KIND[r.kind]
        retry = flags.retryable if r.retryable is None else r.retryable
        trips = flags.trips_breaker if r.trips_breaker is None else r.trips_breaker
        reopen = flags.reopen if r.reopen is None else r.reopen
        return [code, _code(r.name), r.kind.name, _code(_EXCEPTION_FOR_KIND[r.kind].__name__), yes[retry],
                yes[trips], yes[reopen], _SQLSTATE_NOTES.get(code[1:6], "") if note is None else note]

    rows = [row(f"`{code}`", r) for code, r in SQLSTATE_ROWS.items()]
    rows += [row(f"`{code}xxx`", r) for code, r in CLASS_ROWS.items()]
    rows.append(row("none: `OperationalError`, `InterfaceError`", CONNECTION_LOST,
                    "the connection broke or could not be made (a refused login: `ENVIRONMENT`); "
                    "at COMMIT: outcome unknown"))
    rows.append(row("none: `ProgrammingError`, `DataError`, `NotSupportedError`", CLIENT_ERROR,
                    "raised by the driver before anything reached the server (a stray `%`, a wrong "
                    "parameter count): the caller's mistake"))
    rows.append(row("none: any other driver error", DRIVER_ERROR,
                    "`CONNECTION_LOST` instead when its words say the connection is gone"))
    rows.append(["anything else", "`SQLSTATE_<code>`", "UNKNOWN", "`StoreError`", "no", "no", "no", ""])
    return _table(["SQLSTATE", "Name", "Kind", "Raised as", "Retried by `run()`", "Trips breaker", "Reopens",
                   "Note"], rows)


def _errors(arg: str) -> str:
    if arg == "sqlstates":
        return _sqlstates()
    if arg != "taxonomy":
        raise ValueError(f"unknown errors marker argument {arg!r} (taxonomy, sqlstates)")
    from corestore.classify import FLAGS_BY_KIND, KIND_BY_CODE, SQLITE_CODES
    from corestore.errors import ErrorKind
    from corestore.raising import EXCEPTION_FOR_KIND as _EXCEPTION_FOR_KIND

    primaries: dict[ErrorKind, list[str]] = {}
    overrides: dict[ErrorKind, list[str]] = {}
    for code, kind in KIND_BY_CODE.items():
        name = SQLITE_CODES[code].removeprefix("SQLITE_")
        if code <= 0xFF:
            if code not in (0, 100, 101):
                primaries.setdefault(kind, []).append(f"{name} {code}")
        elif kind is not KIND_BY_CODE.get(code & 0xFF):
            overrides.setdefault(kind, []).append(f"{name} {code}")
    yes = {True: "yes", False: "no"}
    rows = []
    for kind in ErrorKind:
        flags = FLAGS_BY_KIND[kind]
        exc = _EXCEPTION_FOR_KIND.get(kind)
        codes = primaries.get(kind, []) + overrides.get(kind, [])
        if kind is ErrorKind.FATAL_IO:
            retry = "only by policy (`retry.fatal_attempts`)"
        elif kind is ErrorKind.INVARIANT:
            codes = ["corestore's own post-commit check"]
            retry = "never (the data is committed)"
        else:
            retry = "yes, bounded, in `run()`" if flags.retryable else "no"
        if kind is ErrorKind.UNKNOWN:
            codes = ["anything else"] + codes
        rows.append([
            _code(kind.name), ", ".join(codes) or "-",
            _code(exc.__name__) if exc else "-",
            retry, yes[flags.trips_breaker], yes[flags.reopen], yes[kind not in _not_faults()],
        ])
    return _table(["Kind", "SQLite codes (primary; extended ones that differ)", "Raised as", "Retried",
                   "Trips breaker", "Reopens", "`on_fatal`"], rows)


def _not_faults() -> frozenset[Any]:
    from corestore.errors import _NOT_FAULTS

    return _NOT_FAULTS


_HOOK_GROUPS = {
    "on_store_open": "open", "on_open": "open", "classify_error": "operate", "before_operation": "operate",
    "on_success": "operate", "after_operation": "operate",
    "on_commit_invariant": "commit", "on_fatal": "fail", "on_persistent_failure": "fail",
    "on_health": "health", "on_health_changed": "health", "on_close": "close", "on_fork_child": "fork",
}


def _hooks(arg: str) -> str:
    if arg != "summary":
        raise ValueError(f"unknown hooks marker argument {arg!r} (summary)")
    from corestore import hookspecs

    rows = []
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, "corestore_spec", {}) or {}
        group = _HOOK_GROUPS.get(name)
        if group is None:
            raise ValueError(f"hook {name!r} has no lifecycle group in site/_hooks.py _HOOK_GROUPS")
        params = ", ".join(p for p in inspect.signature(fn).parameters)
        first = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        notes = []
        if opts.get("firstresult"):
            notes.append("first non-None wins")
        if name in hookspecs.ISOLATED_HOOKS:
            notes.append("isolated")
        rows.append([f"[`{name}({params})`][corestore.hookspecs.{name}]", group, ", ".join(notes) or "-", first])
    return _table(["Hook", "Phase", "Calling", "When"], rows)


GENERATORS: dict[str, Callable[[str], str]] = {
    "settings": settings_table,
    "profiles": _builtin_profiles,
    "errors": _errors,
    "hooks": _hooks,
}


def render_markers(markdown: str, *, where: str = "<page>") -> str:
    """Replace every marker in ``markdown`` by its generated table; raise ValueError on a bad one."""

    def replace(match: re.Match[str]) -> str:
        kind, arg = match.group("kind"), match.group("arg")
        generator = GENERATORS.get(kind)
        if generator is None:  # a typo must not leave a page without its table
            raise ValueError(f"{where}: unknown marker <!-- {kind}: {arg} -->; known kinds: {', '.join(GENERATORS)}")
        try:
            return generator(arg)
        except Exception as err:
            raise ValueError(f"{where}: marker <!-- {kind}: {arg} --> failed: {type(err).__name__}: {err}") from err

    return MARKER.sub(replace, markdown)


# -- nav and links to pages that may not exist yet ------------------------------------------------------
def _exists(rel: str, docs_dir: str) -> bool:
    return os.path.isfile(os.path.join(docs_dir, rel))


def _filter_nav(items: Any, docs_dir: str, dropped: list[str]) -> Any:
    if isinstance(items, list):
        out = []
        for item in items:
            kept = _filter_nav(item, docs_dir, dropped)
            if kept is not None:
                out.append(kept)
        return out
    if isinstance(items, dict):
        out_d = {}
        for title, value in items.items():
            kept = _filter_nav(value, docs_dir, dropped)
            if kept is not None and kept != []:
                out_d[title] = kept
        return out_d or None
    if isinstance(items, str) and items in OPTIONAL_PAGES and not _exists(items, docs_dir):
        dropped.append(items)
        return None
    return items


_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[^)#\s]+\.md)(?P<anchor>#[^)\s]*)?\)")


def unlink_missing(markdown: str, page_path: str, docs_dir: str) -> str:
    """Turn links to missing :data:`OPTIONAL_PAGES` into their text (``page_path`` is the page's
    path relative to the docs dir, with forward slashes)."""
    base = posixpath.dirname(page_path)

    def replace(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(base, match.group("target")))
        if target in OPTIONAL_PAGES and not _exists(target, docs_dir):
            logger.info("corestore hooks: %s links to %s, which does not exist yet; shown as text", page_path, target)
            return match.group("text")
        return match.group(0)

    return _LINK.sub(replace, markdown)


# -- mkdocs events ---------------------------------------------------------------------------------
def on_config(config: Any) -> Any:
    dropped: list[str] = []
    if config.get("nav"):
        config["nav"] = _filter_nav(config["nav"], config["docs_dir"], dropped)
    for page in dropped:
        logger.info("corestore hooks: %s is not written yet; left out of the nav", page)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    from mkdocs.exceptions import PluginError

    src = page.file.src_uri
    try:
        markdown = render_markers(markdown, where=src)
    except ValueError as err:
        raise PluginError(str(err)) from err
    return unlink_missing(markdown, src, config["docs_dir"])
