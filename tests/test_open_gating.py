"""The breaker gates ``open()`` and the core's own I/O is classified (issue 15, items 5 and 6).

Real faults through the LD_PRELOAD failpoint (``pread`` of the main file fails with EIO in a
child process running the stdlib driver); the shim's counters say how often SQLite (or the core)
touched the file.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import corestore
from corestore import ErrorKind, Profile
from corestore.oserrors import KIND_BY_ERRNO, classify_os_error, os_store_error
from corestore.sqlitefile import read_header
from corestore_contrib.failpoint import PreloadFailpoint, preload_counters

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload failpoint needs Linux")


def make_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def touched() -> int:
    """Opens and reads of the database's files seen by the shim so far."""
    counters = preload_counters()
    assert counters is not None, "the shim is not loaded"
    return counters["seen"]["open"] + counters["seen"]["read"]


# -- child side -----------------------------------------------------------------------------------
def child_open_run_close_loop(path: str, seconds: float) -> dict[str, Any]:
    """The connection-cache incident's service: ``open(); run(); close()`` every 10 ms while
    every read of the main file fails with EIO."""
    control = PreloadFailpoint.from_env(database=path)
    control.arm(op="read", file="main", errno="EIO")
    outcomes: dict[str, int] = {}
    first_refusal_at: int | None = None
    touched_at_first_refusal = 0
    refused_s: list[float] = []
    calls = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        calls += 1
        t0 = time.perf_counter()
        try:
            store = corestore.open(path)
            try:
                store.run(lambda: store.database.execute_sql("SELECT count(*) FROM t").fetchone(), read=True)
            finally:
                store.close()
            name = "ok"
        except corestore.CircuitOpenError:
            refused_s.append(time.perf_counter() - t0)
            name = "CircuitOpenError"
            if first_refusal_at is None:
                first_refusal_at = calls
                touched_at_first_refusal = touched()
        except corestore.StoreError as err:
            name = type(err).__name__
        except OSError as err:  # before the fix, a raw OSError could escape open()
            name = f"raw {type(err).__name__}"
        outcomes[name] = outcomes.get(name, 0) + 1
        time.sleep(0.01)
    control.heal()
    return {
        "outcomes": outcomes, "calls": calls, "first_refusal_at": first_refusal_at,
        "touched_while_open": touched() - touched_at_first_refusal,
        "refused_median_us": statistics.median(refused_s) * 1e6 if refused_s else None,
    }


def child_header_read_eio(path: str) -> dict[str, Any]:
    """The core's own header read (through the process-lifetime descriptor) fails with EIO."""
    control = PreloadFailpoint.from_env(database=path)
    out: dict[str, Any] = {"before": read_header(path) is not None}
    control.arm(op="read", file="main", errno="EIO")
    try:
        read_header(path)
        out["raised"] = None
    except corestore.StoreError as err:
        c = err.classification
        out["raised"] = {"type": type(err).__name__, "kind": c.kind.name if c else None, "name": c.name if c else None,
                         "is_oserror": isinstance(err, OSError), "errno": getattr(err, "errno", None),
                         "cause": type(err.__cause__).__name__, "message": str(err)}
    except OSError as err:
        out["raised"] = {"type": "raw " + type(err).__name__, "errno": err.errno}
    control.heal()
    return out


def child_open_with_header_eio(path: str) -> dict[str, Any]:
    """``corestore.open()`` with one EIO at each of the first reads of the main file at open
    (SQLite's own and the core's header reads: wal_guard reads the header at open)."""
    control = PreloadFailpoint.from_env(database=path)
    # the default plugins that read the header, without the breaker (it would refuse after 3)
    profile = Profile(path=path, plugins=("wal_guard", "wal_invariants", "health"))
    results = []
    for after in range(0, 8):  # the single-fault positions of the first reads at open
        control.heal()
        control.arm(op="read", file="main", errno="EIO", after=after, count=1)
        try:
            corestore.open(profile).close()
            results.append("ok")
        except corestore.StoreError as err:
            results.append(type(err).__name__)
        except OSError as err:
            results.append(f"raw {type(err).__name__}")
    control.heal()
    return {"results": results}


