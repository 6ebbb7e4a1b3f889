"""Read-back of the pragmas a profile sets: what each should read back as, and what it does.

Teams have raised ``busy_timeout`` three times with no effect because the setting never reached
the connection; the only proof is reading the pragma back. :func:`expected_pragmas` turns a
store's profile into the values SQLite should report (names of enumerations become the numbers
SQLite answers with, booleans 0/1, values SQLite clamps are clamped the same way), and
:func:`read_back` compares them with one connection. ``wal_guard`` uses both at open (a mismatch
refuses the connection); ``pragma_guard`` uses them afterwards to find drift.

Not read back, by design (each reads back something other than the connection's setting):
``journal_mode`` (``wal_guard`` checks it against the file header), ``page_size`` and
``auto_vacuum`` (properties of the database file, fixed once it has content), ``user_version`` and
``application_id`` (database content a migration may change), ``soft_heap_limit`` and
``hard_heap_limit`` (process-wide: another store in the process may set them), ``threads`` and
``mmap_size`` (clamped by compile-time limits), ``max_page_count`` (reads back at least the current
page count) and ``cache_spill`` (reads back a page threshold, not the value set).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NOT_READ_BACK", "expected_pragmas", "read_back", "describe"]

#: Pragmas never read back (see the module docs for why).
NOT_READ_BACK = frozenset({
    "journal_mode", "page_size", "auto_vacuum", "user_version", "application_id", "soft_heap_limit",
    "hard_heap_limit", "threads", "mmap_size", "max_page_count", "cache_spill",
})

_ENUMS: dict[str, dict[str, int]] = {
    "synchronous": {"off": 0, "normal": 1, "full": 2, "extra": 3},
    "temp_store": {"default": 0, "file": 1, "memory": 2},
    "secure_delete": {"off": 0, "false": 0, "on": 1, "true": 1, "fast": 2},
}
_NAMES: dict[str, dict[int, str]] = {k: {v: n.upper() for n, v in m.items() if n not in ("true", "false")}
                                     for k, m in _ENUMS.items()}
_DEFAULT_WAL_AUTOCHECKPOINT = 1000


def _normalise(name: str, value: Any) -> Any:
    text = str(value).lower()
    if name in _ENUMS:
        return int(text) if text.isdigit() else _ENUMS[name][text]
    if name == "locking_mode":
        return text
    if name == "wal_autocheckpoint":
        return max(int(value), 0)  # SQLite reads 0 back for any value <= 0
    if name == "journal_size_limit":
        return max(int(value), -1)  # below -1 reads back -1
    return int(value)


def expected_pragmas(store: Any, *, wal_guard_defaults: bool = False) -> dict[str, Any]:
    """What each pragma the store's profile sets should read back as.

    ``wal_autocheckpoint`` is 0 whenever ``checkpoint_governor`` is enabled (it owns checkpoints);
    ``wal_guard_defaults`` adds ``wal_autocheckpoint = 1000`` when the profile sets none (what
    ``wal_guard`` applies)."""
    pragmas: Mapping[str, Any] = store.profile.pragmas
    out = {name: _normalise(name, value) for name, value in pragmas.items() if name not in NOT_READ_BACK}
    if "checkpoint_governor" in store.plugins:
        out["wal_autocheckpoint"] = 0
    elif wal_guard_defaults and "wal_autocheckpoint" not in out:
        out["wal_autocheckpoint"] = _DEFAULT_WAL_AUTOCHECKPOINT
    return out


def _value(conn: Any, name: str) -> Any:
    rows = conn.execute(f"PRAGMA {name}").fetchall()
    return rows[0][0] if rows else None


def read_back(conn: Any, expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(pragma, wanted, actual)]`` for each pragma of ``expected`` that ``conn`` reports
    otherwise (empty when all agree)."""
    out = []
    for name, want in expected.items():
        got = _value(conn, name)
        actual: Any = str(got).lower() if isinstance(want, str) else got
        if isinstance(want, int):
            try:
                actual = int(got)
            except (TypeError, ValueError):
                actual = got
        if actual != want:
            out.append((name, want, actual))
    return out


def describe(name: str, value: Any) -> str:
    """``2`` for ``synchronous`` -> ``"2 (FULL)"``; other values as they are."""
    names = _NAMES.get(name)
    if names is not None and isinstance(value, int) and value in names:
        return f"{value} ({names[value]})"
    return str(value)
