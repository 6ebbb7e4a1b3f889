"""Client CPU instructions per PostgreSQL transaction, counted by callgrind:
``python -m benchmarks.instructions_postgres``.

The PostgreSQL side of :mod:`benchmarks.instructions`. A wall-clock ratio on a loaded two-core
machine that also runs the server wanders by tens of per cent; the instructions this process
executes per transaction do not (the wait for the server's reply costs no instruction). Each case
runs in a child under ``valgrind --tool=callgrind`` twice, with 200 and with 1200 single-row write
transactions after the same set-up; the difference divided by 1000 is one transaction's cost,
start-up and imports cancelled out. Both sides run ``synchronous_commit=off`` and the same
``INSERT`` through ``execute_sql``, in a schema of their own on the server of
``benchmarks.bench_postgres.server_url()`` (dropped afterwards).

Cases: ``peewee.write`` (peewee's ``db.atomic()``), ``minimal.write`` (``store.transaction()``, no
plugins), ``postgresql.write`` (the built-in ``postgresql`` profile). Not part of
``python -m benchmarks`` (it needs valgrind and a server, and takes minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from .instructions import count_child

__all__ = ["CASES", "measure", "main"]

CASES: dict[str, str] = {
    "peewee.write": "bare peewee db.atomic() + INSERT (psycopg 3)",
    "minimal.write": "store.transaction() + INSERT, no plugins",
    "postgresql.write": "store.transaction() + INSERT, the built-in postgresql profile",
}
SMALL, LARGE = 200, 1200
_WARMUP = 50
PAYLOAD = "x" * 64


def _child(case: str, n: int, schema: str) -> None:
    import attrs

    import corestore
    from corestore.profiles import resolve_profile

    from .bench_postgres import baseline_database, server_url

    url = server_url()
    table = f"{schema}.{case.split('.')[0]}"
    insert = f"INSERT INTO {table} (kind, n, payload) VALUES (%s, %s, %s)"
    if case == "peewee.write":
        db = baseline_database(url)
        db.connect()
        db.execute_sql("SET synchronous_commit = off")
        execute, write_cm, close = db.execute_sql, db.atomic, db.close
    else:
        profile = resolve_profile("postgresql", config=None, path=url)
        if case == "minimal.write":
            profile = attrs.evolve(profile, name="instr-minimal", plugins=())
        profile = attrs.evolve(profile, server_settings={"synchronous_commit": "off"})
        store = corestore.open(profile)
        execute, write_cm, close = store.database.execute_sql, store.transaction, store.close
    for i in range(_WARMUP):
        with write_cm():
            execute(insert, ("warm", i, PAYLOAD))
    for i in range(n):
        with write_cm():
            execute(insert, ("hot", i, PAYLOAD))
    close()


def _run_once(case: str, n: int, schema: str) -> int:
    return count_child("benchmarks.instructions_postgres", f"pg-{case}-{n}", lambda _work: [case, str(n), schema])


def measure(case: str, schema: str) -> float:
    """Client instructions per transaction of ``case``: (run of 1200 - run of 200) / 1000."""
    return (_run_once(case, LARGE, schema) - _run_once(case, SMALL, schema)) / (LARGE - SMALL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions_postgres",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="measure only this case (repeatable)")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, n, schema = args.child
        _child(case, int(n), schema)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    import psycopg

    from .bench_postgres import server_url

    schema = f"corestore_instr_{os.getpid()}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for case in CASES:
            conn.execute(f"CREATE TABLE {schema}.{case.split('.')[0]} "
                         "(id bigserial PRIMARY KEY, kind text NOT NULL, n integer NOT NULL, payload text)")
    results: dict[str, float] = {}
    try:
        print(f"{'case':<18} {'instructions/txn':>17}  what")
        for case in args.only or list(CASES):
            results[case] = measure(case, schema)
            print(f"{case:<18} {results[case]:>17,.0f}  {CASES[case]}", flush=True)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    base = results.get("peewee.write")
    for who in ("minimal", "postgresql"):
        got = results.get(f"{who}.write")
        if base and got:
            print(f"{who}.write / peewee.write = {got / base:.3f} (+{got - base:,.0f} instructions)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