# -- tests ----------------------------------------------------------------------------------------
@linux_only
def test_breaker_gates_open_under_persistent_read_eio(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    make_db(path)
    result = preload_failpoint.run(child_open_run_close_loop, args=[str(path), 2.0], timeout_s=60).check().result
    outcomes = result["outcomes"]
    # Before the fix: no CircuitOpenError ever, and SQLite touched ~120 times a second.
    assert result["first_refusal_at"] == 4, result  # failure_threshold = 3 failed opens, then refused
    assert outcomes["CircuitOpenError"] == result["calls"] - 3, result
    assert not any(name.startswith("raw") for name in outcomes), result
    assert result["touched_while_open"] == 0, result  # refused without touching the file
    assert result["refused_median_us"] < 1000, result  # microseconds, not a connection attempt
    print(f"refused open(): median {result['refused_median_us']:.1f} us over {outcomes['CircuitOpenError']} calls")


@linux_only
def test_eio_on_the_core_header_read_is_classified_fatal_io(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    make_db(path)
    result = preload_failpoint.run(child_header_read_eio, args=[str(path)], timeout_s=60).check().result
    assert result["before"] is True
    raised = result["raised"]
    assert raised is not None and raised["type"] == "FatalError", result
    assert raised["kind"] == "FATAL_IO" and raised["name"] == "SQLITE_IOERR_READ (EIO)"
    assert raised["is_oserror"] and raised["errno"] == errno.EIO and raised["cause"] == "OSError"
    assert str(path) in raised["message"] and "reading the database header" in raised["message"]


@linux_only
def test_no_single_read_eio_at_open_escapes_as_a_raw_oserror(preload_failpoint: PreloadFailpoint, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    make_db(path)
    result = preload_failpoint.run(child_open_with_header_eio, args=[str(path)], timeout_s=60).check().result
    assert not any(r.startswith("raw") for r in result["results"]), result
    assert set(result["results"]) <= {"ok", "FatalError", "CorruptionError", "TransientError"}, result


def test_errno_table_matches_sqlites_kinds(tmp_path: Path) -> None:
    """The table itself (building OSErrors: the faults above prove the path; these rows have no
    single real trigger on this machine, e.g. EMFILE while reading 100 bytes)."""
    expected = {errno.EIO: ErrorKind.FATAL_IO, errno.ENOSPC: ErrorKind.FULL, errno.EMFILE: ErrorKind.ENVIRONMENT,
                errno.ENFILE: ErrorKind.ENVIRONMENT, errno.EACCES: ErrorKind.READONLY,
                errno.EROFS: ErrorKind.READONLY, errno.EINTR: ErrorKind.TRANSIENT_IO}
    for number, kind in expected.items():
        c = classify_os_error(OSError(number, os.strerror(number)))
        assert c.kind is kind and KIND_BY_ERRNO.get(number, ErrorKind.FATAL_IO) is kind
    emfile = classify_os_error(OSError(errno.EMFILE, "Too many open files"))
    assert emfile.code == 14 and emfile.name == "SQLITE_CANTOPEN (EMFILE)"  # retried at open like CANTOPEN
    err = os_store_error(OSError(errno.ENOSPC, "No space left on device"), "/db", "stat", stat=True)
    assert isinstance(err, corestore.FatalError) and isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(err).startswith("/db: SQLITE_FULL (ENOSPC): stat failed")
    transient = os_store_error(OSError(errno.EINTR, "Interrupted"), "/db", "reading the database header")
    assert isinstance(transient, corestore.TransientError) and transient.classification.retryable


def test_open_refused_while_isolated_without_touching_the_file(tmp_path: Path) -> None:
    """An isolated breaker refuses ``open()`` of a new store on the file: not even created."""
    path = tmp_path / "iso.db"
    store = corestore.open(Profile(path=str(path), plugins=("circuit_breaker",)))
    store.database.execute_sql("CREATE TABLE t (x)")
    breaker = store.plugin("circuit_breaker")
    breaker.isolate("test")
    store.close()
    os.rename(path, tmp_path / "moved.db")  # nothing may create or open the path now
    with pytest.raises(corestore.CircuitOpenError, match="ISOLATED"):
        corestore.open(Profile(path=str(path), plugins=("circuit_breaker",)))
    assert not path.exists()
    breaker.reset()
    os.rename(tmp_path / "moved.db", path)
    again = corestore.open(Profile(path=str(path), plugins=("circuit_breaker",)))
    assert again.database.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 0
    again.close()
