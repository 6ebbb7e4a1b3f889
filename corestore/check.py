"""The checks ``corestore.open()`` makes before it opens a database file, shared with
``corestore profiles --check`` so the pre-deploy gate refuses exactly what ``open()`` refuses,
with the same message.

:func:`check_path` settles the database path (absolute, real; its directory must exist; a
read-only profile needs the file). :func:`check_profile` runs it and then everything about the
plugins (:func:`corestore.registry.build_hook_caller`: lookup, settings, constructors, each
plugin's ``check_profile(profile)``, hook validation). ``open()`` calls the same two functions.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigError
from .registry import build_hook_caller, env_plugins

if TYPE_CHECKING:  # pragma: no cover
    from .profiles import Profile
    from .registry import HookCaller

__all__ = ["check_path", "check_profile"]

logger = logging.getLogger(__name__)


def check_path(profile: Profile) -> Profile:
    """``profile`` with its path made absolute and real; :class:`ConfigError` when ``open()``
    could not use it: a directory, a missing parent directory (corestore never creates one), a
    read-only profile whose file does not exist. ``:memory:`` passes as is; a PostgreSQL profile
    (``url``) gets the redacted URL as its path."""
    if profile.url:  # a PostgreSQL server: the store's name is the redacted URL, no file to check
        from .redact import redact_url

        named = redact_url(profile.url)
        return profile if profile.path == named else attrs.evolve(profile, path=named)
    path = profile.path
    if path == ":memory:":
        return profile
    path = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    try:
        mode: int | None = os.stat(path).st_mode
    except OSError:  # what os.path.isdir / os.path.exists answer False for
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise ConfigError(f"{path}: is a directory; give the path of a database file inside it")
    if mode is None:  # an existing file's parent directory exists: asked only when the file does not
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise ConfigError(f"{path}: parent directory {parent} does not exist; corestore does not create directories")
        if profile.read_only:
            raise ConfigError(f"{path}: read-only profile {profile.name!r}, but the file does not exist")
    # the same profile when its path is already the real one (evolve re-runs every converter and
    # validator of the profile: most of a cached open's cost)
    return profile if path == profile.path else attrs.evolve(profile, path=path)


def check_profile(profile: Profile, *, extra: Iterable[str] | None = None) -> tuple[Profile, HookCaller, dict[str, Any]]:
    """Every check ``open()`` makes short of opening the file: :func:`check_path`, then the
    plugins and their hooks (``extra`` defaults to ``$CORESTORE_PLUGINS``). Returns the checked
    profile, the hook caller and the plugin instances (unused by the CLI, which only checks)."""
    checked = check_path(profile)
    hooks, instances = build_hook_caller(checked, extra=env_plugins() if extra is None else extra)
    return checked, hooks, instances
