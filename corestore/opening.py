"""Opening stores: ``corestore.open()``, the process-wide cache, driver claims, fork reset.

The same real path under the same resolved profile value is one :class:`~corestore.Store` per
process: :func:`open` shares it (one more reference) and creates it exactly once, however many
threads race (a lock per cache key). A file is opened through one driver at a time in a process
(:func:`_claim_driver`: the drivers' locks do not see each other). In a forked child the cache
and the stores' locks start afresh (:func:`_after_fork_in_child`); which files the child may use
is :mod:`corestore.forking`'s decision.

The cache is deliberately process-wide state, each part behind :data:`_cache_lock`.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import opengate
from .check import check_path
from .database import forget_connection
from .errors import ConfigError
from .profiles import Config, Profile, load_config, resolve_profile, with_overrides
from .redact import is_server_url

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

__all__ = ["open", "open_stores", "release", "looks_like_bare_name"]

logger = logging.getLogger(__name__)

_cache: dict[tuple[str, Profile], Store] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, Profile], threading.Lock] = {}
_drivers: dict[str, tuple[str, int]] = {}  # real path -> (driver, open stores)
_all_stores: set[Store] = set()


def looks_like_bare_name(target: str) -> bool:
    return os.sep not in target and "/" not in target and not os.path.splitext(target)[1]


def _resolve(target: str | os.PathLike[str] | Profile, profile: str | None, config: str | os.PathLike[str] | None,
             enable: Iterable[str] = (), disable: Iterable[str] = (), settings: Mapping[str, Any] | None = None) -> Profile:
    cfg: Config | None = load_config(config)
    if isinstance(target, Profile):
        if profile is not None:
            raise ConfigError("corestore.open(Profile(...)): pass either a Profile or profile=, not both")
        if not target.path and not target.url:
            raise ConfigError("corestore.open(Profile(...)): the profile has no path (or url)")
        resolved = target
    else:
        name = os.fspath(target)
        binding = cfg.databases.get(name) if cfg else None
        if binding is not None:
            resolved = resolve_profile(profile or binding.profile, config=cfg, path=binding.path, binding=binding)
        elif is_server_url(name):  # a PostgreSQL server (default profile: the built-in "postgresql")
            resolved = resolve_profile(profile or "postgresql", config=cfg, path=name)
        elif name == ":memory:":
            resolved = resolve_profile(profile or "default", config=cfg, path=name)
        elif looks_like_bare_name(name):
            where = cfg.source if cfg else "no config file (pass config= or set CORESTORE_CONFIG)"
            known = ", ".join(sorted(cfg.databases)) if cfg and cfg.databases else "(none)"
            raise ConfigError(
                f"{where}: {name!r} is not bound in [databases] (bound: {known}); a bare name must be bound, "
                f"a file path needs a directory or a suffix (e.g. './{name}.db')"
            )
        else:
            resolved = resolve_profile(profile or "default", config=cfg, path=name)
    if enable or disable or settings:
        resolved = with_overrides(resolved, enable=enable, disable=disable, settings=settings)
    return check_path(resolved)


def release(store: Store) -> bool:
    """``store.close()``: release one reference. True when it was the last one (the store is then
    marked closed, out of the cache and the driver claims; the caller closes it), else False."""
    with _cache_lock:
        if store._closed:
            return False
        store._refs -= 1
        if store._refs > 0:
            return False
        store._closed = True
        if store._key is not None and _cache.get(store._key) is store:
            del _cache[store._key]
        _release_driver(store)
        _all_stores.discard(store)
    return True


def _claim_driver(store: Store) -> None:
    if store.memory or store.profile.url:
        return
    current = _drivers.get(store.path)
    if current is not None and current[0] != store.profile.driver:
        raise ConfigError(
            f"{store.path}: already open in this process through driver {current[0]!r}; refusing driver "
            f"{store.profile.driver!r} (their locks do not see each other: two drivers on one file can corrupt it)"
        )
    _drivers[store.path] = (store.profile.driver, (current[1] if current else 0) + 1)


def _release_driver(store: Store) -> None:
    current = _drivers.get(store.path)
    if current is not None:
        if current[1] <= 1:
            del _drivers[store.path]
        else:
            _drivers[store.path] = (current[0], current[1] - 1)


def open(  # noqa: A001 - the public name is fixed by the design
    target: str | os.PathLike[str] | Profile,
    *,
    profile: str | None = None,
    config: str | os.PathLike[str] | None = None,
    setup: Callable[[Store], Any] | None = None,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Store:
    """Open (or share) the store for ``target``: a path, a name bound in ``[databases]``, or a
    :class:`Profile`.

    The same real path with the same resolved profile returns the same store (one more
    reference). ``setup(store)`` runs once per store, under the init lock; a second open of a
    cached store with a different ``setup`` is a :class:`ConfigError`. The first connection is
    opened here, so a wrong file or journal mode fails now, not at the first write.

    ``enable``, ``disable`` and ``settings`` compose on top of the profile in code, exactly like a
    profile table's keys of the same names: ``enable`` appends plugins, ``disable`` removes them,
    ``settings`` merges key by key into each plugin's table. ``on_store_open`` hooks run once the
    first connection is ready, before ``setup``.
    """
    resolved = _resolve(target, profile, config, enable, disable, settings)
    opengate.check(resolved)  # e.g. an open circuit breaker for this file: refused, nothing touched
    key = (resolved.path, resolved)
    cacheable = resolved.path != ":memory:"
    if cacheable:
        with _cache_lock:
            key_lock = _key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with _cache_lock:
                store = _cache.get(key)
                if store is not None:
                    if setup is not None and store._setup is not None and setup is not store._setup:
                        raise ConfigError(
                            f"{resolved.path}: already open with setup={store._setup!r}; a second open passed a "
                            f"different setup={setup!r} (one store runs one setup)"
                        )
                    if setup is not None and store._setup is None:
                        raise ConfigError(f"{resolved.path}: already open without setup; a second open passed setup={setup!r}")
                    store._refs += 1
                    return store
            return _create(resolved, setup, key)
    return _create(resolved, setup, None)


def _create(resolved: Profile, setup: Callable[[Store], Any] | None, key: Any) -> Store:
    from .store import Store  # store.py imports this module

    store = Store(resolved, setup=setup, key=key)
    with _cache_lock:
        _claim_driver(store)
    try:
        store._open_operation()
        store.hooks.on_store_open(store)
        if setup is not None:
            with store.init_lock():
                setup(store)
    except BaseException:
        with _cache_lock:
            _release_driver(store)
        store._key = None
        store._refs = 1
        store.close()
        raise
    with _cache_lock:
        if key is not None:
            _cache[key] = store
        _all_stores.add(store)
    return store


def open_stores() -> list[Store]:
    """Every store open in this process (for the CLI and tests)."""
    with _cache_lock:
        return list(_all_stores)


def _after_fork_in_child() -> None:
    global _cache_lock
    _cache_lock = threading.Lock()
    _key_locks.clear()
    stores = list(_all_stores)
    _cache.clear()
    for store in stores:
        store._lock = threading.Lock()
        store._stats_lock = threading.Lock()
        store._health_lock = threading.RLock()
        store._probe_lock = threading.Lock()
        store._fault_scope = threading.local()
        # corestore.forking already decided which files this child refuses and forgot (never
        # closed) every inherited connection
        if store._anchor is not None:
            forget_connection(store._anchor)


os.register_at_fork(after_in_child=_after_fork_in_child)
