"""Profiles: the per-database policy (plugins, their settings, pragmas, retry budget), and the
TOML configuration that names them.

This module is the face: the value types live in :mod:`corestore.profile_model`, loading and
resolving configuration in :mod:`corestore.profile_config`; import either from here.

A :class:`Profile` is frozen, deeply immutable and hashable, so ``attrs.evolve(profile, ...)``
gives a new one and the store cache keys on the value. Configuration is read only from the
``config=`` argument or the ``CORESTORE_CONFIG`` variable: the library never looks in the working
directory (a service must not behave differently depending on where it was started).

Resolution rules (also on the site's profile reference):

* a profile with ``extends`` starts from its parent; one named like a built-in (``default``,
  ``minimal``) without ``extends`` starts from that built-in; any other starts empty;
* ``plugins`` replaces the inherited list, then ``enable`` appends and ``disable`` removes;
* ``pragmas``, ``retry`` and each plugin's ``settings`` table merge key by key;
* ``[databases.NAME]`` binds a name to a ``path`` (relative paths are relative to the config
  file's directory, never the working directory), a ``profile`` (default ``"default"``) and the
  same override keys as a profile.
"""
from __future__ import annotations

from .profile_config import ENV_CONFIG, MAX_CONFIG_DEPTH, Binding, Config, load_config, resolve_profile, with_overrides

# the pragma tables the docs build renders (site/_hooks.py reads them from here)
from .profile_model import (  # noqa: F401
    _BOOL_PRAGMAS,
    _ENUM_PRAGMAS,
    _INT_PRAGMA_RANGES,
    _INT_PRAGMAS,
    _MITIGATE_BY_DEFAULT,
    BUILTIN_PROFILES,
    DEFAULT_PLUGINS,
    DRIVERS,
    KNOWN_PRAGMAS,
    WAL_RESET_MITIGATION,
    Profile,
    RetryPolicy,
    validate_pragma,
)

__all__ = [
    "Profile",
    "RetryPolicy",
    "Config",
    "Binding",
    "BUILTIN_PROFILES",
    "DEFAULT_PLUGINS",
    "WAL_RESET_MITIGATION",
    "DRIVERS",
    "KNOWN_PRAGMAS",
    "MAX_CONFIG_DEPTH",
    "load_config",
    "resolve_profile",
    "validate_pragma",
    "ENV_CONFIG",
    "with_overrides",
]
