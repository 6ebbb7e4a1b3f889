"""A concurrency stress of one store: threads committing, reading, invalidating and closing.

Run it as ``python -m corestore_contrib.stress [--seconds N] [--profile NAME] [PATH]``. The test
suite runs it for a few seconds in a child process with a time limit (a crash or a hang fails the
test); the soak mode is the same run for longer (``--seconds 1800``, or ``$CORESTORE_SOAK_S``).

What runs, in rounds of ``--round-s`` seconds, each on a freshly opened store:

* ``--writers`` threads commit one row per transaction (``store.transaction()``) and through
  ``store.run()``, and count every commit that returned;
* ``--readers`` threads read in ``store.read()`` and through autocommit ``execute_sql``;
* one thread calls ``store.invalidate()`` every millisecond;
* one thread opens and closes extra references of the store (``corestore.open`` / ``close``);
* at the end of a round the store is closed while the writers are still writing.

The process must not crash or hang, every error must be a :class:`corestore.StoreError` the
design allows here (the store was closed; BUSY past the timeout), and afterwards the file must
hold exactly the rows whose commits returned (``PRAGMA integrity_check`` ok). Exit status 0 when
all of that holds, 1 otherwise; a one-line JSON summary goes to stdout.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import corestore

__all__ = ["stress", "main"]

_ALLOWED = (corestore.StoreClosedError, corestore.BusyError)
_keys = itertools.count(1)  # row keys, unique across rounds (next() is atomic under the GIL)


class _Round:
    """One round: a store, its threads, and what they saw."""

    def __init__(self, path: str, profile: str, seconds: float, writers: int, readers: int) -> None:
        self.path = path
        self.profile = profile
        self.stop = threading.Event()
        self.seconds = seconds
        self.store = corestore.open(path, profile=profile)
        self.lock = threading.Lock()
        self.committed: list[int] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.first_traceback: str | None = None
        self.threads = [threading.Thread(target=self._writer, args=(n,), name=f"writer-{n}") for n in range(writers)]
        self.threads += [threading.Thread(target=self._reader, name=f"reader-{n}") for n in range(readers)]
        self.threads += [threading.Thread(target=self._invalidator, name="invalidator"),
                         threading.Thread(target=self._reopener, name="reopener")]

    def _guard(self, what: str, fn: Any) -> bool:
        """Run ``fn``; count the outcome; False when the round is over for this thread."""
        try:
            fn()
            self.counts[what] += 1
            return True
        except _ALLOWED as err:
            self.counts[type(err).__name__] += 1
            return not isinstance(err, corestore.StoreClosedError)
        except sqlite3.ProgrammingError as err:
            # A cursor from an autocommit read still being fetched when the store was closed (by
            # this test, on purpose): what a closed store answers. Before close(): a finding.
            if not self.store.closed:
                with self.lock:
                    self.unexpected.append(f"{what}: {type(err).__name__}: {err}")
            self.counts["cursor_after_close"] += 1
            return True
        except BaseException as err:  # noqa: BLE001 - everything else is a finding
            with self.lock:
                self.unexpected.append(f"{what}: {type(err).__name__}: {err}")
                if self.first_traceback is None:
                    self.first_traceback = traceback.format_exc()
            return True

    def _writer(self, n: int) -> None:  # noqa: ARG002 - n names the thread
        store = self.store
        while not self.stop.is_set():
            key = next(_keys)

            def write(key: int = key) -> None:
                if key % 2:
                    with store.transaction():
                        store.database.execute_sql("INSERT INTO stress (k) VALUES (?)", (key,))
                else:
                    store.run(lambda: store.database.execute_sql("INSERT INTO stress (k) VALUES (?)", (key,)))
                with self.lock:
                    self.committed.append(key)

            if not self._guard("commits", write):
                return

    def _reader(self) -> None:
        store = self.store

        def read() -> None:
            with store.read():
                store.database.execute_sql("SELECT count(*) FROM stress").fetchone()
            store.database.execute_sql("SELECT max(k) FROM stress").fetchall()

        while not self.stop.is_set():
            if not self._guard("reads", read):
                return

    def _invalidator(self) -> None:
        while not self.stop.wait(0.001):
            if not self._guard("invalidations", self.store.invalidate):
                return

    def _reopener(self) -> None:
        def reopen() -> None:
            again = corestore.open(self.path, profile=self.profile)
            again.close()

        while not self.stop.wait(0.002):
            self._guard("reopens", reopen)

    def run(self) -> None:
        for t in self.threads:
            t.start()
        time.sleep(self.seconds * 0.9)
        self.store.close()  # while the writers write: busy connections close when released
        time.sleep(self.seconds * 0.1)
        self.stop.set()
        deadline = time.monotonic() + 30
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise RuntimeError(f"stress: thread {t.name} did not finish within 30 s (a hang)")


def stress(path: str, *, seconds: float = 5.0, round_s: float = 1.0, writers: int = 8, readers: int = 2,
           profile: str = "default") -> dict[str, Any]:
    """Run the stress on ``path`` for about ``seconds``; returns the summary (``ok`` True/False)."""
    setup = corestore.open(path, profile=profile)
    setup.database.execute_sql("CREATE TABLE IF NOT EXISTS stress (k INTEGER PRIMARY KEY)")
    setup.close()
    started = time.monotonic()
    committed: list[int] = []
    counts: collections.Counter[str] = collections.Counter()
    unexpected: list[str] = []
    first_traceback: str | None = None
    rounds = 0
    while rounds == 0 or time.monotonic() - started < seconds:
        r = _Round(path, profile, min(round_s, max(0.2, seconds)), writers, readers)
        r.run()
        rounds += 1
        committed += r.committed
        counts.update(r.counts)
        unexpected += r.unexpected
        first_traceback = first_traceback or r.first_traceback
    check = sqlite3.connect(path)
    try:
        rows = {k for (k,) in check.execute("SELECT k FROM stress")}
        integrity = check.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        check.close()
    lost = sorted(set(committed) - rows)
    summary = {
        "ok": not unexpected and not lost and integrity == "ok",
        "seconds": round(time.monotonic() - started, 1), "rounds": rounds, "counts": dict(counts),
        "committed": len(committed), "rows": len(rows), "lost": lost[:10], "integrity": integrity,
        "unexpected": unexpected[:10], "unexpected_total": len(unexpected),
        "first_traceback": first_traceback,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corestore_contrib.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="database file (default: a new temporary file)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("CORESTORE_SOAK_S", "5")),
                        help="how long to run (default 5, or $CORESTORE_SOAK_S)")
    parser.add_argument("--round-s", type=float, default=1.0, help="seconds per round (a store per round)")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--profile", default="default")
    args = parser.parse_args(argv)
    if args.path is None:
        tmp = tempfile.TemporaryDirectory(prefix="corestore-stress-")
        path = os.path.join(tmp.name, "stress.db")
    else:
        tmp, path = None, args.path
    try:
        summary = stress(path, seconds=args.seconds, round_s=args.round_s, writers=args.writers,
                         readers=args.readers, profile=args.profile)
    finally:
        if tmp is not None:
            tmp.cleanup()
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
