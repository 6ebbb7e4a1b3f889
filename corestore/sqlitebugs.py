"""The version gate: known SQLite corruption bugs, checked against the SQLite the driver links.

**When.** Every store reports it in ``store.health()`` (component ``sqlite_version``) and
``corestore doctor`` lists it, because the SQLite a Python process links is decided by the
interpreter build (stdlib ``sqlite3``) or the apsw wheel, not by the application, and nothing
else tells an operator that the library under them has a known corruption bug.

**Why.** SQLite documents a corruption bug in WAL mode (the WAL-reset bug,
https://sqlite.org/wal.html#walresetbug): present from 3.7.0, fixed in 3.51.3 (2026-03-13). A
checkpoint that starts right after another completed can set a wrong field in the WAL-index
header while another connection commits and resets the WAL. The stdlib ``sqlite3`` of many
distributions links an affected version.

The table :data:`KNOWN_BUGS` is data: one :class:`KnownBug` per bug, each with its first affected
version, the release that fixed it, patch releases of older branches that carry the fix (and
whether that could be confirmed from a public source), and SQLite's page. Add a row to extend it.

What a store does about a bug is the ``mitigation`` row's business: for the WAL-reset bug the
``checkpoint_governor`` plugin runs every checkpoint of corestore's processes with the writers
held out (site/plugins/checkpoint_governor.md explains why, from ``wal.c``).
"""
from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

import attrs

from .health import HealthComponent, HealthStatus

__all__ = ["KnownBug", "KNOWN_BUGS", "parse_version", "linked_version", "affecting", "version_component"]

logger = logging.getLogger(__name__)

Version = tuple[int, int, int]


def parse_version(text: str) -> Version:
    """``"3.40.1"`` -> ``(3, 40, 1)`` (missing parts are 0)."""
    parts = [int(p) for p in str(text).split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


def _text(v: Version) -> str:
    return ".".join(str(p) for p in v)


@attrs.frozen(kw_only=True)
class KnownBug:
    """One known SQLite corruption bug.

    ``first_affected``: the first release with the bug. ``fixed_in``: the release of the main line
    that fixed it (every later release is fixed). ``backports``: ``{"3.44": "3.44.6"}``, patch
    releases of older branches that carry the fix; ``backports_confirmed`` says which of them a
    public source confirmed (an unconfirmed one is listed but NOT trusted: that branch counts as
    affected). ``sources``: where each fact was read.
    """

    id: str
    title: str
    first_affected: str
    fixed_in: str
    backports: Mapping[str, str] = attrs.field(factory=dict)
    backports_confirmed: frozenset[str] = attrs.field(factory=frozenset, converter=frozenset)
    page: str
    sources: tuple[str, ...] = ()
    note: str = ""
    mitigation: str = ""
    advice: str = ""

    def affects(self, version: Version) -> bool:
        """True when ``version`` has the bug (a confirmed backport of its branch counts as fixed)."""
        if version < parse_version(self.first_affected) or version >= parse_version(self.fixed_in):
            return False
        branch = f"{version[0]}.{version[1]}"
        patch = self.backports.get(branch)
        if patch is not None and patch in self.backports_confirmed and version >= parse_version(patch):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "first_affected": self.first_affected,
                "fixed_in": self.fixed_in, "backports": dict(self.backports),
                "backports_confirmed": sorted(self.backports_confirmed), "page": self.page,
                "note": self.note, "advice": self.advice}


