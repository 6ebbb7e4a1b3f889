"""quarantine's helpers: the ``kinds`` setting's converter and the evidence a marker records
(moved verbatim out of ``quarantine.py``)."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from corestore import ErrorKind
from corestore.errors import ConfigError, StoreError
from corestore.sqlitefile import file_size, read_header

__all__ = ["gather_evidence"]

logger = logging.getLogger(__name__)

_FAULT_KINDS = tuple(k.name for k in ErrorKind if k not in (ErrorKind.BUSY, ErrorKind.CONSTRAINT,
                                                             ErrorKind.PROGRAMMING, ErrorKind.UNKNOWN))


def _kinds_converter(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, ErrorKind)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise ConfigError(f"kinds = {value!r} must be a list of error kinds; allowed: {', '.join(_FAULT_KINDS)}")
    out = []
    for item in value:
        name = item.name if isinstance(item, ErrorKind) else str(item).strip().upper()
        if name not in _FAULT_KINDS:
            raise ConfigError(f"kinds: {item!r} is not a fault kind on_fatal reports; "
                              f"allowed: {', '.join(_FAULT_KINDS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"kinds must name at least one kind; allowed: {', '.join(_FAULT_KINDS)}")
    return tuple(out)


def _size(path: str) -> int | None:
    """Evidence only: the file's size, None when it is missing or cannot be read."""
    try:
        return file_size(path)
    except StoreError:
        return None


def gather_evidence(store: Any, error: BaseException) -> dict[str, Any]:
    """What a marker records about the fault: the error, invariant violations, the files' sizes
    and the database header (evidence only: whatever cannot be read is left out or None)."""
    evidence: dict[str, Any] = {"error_type": type(error).__name__, "error": str(error)[:1000]}
    violations = getattr(error, "violations", None)
    if violations:
        evidence["violations"] = [
            {"check": v.check, "message": v.message, "evidence": dict(v.evidence)} for v in violations
        ]
    if not store.memory:
        path = store.path
        evidence["files"] = {"database_bytes": _size(path), "wal_bytes": _size(path + "-wal"),
                             "shm_bytes": _size(path + "-shm"), "journal_bytes": _size(path + "-journal")}
        try:
            header = read_header(path)
        except OSError:
            header = None
        if header is not None:
            evidence["header"] = {"journal_mode": header.journal_mode, "page_size": header.page_size,
                                  "page_count": header.page_count, "change_counter": header.change_counter,
                                  "page_count_valid": header.version_valid_for == header.change_counter}
    return evidence
