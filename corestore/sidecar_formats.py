"""The files the plugins write and the doctor and the CLI read: one definition of each format.

* **The quarantine marker** ``<db>.corestore-quarantine``: a JSON object (reason, time,
  classification, operation, evidence) that the ``quarantine`` plugin writes when a database
  shows real corruption, that every process opening the database reads, and that only
  ``corestore doctor --clear-quarantine`` removes. Created and read through
  :mod:`corestore.sidecar` (no symlinks, never another user's file, never the database).
* **The health snapshot**: the ``health`` plugin's :class:`~corestore.HealthReport` as JSON plus a
  ``snapshot`` key (schema, pid, host, time, ``closed``), written atomically so that
  ``corestore health`` and monitors read it without opening the database.

Both formats live in the core, not in the plugins, so the doctor and the CLI read them without
importing a plugin: there is one reader per format.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .fileio import atomic_write
from .health import HealthStatus
from .sidecar import create_temporary, open_sidecar, read_sidecar, sidecar_path, unlink_sidecar
from .timefmt import iso

__all__ = [
    "MARKER_SUFFIX",
    "MARKER_FORMAT",
    "marker_path",
    "read_marker",
    "write_marker",
    "clear_marker",
    "format_marker",
    "SNAPSHOT_SCHEMA",
    "resolve_snapshot_path",
    "read_snapshot",
    "write_snapshot",
]

logger = logging.getLogger(__name__)

#: The sidecar marker next to the database: ``<db>.corestore-quarantine``.
MARKER_SUFFIX = ".corestore-quarantine"
#: The ``format`` field of a marker written by this version.
MARKER_FORMAT = "corestore-quarantine/1"
#: Version of the snapshot file's layout (the ``snapshot.schema`` key).
SNAPSHOT_SCHEMA = 1


# -- the quarantine marker ------------------------------------------------------------------------
def _database_path(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def marker_path(path: str | os.PathLike[str]) -> str:
    """The marker file of the database at ``path``: always ``<resolved db path>.corestore-quarantine``
    (hashed when that name is too long, see :func:`corestore.sidecar.sidecar_path`).

    The database path is resolved like ``corestore.open`` resolves it (absolute, symlinks
    followed), so the doctor and the store agree on the sidecar. A path is always taken as the
    database, even one that ends in the marker suffix: the result is never ``path`` itself.
    """
    return sidecar_path(_database_path(path), MARKER_SUFFIX)


def _unreadable(target: str, error: str, raw: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"marker": target, "reason": "unreadable quarantine marker", "unreadable": True,
                              "error": error}
    if raw is not None:
        record["raw"] = raw
    return record


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The quarantine record of the database at ``path``, or None when it is not quarantined.

    A marker that exists but cannot be used (not UTF-8, not JSON, a symlink, another user's
    file) still means "quarantined": the record then says
    ``{"reason": "unreadable quarantine marker", "unreadable": True, "error": ...}``.
    """
    db = _database_path(path)
    target = marker_path(path)
    try:
        data = read_sidecar(target, db, limit=1 << 20)
    except OSError as err:
        return _unreadable(target, f"{type(err).__name__}: {err}")
    if data is None:
        return None
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return _unreadable(target, f"not UTF-8: {type(err).__name__}: {err}", data[:2000].decode("utf-8", "replace"))
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        return _unreadable(target, f"{type(err).__name__}: {err}", raw[:2000])
    record.setdefault("marker", target)
    return record


