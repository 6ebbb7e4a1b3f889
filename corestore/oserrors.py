"""The errno table: what an ``OSError`` from the core's own I/O means, in SQLite's terms.

The core reads a few things outside SQLite (the database header through a process-lifetime
descriptor, file sizes through ``os.stat``: see :mod:`corestore.sqlitefile`). A failure there is
the same failure SQLite would have reported had it done the read, so it gets the same
:class:`~corestore.ErrorKind`, the same retry / breaker / reopen flags (``FLAGS_BY_KIND``) and the
same exception class as SQLite's own errors, never a raw ``OSError``:

=================================================  =============  ================  ===========
errno                                              kind           SQLite code       exception
=================================================  =============  ================  ===========
EIO, ENXIO, ESTALE, ENODEV, anything not below     FATAL_IO       IOERR_READ /      FatalError
                                                                  IOERR_FSTAT
ENOSPC, EDQUOT, EFBIG                              FULL           FULL              FatalError
EMFILE, ENFILE, ENOMEM (out of descriptors)        ENVIRONMENT    CANTOPEN          FatalError
ENOTDIR, ELOOP, EISDIR, ENAMETOOLONG               ENVIRONMENT    CANTOPEN          FatalError
EACCES, EPERM, EROFS                               READONLY       READONLY          FatalError
EINTR, EAGAIN                                      TRANSIENT_IO   IOERR_READ /      TransientError
                                                                  IOERR_FSTAT
=================================================  =============  ================  ===========

EMFILE/ENFILE are CANTOPEN as in SQLite's own table, so whoever retries CANTOPEN briefly at open
(``wal_guard``) retries these the same way. The exception raised is also an ``OSError`` (with
``errno``, ``strerror`` and ``filename`` of the original), so code that caught ``OSError`` from
these helpers keeps working; its ``__cause__`` is the original error.
"""
from __future__ import annotations

import errno as _errno
import logging
from collections.abc import Mapping
from types import MappingProxyType

from .classify import FLAGS_BY_KIND, code_name
from .errors import Classification, CorruptionError, ErrorKind, FatalError, StoreError, TransientError

__all__ = ["KIND_BY_ERRNO", "classify_os_error", "os_store_error"]

logger = logging.getLogger(__name__)


def _errnos(*names: str) -> list[int]:
    return [getattr(_errno, n) for n in names if hasattr(_errno, n)]


#: The kind of each errno the table names; any other errno is FATAL_IO.
KIND_BY_ERRNO: Mapping[int, ErrorKind] = MappingProxyType({
    **{e: ErrorKind.FULL for e in _errnos("ENOSPC", "EDQUOT", "EFBIG")},
    **{e: ErrorKind.ENVIRONMENT for e in _errnos("EMFILE", "ENFILE", "ENOMEM", "ENOTDIR", "ELOOP", "EISDIR",
                                                  "ENAMETOOLONG")},
    **{e: ErrorKind.READONLY for e in _errnos("EACCES", "EPERM", "EROFS")},
    **{e: ErrorKind.TRANSIENT_IO for e in _errnos("EINTR", "EAGAIN")},
})

# The SQLite code each kind stands for, by what the core was doing (read or stat).
_IOERR_READ, _IOERR_FSTAT, _FULL, _CANTOPEN, _READONLY = 266, 1802, 13, 14, 8
_CODE = {ErrorKind.FULL: _FULL, ErrorKind.ENVIRONMENT: _CANTOPEN, ErrorKind.READONLY: _READONLY}

_ADVICE = {
    ErrorKind.FATAL_IO: "the disk reported an I/O error; check the device and the kernel log (`corestore doctor PATH`)",
    ErrorKind.FULL: "the disk is full; free space, then retry",
    ErrorKind.ENVIRONMENT: "the environment refuses this file (descriptors exhausted, a path component is not a "
                           "directory); check ulimit -n and the path",
    ErrorKind.READONLY: "the file or its directory is not readable/writable by this process",
    ErrorKind.TRANSIENT_IO: "an interrupted system call; retry",
}

_classes: dict[type[StoreError], type[StoreError]] = {}


def _message(self: BaseException) -> str:
    return str(self.args[0]) if self.args else ""


def _class_for(kind: ErrorKind) -> type[StoreError]:
    base: type[StoreError] = {ErrorKind.TRANSIENT_IO: TransientError, ErrorKind.CORRUPT: CorruptionError}.get(
        kind, FatalError)
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(base.__name__, (base, OSError), {
            "__doc__": f"{base.__name__} from the core's own I/O (also an OSError: errno, strerror, filename).",
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__str__": _message,  # the store's message, not OSError's "[Errno 5] ..."
        })
    return cls


def classify_os_error(err: OSError, *, stat: bool = False) -> Classification:
    """The :class:`~corestore.Classification` of ``err`` (``stat``: it came from ``os.stat``/
    ``fstat`` rather than a read), as SQLite's own error for that failure would be classified."""
    number = err.errno if isinstance(err.errno, int) else _errno.EIO
    kind = KIND_BY_ERRNO.get(number, ErrorKind.FATAL_IO)
    code = _CODE.get(kind, _IOERR_FSTAT if stat else _IOERR_READ)
    flags = FLAGS_BY_KIND[kind]
    name = _errno.errorcode.get(number, f"errno {number}")
    return Classification(
        kind=kind, code=code & 0xFF, extended_code=code, name=f"{code_name(code)} ({name})",
        message=f"{name}: {err.strerror or err}"[:200], retryable=flags.retryable,
        trips_breaker=flags.trips_breaker, reopen=flags.reopen, source="core",
    )


def os_store_error(err: OSError, path: str, what: str, *, stat: bool = False) -> StoreError:
    """The exception to raise for ``err``, raised while doing ``what`` on ``path``: the store's
    exception class for its kind (``FatalError``, ``TransientError``), also an ``OSError``.
    Raise it ``from err``."""
    c = classify_os_error(err, stat=stat)
    exc = _class_for(c.kind)(
        f"{path}: {c.name}: {what} failed: {c.message}; not committed; {_ADVICE.get(c.kind, '')}",
        classification=c, committed=False, path=path,
    )
    exc.errno, exc.strerror, exc.filename = err.errno, err.strerror, err.filename  # type: ignore[attr-defined]
    return exc
