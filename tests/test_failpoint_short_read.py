"""The short-read experiment: what SQLITE_IOERR_SHORT_READ does here, on the main file vs the -wal.

The screenpipe incident (site/testing-faults.md) reports that SQLite "zero-fills and tolerates
short reads on read and write paths (an armed INSERT still commits)", so a short read cannot
reproduce a disk wedge. This experiment runs the same probes through both harnesses — apsw's
SQLite 3.54 over the failpoint VFS, and the stdlib's SQLite 3.40 over the preload shim, where
``pread`` really comes back short — with two shapes of short read: *partial* (the first half of
the page arrives, then end-of-file) and *eof* (nothing arrives). Both SQLite versions agree:

main database file
    A short read is taken for "past the end of the file": SQLite zero-fills the missing bytes and
    trusts them. *Partial*: the SELECT succeeds and returns a silently wrong value (the text ends
    at the first zero byte), and the INSERT commits without any error and writes the zero-filled
    page back — the other row on that page is damaged on disk for good, and ``integrity_check``
    still says "ok". *EOF*: the all-zero page is not a b-tree page, so SELECT and INSERT fail with
    SQLITE_CORRUPT (11) and nothing is written.
-wal file
    Not tolerated, whatever the shape: SELECT and INSERT fail with SQLITE_IOERR_SHORT_READ (522,
    "disk I/O error"), nothing is damaged, and the same connection reads correct data once the
    fault heals.

So: "tolerated" is true only of the main file, and there it is the most dangerous outcome, not a
benign one; a hard error (IOERR) is what makes a wedge visible. These tests assert exactly the
above, so a SQLite upgrade that changes it fails here first.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corestore_contrib.failpoint import PreloadFailpoint

VALUE = "x" * 3000  # one row filling most of one 4096-byte page: its tail lies in the page's second half
PROBE = f"SELECT v = '{VALUE}', length(v), instr(v, char(0)), (SELECT count(*) FROM t) FROM t WHERE id = 1"
INTACT = [1, 3000, 0, 1]  # the stored value, its length, no zero byte, one row
DAMAGED = [0, 952, 953, 1]  # a zero byte where the page's second half begins: length() stops there


def populate(conn: Any) -> None:
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t (id, v) VALUES (1, ?)", (VALUE,))


def attempt(conn: Any, sql: str) -> Any:
    """["ok", rows] or ["error", the extended SQLite code] (apsw and sqlite3 alike)."""
    try:
        return ["ok", [list(row) for row in conn.execute(sql).fetchall()]]
    except Exception as err:  # apsw.Error or sqlite3.Error
        return ["error", getattr(err, "sqlite_errorcode", None) or getattr(err, "extendedresult", None)]


def experiment(directory: str, connect: Callable[[str], Any], arm: Callable[[str, str], None],
               heal: Callable[[], None]) -> dict[str, Any]:
    """Every probe on a fresh file; ``arm(file, shape)`` arms short reads on "main" or "wal"."""
    out: dict[str, Any] = {}
    path = os.path.join(directory, "short.db")
    for file in ("main", "wal"):
        for shape in ("partial", "eof"):
            for what, sql in (("select", PROBE), ("insert", "INSERT INTO t (id, v) VALUES (2, 'y')")):
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.remove(path + suffix)
                holder = connect(path)
                populate(holder)
                if file == "main":
                    holder.close()  # last close: checkpointed into the main file, -wal removed
                conn = connect(path)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # page 1 and schema cached
                arm(file, shape)
                key = f"{file} {shape} {what}"
                out[key] = attempt(conn, sql)
                heal()
                if file == "wal":
                    out[key + ", same connection after heal"] = attempt(conn, PROBE)
                conn.close()
                if file == "wal":
                    holder.close()
                fresh = connect(path)
                out[key + ", file after"] = [attempt(fresh, PROBE), attempt(fresh, "PRAGMA integrity_check")]
                fresh.close()
    return out


def _row(probe: list[Any], rows: int) -> list[Any]:
    return ["ok", [probe[:3] + [rows]]]


EXPECTED = {
    # main file, partial page: silently wrong read; the write commits and damages row 1 for good
    "main partial select": _row(DAMAGED, 1),
    "main partial select, file after": [_row(INTACT, 1), ["ok", [["ok"]]]],
    "main partial insert": ["ok", []],
    "main partial insert, file after": [_row(DAMAGED, 2), ["ok", [["ok"]]]],
    # main file, nothing arrives: an all-zero page is "malformed"
    "main eof select": ["error", 11],
    "main eof select, file after": [_row(INTACT, 1), ["ok", [["ok"]]]],
    "main eof insert": ["error", 11],
    "main eof insert, file after": [_row(INTACT, 1), ["ok", [["ok"]]]],
    # -wal, either shape: a disk I/O error, no damage
    **{
        f"wal {shape} {what}{suffix}": value
        for shape in ("partial", "eof")
        for what in ("select", "insert")
        for suffix, value in (
            ("", ["error", 522]),
            (", same connection after heal", _row(INTACT, 1)),
            (", file after", [_row(INTACT, 1), ["ok", [["ok"]]]]),
        )
    },
}


def test_short_reads_through_the_failpoint_vfs(tmp_path: Path, failpoint: Any) -> None:
    apsw = pytest.importorskip("apsw")
    result = experiment(
        str(tmp_path),
        lambda path: apsw.Connection(path, vfs=failpoint.name),
        lambda file, shape: failpoint.arm(op="read", file=file, code="IOERR_SHORT_READ",
                                          short_fraction=0.5 if shape == "partial" else 0.0),
        failpoint.heal,
    )
    assert result == EXPECTED
    assert failpoint.counters.failed["read", "main"] >= 4 and failpoint.counters.failed["read", "wal"] >= 4


def child_experiment(directory: str) -> dict[str, Any]:
    control = PreloadFailpoint.from_env(database=os.path.join(directory, "short.db"))
    return experiment(
        directory,
        lambda path: sqlite3.connect(path, isolation_level=None),
        lambda file, shape: control.arm(op="read", file=file, errno="short" if shape == "partial" else "eof"),
        control.heal,
    )


def test_short_reads_through_the_preload_shim(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    result = preload_failpoint.run(child_experiment, args=[str(tmp_path)]).check()
    assert result.result == EXPECTED
    assert result.counters["failed"]["read"] >= 8  # every probe met a short pread
