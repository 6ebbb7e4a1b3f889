"""pytest fixtures for testing a corestore deployment against real disk faults.

Installed with corestore's ``test`` extra, pytest loads this module through the ``pytest11``
entry point (``corestore = "corestore_contrib.pytest_plugin"``); in a checkout without the
installed entry point, load it with ``-p corestore_contrib.pytest_plugin``.

Fixtures:

``tmp_store``
    A :class:`corestore.Store` on ``tmp_path / "store.db"``, closed at teardown. Its profile is the
    built-in ``minimal`` unless a ``corestore_profile`` marker or an indirect parameter says
    otherwise::

        @pytest.mark.corestore_profile("minimal", pragmas={"journal_mode": "wal"}, failpoint=True)
        def test_wedge(tmp_store, failpoint): ...

        @pytest.mark.parametrize("tmp_store", ["minimal", {"pragmas": {"journal_mode": "wal"}}], indirect=True)
        def test_both(tmp_store): ...

    The marker's first argument (or the parameter) is a profile name, a :class:`corestore.Profile`
    or a mapping of profile fields (``name`` picks the base profile). Keyword fields override the
    base profile, except ``pragmas`` and ``settings``, which merge key by key. ``path`` (relative
    to ``tmp_path``) moves the file, ``config`` names a TOML config to resolve the name in, and
    ``failpoint=True`` runs the store over the ``failpoint`` fixture's VFS (``driver="apsw"``).

``failpoint``
    A fresh :class:`~corestore_contrib.failpoint.FailpointVFS` with a unique name. At teardown
    every store still open over it is closed, every fault healed and the VFS unregistered.

``preload_failpoint``
    A :class:`~corestore_contrib.failpoint.PreloadFailpoint` whose control file lives in
    ``tmp_path`` and whose roles (``"main"``, ``"wal"`` ...) refer to ``tmp_path / "store.db"``;
    ``preload_failpoint.run(fn, args=...)`` runs ``fn`` in a child process under the shim. At
    teardown children still running are killed and every rule healed.

Skips: ``failpoint`` skips when apsw is missing and ``preload_failpoint`` when the machine is not
Linux or has no C compiler, each with the reason. Set ``CORESTORE_REQUIRE_FAILPOINT=1`` (CI) to
turn those skips into failures, so a harness that should run never silently does not.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import corestore
    from corestore_contrib.failpoint import FailpointVFS, PreloadFailpoint

__all__ = ["tmp_store", "failpoint", "preload_failpoint", "build_profile", "MARKER", "REQUIRE_ENV"]

MARKER = "corestore_profile"
REQUIRE_ENV = "CORESTORE_REQUIRE_FAILPOINT"
STORE_FILE = "store.db"
_MERGED_FIELDS = ("pragmas", "settings")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(profile='minimal', *, failpoint=False, config=None, **fields): the profile the "
        "tmp_store fixture opens (a name, a corestore.Profile or a mapping; fields override it, "
        "pragmas and settings merge; failpoint=True runs it over the failpoint fixture's VFS)",
    )


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{reason} (${REQUIRE_ENV} is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def failpoint() -> Iterator[FailpointVFS]:
    """A fresh failpoint VFS (unique name), healed and unregistered at teardown."""
    try:
        from corestore_contrib.failpoint import FailpointVFS
    except ImportError as err:
        _unavailable(f"the failpoint fixture needs apsw: {err}")
    fp = FailpointVFS(f"failpoint-{uuid.uuid4().hex[:12]}")
    try:
        yield fp
    finally:
        fp.heal()
        _close_stores_over(fp.name)
        fp.unregister()


def _close_stores_over(vfs: str) -> None:
    try:
        from corestore.store import open_stores
    except ImportError:  # pragma: no cover - an older core without the registry
        return
    for store in open_stores():
        if store.profile.vfs == vfs:
            while not store.closed:
                store.close()


@pytest.fixture
def preload_failpoint(tmp_path: Path) -> Iterator[PreloadFailpoint]:
    """Control of the preload shim for children run with ``.run(...)`` / ``.start(...)``."""
    from corestore_contrib.failpoint import FailpointUnavailable, PreloadFailpoint, build_shim

    try:
        build_shim()
    except FailpointUnavailable as err:
        _unavailable(str(err))
    fp = PreloadFailpoint(tmp_path / "failpoint.control", database=tmp_path / STORE_FILE)
    try:
        yield fp
    finally:
        fp.close()


def _profile_request(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    """(base, fields) from the indirect parameter, else the closest marker, else minimal."""
    if hasattr(request, "param"):
        param = request.param
        if isinstance(param, Mapping):
            fields = dict(param)
            return fields.pop("name", fields.pop("profile", "minimal")), fields
        return param, {}
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return "minimal", {}
    if len(marker.args) > 1:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes at most one positional argument (the profile)")
    fields = dict(marker.kwargs)
    base = marker.args[0] if marker.args else fields.pop("profile", fields.pop("name", "minimal"))
    if isinstance(base, Mapping):
        fields = {**base, **fields}
        base = fields.pop("name", fields.pop("profile", "minimal"))
    return base, fields


def build_profile(base: Any, fields: Mapping[str, Any], *, tmp_path: Path,
                  failpoint_name: str | None = None) -> corestore.Profile:
    """The profile ``tmp_store`` opens (public so a test can build the same profile for a child
    process or a second store)."""
    import attrs

    import corestore
    from corestore.profiles import load_config, resolve_profile

    fields = dict(fields)
    fields.pop("failpoint", None)
    config = fields.pop("config", None)
    path = Path(fields.pop("path", STORE_FILE))
    path = path if path.is_absolute() else tmp_path / path
    if isinstance(base, corestore.Profile):
        profile = attrs.evolve(base, path=str(path))
    else:
        profile = resolve_profile(str(base), config=load_config(config) if config else None, path=str(path))
    for name in _MERGED_FIELDS:
        if name in fields:
            fields[name] = {**dict(getattr(profile, name)), **dict(fields[name])}
    if failpoint_name is not None:
        fields.update(driver="apsw", vfs=failpoint_name)
    return attrs.evolve(profile, **fields)


@pytest.fixture
def tmp_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[corestore.Store]:
    """A store on ``tmp_path / "store.db"``; see the module docs for choosing its profile."""
    import corestore

    base, fields = _profile_request(request)
    fp_name = None
    if fields.get("failpoint"):
        fp_name = request.getfixturevalue("failpoint").name
    store = corestore.open(build_profile(base, fields, tmp_path=tmp_path, failpoint_name=fp_name))
    try:
        yield store
    finally:
        while not store.closed:
            store.close()
