"""wal_guard: WAL journal mode that is never silently lost, downgraded or mixed (site/plugins/wal_guard.md).

**When.** Enable it (the built-in ``default`` profile does) for every database that more than one
process, or more than one connection, uses: it owns the journal mode of the store.

**Why.** In hermes-agent a *transient* EIO on ``PRAGMA journal_mode=WAL`` made one process
fall back to ``DELETE`` while its siblings stayed in WAL; mixed journal modes corrupted the file.
The upstream fix still asked the connection (``PRAGMA journal_mode``) instead of the file header,
and never checked what SQLite actually set. Both lies are real: after a failed switch SQLite keeps
answering ``wal`` on that connection while bytes 18-19 of the file still say rollback journal, and
``PRAGMA journal_mode=WAL`` returns its row *before* the implicit COMMIT that writes the header, so
a caller that reads one row and stops never sees the I/O error. wal_guard therefore consumes the
whole statement and trusts the header, read through :func:`corestore.sqlitefile.read_header`
(never ``open()``/``close()`` of the database: that would drop the process's POSIX locks).

What it does on each new connection (``on_open``, ``tryfirst``, so the mode is settled before any
other plugin sees the connection):

1. A profile that enables wal_guard and also sets a ``journal_mode`` other than ``wal`` is a
   :class:`~corestore.ConfigError` naming both.
2. Read-only profiles never switch: the header must say WAL or the connection must report it.
3. Otherwise, if the connection reports ``wal`` *and* the header says WAL, nothing more. Else,
   under the core's cross-process init lock, ``PRAGMA journal_mode=WAL`` is run to completion and
   the returned mode checked (anything but ``wal`` is a clear error, e.g. an in-memory or
   immutable database), then the header is read again: it must say WAL.
4. Transient failures (the IOERR family, PROTOCOL, BUSY, and CANTOPEN as the core's table calls
   it: it may be EMFILE; decided by ``store.hooks.classify_error``) are retried with backoff and
   then raised: never downgraded. A permanent incompatibility
   (classification ``ENVIRONMENT``, e.g. SQLITE_AUTH "not authorized", or SQLITE_PROTOCOL on every
   attempt: a file system without WAL locking) downgrades to ``journal_mode=DELETE`` only when the
   profile sets ``fallback = "delete"`` and the header does not say WAL; otherwise it is an error
   that says what happened and what to do. An allowed downgrade logs one WARNING and makes the
   health component DEGRADED with the reason.
5. Every pragma the profile sets is read back and compared (:mod:`corestore_plugins._pragma_readback`
   lists the few that cannot be), and ``wal_autocheckpoint`` (1000 unless the profile sets it; 0
   when ``checkpoint_governor`` is enabled, which owns checkpoints); a mismatch is an error naming
   the pragma. Later changes are ``pragma_guard``'s business.

No close-time checkpoint: SQLite checkpoints and removes ``-wal`` on the last close by itself.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, ClassVar

import attrs

from corestore import (
    BusyError,
    Classification,
    ConfigError,
    ErrorKind,
    FatalError,
    HealthComponent,
    HealthStatus,
    Operation,
    StoreError,
    TransientError,
    hookimpl,
)
from corestore.settings import at_least_field, integer_at_least, non_negative_seconds, one_of
from corestore.sqlitefile import SqliteHeader, file_size, read_header

from ._pragma_readback import describe, expected_pragmas, read_back
from ._wal_guard_sql import (
    _RESYNC_SQL,
    _RETRIED,
    _classification,
    _describe_header,
    _is_core_cantopen,
    _is_database_error,
    _is_protocol,
    _mode,
)

__all__ = ["WalGuard", "DEFAULT_WAL_AUTOCHECKPOINT", "FALLBACK_MODES"]

logger = logging.getLogger(__name__)

#: ``wal_autocheckpoint`` wal_guard sets and verifies when the profile does not set one (pages).
DEFAULT_WAL_AUTOCHECKPOINT = 1000
#: Allowed values of the ``fallback`` setting.
FALLBACK_MODES = ("none", "delete")
_FALLBACK_MEANINGS = {"none": "never leave WAL: refuse the open",
                      "delete": "rollback-journal mode, only on a permanent WAL incompatibility of a file not yet in WAL"}

_GOVERNOR = "checkpoint_governor"  # when enabled it owns checkpoints: wal_autocheckpoint is 0, not 1000


class WalGuard:
    """Owns the journal mode of a store: WAL, verified against the file header, never silently
    downgraded (see the module docstring for the full rule).

    Settings (``[profiles.NAME.settings.wal_guard]``):

    | name | type | default | meaning |
    |---|---|---|---|
    | ``fallback`` | str | ``"none"`` | ``"none"``: a permanent WAL incompatibility refuses the open. ``"delete"``: the file runs in ``journal_mode=DELETE`` instead (loudly: WARNING, health DEGRADED), only if its header does not already say WAL. Set it only when every process that opens the file uses the same setting. |
    | ``switch_attempts`` | int | ``5`` | attempts at switching to WAL on transient failures (IOERR family, PROTOCOL, BUSY) before the open is refused; PROTOCOL on every attempt counts as permanent. |
    | ``backoff_base_s`` | float | ``0.05`` | delay after the first failed attempt; doubles per attempt, jittered (between half and all of it). |
    | ``backoff_max_s`` | float | ``1.0`` | ceiling of one delay between attempts (>= ``backoff_base_s``). |

    Pragmas verified on every connection: every pragma the profile's ``pragmas`` set (except the
    few :mod:`corestore_plugins._pragma_readback` cannot read back), and ``wal_autocheckpoint``
    (``1000`` unless the profile sets another value; ``0`` with ``checkpoint_governor``).

    State, also in the health component's details: :attr:`switched_by_this_process`,
    :attr:`switches`, :attr:`fallback` and :attr:`fallback_reason`.
    """  # noqa: E501 - a markdown table row cannot be wrapped (the settings table above)

    name: ClassVar[str] = "wal_guard"
    #: SQLite only: a PostgreSQL profile that lists it is refused at open (corestore.registry.check_engine)
    engines: ClassVar[tuple[str, ...]] = ("sqlite",)

    @attrs.frozen(kw_only=True)
    class Settings:
        """wal_guard's settings (see the class docstring's table)."""

        fallback: str = attrs.field(default="none", validator=one_of(*FALLBACK_MODES, meanings=_FALLBACK_MEANINGS), metadata={
            "help": "'none' refuses the open on a permanent WAL incompatibility; 'delete' runs the file in "
                    "rollback-journal mode instead (never a file whose header says WAL)"})
        switch_attempts: int = attrs.field(default=5, validator=integer_at_least(1), metadata={
            "help": "attempts at switching to WAL on transient failures (IOERR, PROTOCOL, BUSY) before refusing"})
        backoff_base_s: float = attrs.field(default=0.05, validator=non_negative_seconds, metadata={
            "help": "delay after the first failed switch attempt, doubled per attempt, jittered"})
        backoff_max_s: float = attrs.field(default=1.0, validator=attrs.validators.and_(
            non_negative_seconds, at_least_field("backoff_base_s")), metadata={
            "help": "ceiling of one delay between switch attempts"})

    def __init__(self, settings: WalGuard.Settings | None = None) -> None:
        self.settings = settings if settings is not None else WalGuard.Settings()
        self._lock = threading.Lock()
        self._switches = 0
        self._fallback_reason: str | None = None
        self._connection_mode: str | None = None
        self._connections_checked = 0
        self._expected: dict[str, int] | None = None

    # -- public state ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """This process's view, under one lock, no I/O: ``connection_mode`` (what the last checked
        connection runs), ``fallback`` (``"delete"`` while the rollback-journal fallback is in
        effect, else None), ``fallback_reason``, ``switched_by_this_process``, ``switches`` and
        ``connections_checked``. ``on_health`` adds the header's mode and the ``-wal`` size."""
        with self._lock:
            switches = self._switches
            reason = self._fallback_reason
            return {
                "connection_mode": self._connection_mode,
                "fallback": "delete" if reason is not None else None,
                "fallback_reason": reason,
                "switched_by_this_process": switches > 0,
                "switches": switches,
                "connections_checked": self._connections_checked,
            }

    @property
    def switches(self) -> int:
        """How many times this store switched the *file* from rollback journal to WAL."""
        with self._lock:
            return self._switches

    @property
    def switched_by_this_process(self) -> bool:
        """True when this store (in this process) is the one that switched the file to WAL."""
        return self.switches > 0

    @property
    def fallback(self) -> str | None:
        """``"delete"`` when the rollback-journal fallback is in effect for this store, else None."""
        with self._lock:
            return "delete" if self._fallback_reason is not None else None

    @property
    def fallback_reason(self) -> str | None:
        """Why the fallback is in effect (None when it is not)."""
        with self._lock:
            return self._fallback_reason

    # -- open ------------------------------------------------------------------------------
    @hookimpl(tryfirst=True)
    def on_open(self, store: Any, connection: Any) -> None:
        """Settle the journal mode of ``connection`` (WAL, or an allowed fallback) and verify the
        profile's pragmas; raise a :class:`~corestore.StoreError` that refuses the connection
        otherwise."""
        self._check_profile(store)
        if store.profile.read_only and not store.memory:
            mode = self._verify_read_only(store, connection)
        else:
            mode = self._ensure_wal(store, connection)
        self._verify_pragmas(store, connection)
        with self._lock:
            self._connection_mode = mode
            self._connections_checked += 1

    def _check_profile(self, store: Any) -> None:
        wanted = store.profile.pragmas.get("journal_mode")
        if wanted is not None and str(wanted).lower() != "wal":
            raise ConfigError(
                f"{store.profile.origin}: pragmas.journal_mode = {wanted!r} conflicts with plugin 'wal_guard', which "
                f"owns the journal mode and runs only WAL (profile {store.profile.name!r}). Remove journal_mode from "
                f"the profile, or disable wal_guard (disable = [\"wal_guard\"]) to run journal_mode={wanted}.",
                path=store.path,
            )

    def _header(self, store: Any) -> SqliteHeader | None:
        if store.memory:
            return None
        return read_header(store.path)

    # -- read-only ---------------------------------------------------------------------------
    def _verify_read_only(self, store: Any, conn: Any) -> str:
        mode = _mode(conn)
        header = self._header(store)
        if mode == "wal" or (header is not None and header.is_wal):
            return mode
        raise FatalError(
            f"{store.path}: read-only profile {store.profile.name!r}: the file is not in WAL mode "
            f"({_describe_header(header)}; the connection reports journal_mode={mode!r}), and wal_guard never "
            "switches the journal mode from a read-only store. Open it once with a read-write profile that "
            "enables wal_guard to switch it to WAL, or disable wal_guard for this read-only profile.",
            classification=_classification(ErrorKind.ENVIRONMENT, "WAL_REQUIRED",
                                            f"read-only store on a file in journal_mode={mode}"),
            committed=False, path=store.path,
        )

    # -- read-write: the switch ----------------------------------------------------------------
    def _ensure_wal(self, store: Any, conn: Any) -> str:
        s = self.settings
        op = Operation(kind="open", name="wal_guard.switch")
        failures: list[Classification] = []
        last_error: BaseException | None = None
        for attempt in range(1, s.switch_attempts + 1):
            try:
                return self._attempt(store, conn, resync=attempt > 1)
            except StoreError:
                raise  # wal_guard's own verdict (refused, not persisted, mixed): never retried
            except Exception as err:
                if not _is_database_error(err):
                    raise
                c = store.hooks.classify_error(store, err, op)
                if c.kind is ErrorKind.ENVIRONMENT and not _is_core_cantopen(c):
                    return self._permanent(store, conn, err, c, f"{c.name or c.kind.name}: {c.message}")
                if c.kind not in _RETRIED and not _is_core_cantopen(c):
                    raise  # not about WAL (CORRUPT, FULL, READONLY ...): the core classifies and raises it
                failures.append(c)
                last_error = err
                logger.debug("%s: WAL switch attempt %d/%d failed: %s", store.path, attempt, s.switch_attempts, c.name)
                if attempt < s.switch_attempts:
                    delay = min(s.backoff_max_s, s.backoff_base_s * (2 ** (attempt - 1)))
                    time.sleep(random.uniform(delay / 2, delay))
        assert last_error is not None
        if all(_is_protocol(c) for c in failures):
            c = attrs.evolve(failures[-1], kind=ErrorKind.ENVIRONMENT, retryable=False, reopen=False,
                             trips_breaker=True, source=self.name)
            reason = (f"SQLITE_PROTOCOL on each of {len(failures)} attempts: the file system does not support "
                      "WAL's shared-memory locking (e.g. NFS)")
            return self._permanent(store, conn, last_error, c, reason)
        raise self._transient_error(store, failures) from last_error

    def _attempt(self, store: Any, conn: Any, *, resync: bool) -> str:
        if resync:
            # After a failed switch SQLite may keep answering 'wal' on this connection although the
            # header never changed; a read makes the pager look at the file again.
            conn.execute(_RESYNC_SQL).fetchall()
        mode = _mode(conn)
        if mode == "wal":
            header = self._header(store)
            if header is not None and header.is_wal:
                self._clear_fallback(store)
                return "wal"  # SQLite reports WAL and the file agrees: nothing more to do
        if self.fallback is not None:
            return self._fallback_connection(store, conn)
        with store.init_lock():
            before = self._header(store)
            got = _mode(conn, "PRAGMA journal_mode=WAL")
            after = self._header(store)
        if got != "wal":
            raise self._refused(store, got)
        if not store.memory and (after is None or not after.is_wal):
            raise FatalError(
                f"{store.path}: SQLite answered journal_mode=wal, but the file does not say WAL "
                f"({_describe_header(after)}). wal_guard trusts the file, not the connection: the open is "
                "refused and the file left as it is. Run `corestore doctor PATH` and open it again.",
                classification=_classification(ErrorKind.ENVIRONMENT, "WAL_NOT_PERSISTED",
                                                "journal_mode=wal returned, header not WAL"),
                committed=False, path=store.path,
            )
        if before is None or not before.is_wal:
            with self._lock:
                self._switches += 1
            logger.info("%s: switched the file from rollback journal to WAL journal mode", store.path)
        return "wal"

    def _refused(self, store: Any, got: str) -> StoreError:
        if store.memory or got == "memory":
            why = ("an in-memory database has no file for a write-ahead log; open it with profile='minimal' "
                   "(no wal_guard) or give a file path")
        else:
            why = ("the database is immutable or read-only to SQLite, or its VFS has no shared-memory "
                   "support; open it with a read-only profile, fix the VFS, or disable wal_guard for it")
        return FatalError(
            f"{store.path}: this database cannot use WAL journal mode: PRAGMA journal_mode=WAL returned "
            f"{got!r} (SQLite kept its old mode). wal_guard never takes a silent refusal for success: {why}.",
            classification=_classification(ErrorKind.ENVIRONMENT, "WAL_REFUSED", f"journal_mode=WAL returned {got}"),
            committed=False, path=store.path,
        )

    def _transient_error(self, store: Any, failures: list[Classification]) -> StoreError:
        last = failures[-1]
        names = ", ".join(dict.fromkeys(c.name or c.kind.name for c in failures))
        header = self._header(store)
        cls = {ErrorKind.BUSY: BusyError, ErrorKind.TRANSIENT_IO: TransientError}.get(last.kind, FatalError)
        return cls(
            f"{store.path}: switching to WAL journal mode failed on all {len(failures)} attempts ({names}; last: "
            f"{last.message}). A transient failure is never a reason to leave WAL, so the open is refused and the "
            f"file is left as it is ({_describe_header(header)}). Open it again later; if it keeps failing, "
            "check the device and run `corestore doctor PATH`.",
            classification=last, committed=False, path=store.path,
        )

    # -- permanent incompatibility ------------------------------------------------------------
    def _permanent(self, store: Any, conn: Any, err: BaseException, c: Classification, reason: str) -> str:
        with store.init_lock():
            header = self._header(store)
            if header is not None and header.is_wal:
                raise FatalError(
                    f"{store.path}: WAL failed with what looks permanent ({reason}), but the file is already in "
                    f"WAL mode ({_describe_header(header)}): other processes use it as WAL, and downgrading it "
                    "would mix journal modes and corrupt it. wal_guard refuses (fallback never applies to a WAL "
                    "file); the file is unchanged. Fix the environment (permissions, file system, -shm/-wal "
                    "files) and open it again; `corestore doctor PATH` shows the state.",
                    classification=attrs.evolve(c, source=self.name),
                    committed=False, path=store.path,
                ) from err
            if self.settings.fallback != "delete":
                raise FatalError(
                    f"{store.path}: this database cannot use WAL journal mode here ({reason}). wal_guard never "
                    f"downgrades unless the profile allows it; the file is unchanged ({_describe_header(header)}). "
                    "Move the database to a local file system, or, if every process that opens this file uses "
                    f"the same setting, set fallback = \"delete\" in [profiles.{store.profile.name}.settings.wal_guard].",
                    classification=attrs.evolve(c, source=self.name),
                    committed=False, path=store.path,
                ) from err
            mode = self._downgrade(store, conn, reason, err)
        self._note_fallback(store, reason)
        return mode

    def _downgrade(self, store: Any, conn: Any, reason: str, cause: BaseException | None) -> str:
        """Called under the init lock with a header that does not say WAL."""
        try:
            conn.execute(_RESYNC_SQL).fetchall()  # forget a 'wal' the failed switch left in memory
            got = _mode(conn, "PRAGMA journal_mode=DELETE")
        except Exception as err:
            if not _is_database_error(err):
                raise
            raise FatalError(
                f"{store.path}: WAL is not possible here ({reason}) and the allowed fallback to "
                f"journal_mode=DELETE failed too ({type(err).__name__}: {err}); the open is refused.",
                classification=_classification(ErrorKind.ENVIRONMENT, "WAL_FALLBACK_FAILED", str(err)),
                committed=False, path=store.path,
            ) from cause
        header = self._header(store)
        if got != "delete" or (header is not None and header.is_wal):
            raise FatalError(
                f"{store.path}: WAL is not possible here ({reason}) and the fallback did not take: "
                f"PRAGMA journal_mode=DELETE returned {got!r} ({_describe_header(header)}); the open is refused.",
                classification=_classification(ErrorKind.ENVIRONMENT, "WAL_FALLBACK_FAILED", f"returned {got}"),
                committed=False, path=store.path,
            ) from cause
        return "delete"

    def _fallback_connection(self, store: Any, conn: Any) -> str:
        """A further connection of a store whose fallback is in effect: no new switch attempts
        (the incompatibility is permanent), but the header is checked again under the lock."""
        with store.init_lock():
            header = self._header(store)
            if header is not None and header.is_wal:
                with self._lock:
                    reason = self._fallback_reason
                raise FatalError(
                    f"{store.path}: this store runs the rollback-journal fallback ({reason}), but the file is now "
                    f"in WAL mode ({_describe_header(header)}): another process switched it. Mixing journal "
                    "modes corrupts the file, so this connection is refused; reopen the store.",
                    classification=_classification(ErrorKind.ENVIRONMENT, "WAL_MIXED", "fallback store, WAL header"),
                    committed=False, path=store.path,
                )
            with self._lock:
                reason = self._fallback_reason or ""
            return self._downgrade(store, conn, reason, None)

    def _note_fallback(self, store: Any, reason: str) -> None:
        with self._lock:
            first = self._fallback_reason is None
            if first:
                self._fallback_reason = reason
        if first:
            logger.warning(
                "%s: WAL is not possible here (%s); fallback = 'delete' allows rollback-journal mode: running "
                "journal_mode=DELETE, health DEGRADED. Every process opening this file must use the same setting.",
                store.path, reason,
            )

    def _clear_fallback(self, store: Any) -> None:
        with self._lock:
            reason, self._fallback_reason = self._fallback_reason, None
        if reason is not None:
            logger.warning(
                "%s: the file is in WAL mode again (another process switched it); the rollback-journal "
                "fallback (%s) is no longer in effect for new connections", store.path, reason,
            )

    # -- pragmas -----------------------------------------------------------------------------
    def _expected_pragmas(self, store: Any) -> dict[str, Any]:
        if self._expected is None:
            self._expected = expected_pragmas(store, wal_guard_defaults=True)
        return self._expected

    def _verify_pragmas(self, store: Any, conn: Any) -> None:
        """Read back every pragma the profile sets (:mod:`corestore_plugins._pragma_readback`)."""
        expected = self._expected_pragmas(store)
        if _GOVERNOR in store.plugins:
            conn.execute("PRAGMA wal_autocheckpoint = 0").fetchall()
        elif "wal_autocheckpoint" not in store.profile.pragmas:
            conn.execute(f"PRAGMA wal_autocheckpoint = {DEFAULT_WAL_AUTOCHECKPOINT}").fetchall()
        for name, want, got in read_back(conn, expected):
            asked = store.profile.pragmas.get(name, want)
            raise FatalError(
                f"{store.path}: PRAGMA {name} reads back {got!r}, but profile {store.profile.name!r} sets "
                f"{name} = {asked!r} (expected {describe(name, want)}). Something changed it on this connection after the "
                "core applied it (another plugin's on_open, the application), or this SQLite does not accept "
                f"the value; the connection is refused.",
                classification=_classification(ErrorKind.ENVIRONMENT, "PRAGMA_MISMATCH",
                                                f"{name}: expected {want}, read back {got}"),
                committed=False, path=store.path,
            )

    # -- health ------------------------------------------------------------------------------
    @hookimpl
    def on_health(self, store: Any) -> HealthComponent:
        """Journal mode in the header and on the connections, fallback, ``-wal`` size.

        The only I/O: one ``pread`` of the 100-byte header through the process-wide descriptor and
        one ``stat`` of ``-wal``; no SQLite call.
        """
        st = self.stats()
        reason, connection_mode, checked = st["fallback_reason"], st["connection_mode"], st["connections_checked"]
        details: dict[str, Any] = {"header_mode": None, **st, "wal_bytes": None}
        if store.memory:
            return HealthComponent(name=self.name, status=HealthStatus.UNKNOWN,
                                   summary="in-memory database: no journal file", details=details)
        try:
            header = read_header(store.path)
            details["wal_bytes"] = file_size(store.path + "-wal") or 0
        except OSError as err:
            details["header_error"] = f"{type(err).__name__}: {err.strerror or err}"
            return HealthComponent(name=self.name, status=HealthStatus.UNKNOWN,
                                   summary="cannot read the database header", details=details)
        header_mode = header.journal_mode if header is not None else None
        details["header_mode"] = header_mode
        if reason is not None:
            status, summary = HealthStatus.DEGRADED, f"rollback-journal fallback (journal_mode=DELETE) in effect: {reason}"
        elif header_mode == "rollback" and connection_mode == "wal":
            status = HealthStatus.DOWN
            summary = ("the file header says rollback journal but this store runs WAL: another process changed "
                       "the journal mode (mixed modes corrupt the file)")
        elif header_mode == "wal":
            status, summary = HealthStatus.UP, "WAL (file header and connections)"
        else:
            status, summary = HealthStatus.UNKNOWN, "no connection checked yet" if checked == 0 else "no database header yet"
        return HealthComponent(name=self.name, status=status, summary=summary, details=details)