#: Known corruption bugs (data; add a row to extend). Sources were read on 2026-12-05.
KNOWN_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        id="wal-reset",
        title="WAL-reset bug: a checkpoint racing a commit that resets the WAL can corrupt the database",
        first_affected="3.7.0",
        fixed_in="3.51.3",
        backports={"3.44": "3.44.6", "3.50": "3.50.7"},
        backports_confirmed=frozenset(),
        page="https://sqlite.org/wal.html#walresetbug",
        sources=(
            "https://sqlite.org/wal.html#walresetbug (affected 3.7.0 through 3.51.2)",
            "https://www.sqlite.org/changes.html (3.53.0: 'Fix the WAL-reset database corruption bug')",
            "SQLite announcement quoted in github.com/wiselibs/better-sqlite3 release v12.8.0 and "
            "github.com/vapor/sqlite-nio PR 101: 3.52.0 withdrawn, 3.51.3 (2026-03-13) carries the fix",
        ),
        note=("3.52.0 (2026-03-06) also had the fix but was withdrawn. The patch releases 3.44.6 and 3.50.7 "
              "for older branches could NOT be confirmed from a public source (no release-log page for "
              "either was found); until they are, those branches are treated as affected."),
        mitigation="checkpoint_governor",
        advice=("use the apsw driver (its wheel bundles a fixed SQLite: driver = \"apsw\"), or a Python "
                "linked against SQLite >= 3.51.3; until then enable checkpoint_governor (the built-in "
                "default does) and never set mmap_size"),
    ),
)


def linked_version(driver: str) -> str:
    """The version of the SQLite library ``driver`` (``"sqlite3"`` or ``"apsw"``) links."""
    if driver == "apsw":
        import apsw

        return str(apsw.sqlite_lib_version())
    return sqlite3.sqlite_version


def affecting(driver_or_version: str) -> list[KnownBug]:
    """The known bugs of the SQLite linked by a driver (or of an explicit version ``"3.40.1"``)."""
    text = driver_or_version if driver_or_version[:1].isdigit() else linked_version(driver_or_version)
    return list(_affecting(text))


@functools.lru_cache(maxsize=32)
def _affecting(text: str) -> tuple[KnownBug, ...]:
    """:func:`affecting` for one version text, computed once per process (every open asks)."""
    version = parse_version(text)
    return tuple(bug for bug in KNOWN_BUGS if bug.affects(version))


def _mitigation_state(store: Any, bug: KnownBug) -> tuple[bool, str]:
    """(holds, why) for ``bug``'s mitigation in ``store``: asks the mitigating plugin."""
    plugin = store.plugins.get(bug.mitigation) if bug.mitigation else None
    if plugin is None:
        return False, f"not mitigated: profile {store.profile.name!r} does not enable {bug.mitigation}"
    state = getattr(plugin, "mitigation_state", None)
    if state is None:
        return False, f"{bug.mitigation} does not report a mitigation"
    holds: tuple[bool, str] = state(store)  # a plugin's mitigation_state(store)
    return holds


def version_component(store: Any) -> HealthComponent:
    """The core's ``sqlite_version`` health component (no I/O).

    UP with no finding on a version without known bugs. On an affected version each bug is a
    finding in ``details["findings"]``: advisory (UP) while its mitigation holds, DEGRADED when
    the mitigating plugin is enabled but its mitigation is switched off or cannot apply.
    A profile that does not enable the mitigating plugin at all stays UP with an advisory finding
    that says so (the decision is documented on site/plugins/checkpoint_governor.md).
    """
    driver = store.profile.driver
    version = linked_version(driver)
    bugs = affecting(version) if not store.memory else []
    details: dict[str, Any] = {"driver": driver, "sqlite_version": version, "findings": []}
    if not bugs:
        return HealthComponent(name="sqlite_version", status=HealthStatus.UP,
                               summary=f"SQLite {version} ({driver}): no known corruption bug", details=details)
    status = HealthStatus.UP
    lines = []
    for bug in bugs:
        holds, why = _mitigation_state(store, bug)
        enabled = bug.mitigation in store.plugins
        if enabled and not holds:
            status = HealthStatus.DEGRADED
        details["findings"].append({**bug.to_dict(), "mitigated": holds, "mitigation": why})
        lines.append(f"{bug.id} ({'mitigated' if holds else why})")
    return HealthComponent(name="sqlite_version", status=status,
                           summary=f"SQLite {version} ({driver}) has known corruption bugs: " + "; ".join(lines),
                           details=details)