def write_marker(path: str | os.PathLike[str], record: Mapping[str, Any]) -> str:
    """Write ``record`` as the marker of the database at ``path`` atomically (an ``O_EXCL``
    temporary with the database's mode, fsync, rename, directory fsync); returns the marker path.
    Raises ``OSError`` on failure (:class:`corestore.sidecar.SidecarError` when the existing marker
    is not ours to replace)."""
    db = _database_path(path)
    target = marker_path(path)
    if os.path.lexists(target):  # never replace a planted symlink, another user's file or a database
        os.close(open_sidecar(target, db, os.O_RDONLY, create=False))
    data = json.dumps(dict(record), indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(target, data.encode("utf-8"), mode=None, temporary=lambda t: create_temporary(t, db),
                 directory_fsync_required=False)
    return target


def clear_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Remove the marker of the database at ``path``; returns the record it held (the evidence
    removed), or None when there was none. For ``corestore doctor --clear-quarantine``.

    Never removes the database: :func:`corestore.sidecar.unlink_sidecar` refuses the database's
    own path and any file that starts with the SQLite header (``SidecarError``)."""
    record = read_marker(path)
    if record is None:
        return None
    if not unlink_sidecar(marker_path(path), _database_path(path)):
        return None
    return record


def format_marker(record: Mapping[str, Any]) -> str:
    """A human-readable summary of a marker record (what the doctor shows before clearing)."""
    lines = [f"quarantined since {record.get('since', '?')}: {record.get('reason', '?')}"]
    for key in ("database", "marker", "pid", "host"):
        if record.get(key) is not None:
            lines.append(f"  {key}: {record[key]}")
    c = record.get("classification")
    if isinstance(c, Mapping):
        fields = ("kind", "name", "code", "extended_code", "source")
        lines.append("  classification: " + ", ".join(f"{k}={c[k]}" for k in fields if c.get(k) is not None))
        if c.get("message"):
            lines.append(f"  message: {c['message']}")
    op = record.get("operation")
    if isinstance(op, Mapping):
        keys = ("kind", "name", "attempt")
        lines.append("  operation: " + ", ".join(f"{k}={op[k]}" for k in keys if op.get(k) is not None))
    evidence = record.get("evidence")
    if isinstance(evidence, Mapping):
        for v in evidence.get("violations") or ():
            if isinstance(v, Mapping):
                lines.append(f"  violation {v.get('check')}: {v.get('message')}")
                if v.get("evidence"):
                    lines.append(f"    evidence: {json.dumps(v['evidence'], sort_keys=True, default=str)}")
        for key in ("server", "sqlstate", "diag", "files", "header"):  # server..diag: a PostgreSQL marker
            value = evidence.get(key)
            if value:
                shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
                lines.append(f"  {key}: {shown}")
    if record.get("unreadable"):
        lines.append(f"  marker unreadable: {record.get('error')}")
    return "\n".join(lines)


# -- the health snapshot ----------------------------------------------------------------------------
def resolve_snapshot_path(snapshot_path: str | None, db_path: str, config_dir: str | None = None) -> str | None:
    """The absolute snapshot file for ``snapshot_path``; None when unset. A relative path is
    relative to ``config_dir`` (the directory of the config file the profile came from, like the
    database's own ``path``), else, for a profile built in code, to the database's directory
    (``:memory:`` then needs an absolute path)."""
    if not snapshot_path:
        return None
    expanded = os.path.expanduser(snapshot_path)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    if config_dir:
        return os.path.normpath(os.path.join(config_dir, expanded))
    if db_path == ":memory:" or not db_path:
        raise ConfigError(
            f"settings.health: snapshot_path = {snapshot_path!r} is relative, but the database is "
            f"{db_path or '(no path)'!r}: use an absolute path"
        )
    return os.path.normpath(os.path.join(os.path.dirname(db_path), expanded))


def read_snapshot(path: str) -> dict[str, Any]:
    """Read and check a snapshot file; raises ``FileNotFoundError`` or ``ValueError``."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{path}: not a corestore health snapshot (invalid JSON: {err})") from None
    if (not isinstance(data, dict) or not isinstance(data.get("snapshot"), dict)
            or data["snapshot"].get("schema") != SNAPSHOT_SCHEMA
            or data.get("status") not in {s.value for s in HealthStatus}
            or not isinstance(data.get("components"), dict)):
        raise ValueError(f"{path}: not a corestore health snapshot (schema {SNAPSHOT_SCHEMA} expected)")
    return data


def write_snapshot(path: str, report: Mapping[str, Any], *, closed: bool = False, transitions: int = 0,
                   fsync: bool = True, mode: int = 0o644) -> None:
    """Write ``report`` (a :meth:`HealthReport.to_dict` document) to ``path`` as a snapshot: the
    report plus the ``snapshot`` key (schema, this process's pid and host, the time, ``closed``,
    ``transitions``), atomically (:func:`corestore.fileio.atomic_write`; ``mode`` 0644 by default: a monitor running
    as another user may read it, it holds no secrets). Raises ``OSError`` on failure."""
    data = dict(report)
    data["snapshot"] = {
        "schema": SNAPSHOT_SCHEMA,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "written_at": iso(time.time()),
        "closed": closed,
        "transitions": transitions,
    }
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode(), fsync=fsync, mode=mode)

