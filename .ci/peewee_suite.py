#!/usr/bin/env python3
"""peewee's own test suite, plainly and through a corestore store: a developer's check.

    python3 .ci/peewee_suite.py /tmp/peewee-src                          # SQLite
    python3 .ci/peewee_suite.py /tmp/peewee-src --engine postgresql      # PostgreSQL (psycopg 3)

What it does:

1. Finds the peewee release that matches the checkout: the newest release tag at or before HEAD
   (``git describe --tags --abbrev=0 --match '[0-9]*'``; HEAD may be ahead of the newest
   release).
2. Makes a virtual environment (``--venv DIR``, reused when it exists) with that release of
   peewee from the package index and this project installed editable.
3. Runs peewee's SQLite test modules (``models transactions db_tests fields schema manytomany
   prefetch_tests results with_related_tests model_sql``) twice, each test class in its own
   child process with a time limit (``--timeout``, default 60 s; a class that runs out is
   killed and its unfinished tests are reported as ``hang``): once plainly, once with peewee's
   test ``db`` (``tests/base.py``) replaced by the ``database`` of a default-profile store on
   the same file. peewee's ``tests/__init__.py`` (which imports every module) is bypassed so the
   replacement happens before any test module binds its models.
4. Prints every test that passes plainly but not through corestore, split into the documented
   deliberate differences (``DELIBERATE`` below, each with its reason; the list is on
   ``site/peewee-compatibility.md``) and unexpected ones, and the totals. Exit status 1 when
   there is an unexpected difference.

With ``--engine postgresql`` the same modules, plus peewee's ``postgres`` module (PostgreSQL
fields and features through ``playhouse.postgres_ext``), run against a PostgreSQL server:
``--postgres-url`` (default ``$CORESTORE_TEST_POSTGRES_URL``, else
``postgresql://postgres@127.0.0.1:5432/test``) names the server; the database ``peewee_test`` that
peewee's tests expect is created there when missing. peewee's ``tests/base.py`` is configured
through its environment variables: ``PEEWEE_TEST_BACKEND=psycopg3`` (``PostgresqlDatabase`` with
``prefer_psycopg3=True``: no psycopg2 is needed) and ``PEEWEE_PSQL_HOST``/``PORT``/``USER``/``PASSWORD``
from the URL. Through corestore, peewee's test ``db`` (and the ``postgres`` module's own ``db``)
are replaced by the ``database`` of a store opened on ``postgresql://.../peewee_test`` with the
default PostgreSQL profile.

Not run by ``.ci/run``: CI must not depend on peewee's repository. The working files go to
``--workdir`` (default: a fresh directory on ``/dev/shm`` when it exists).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import unittest
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = ("models", "transactions", "db_tests", "fields", "schema", "manytomany", "prefetch_tests", "results",
           "with_related_tests", "model_sql")
#: PostgreSQL: the same modules and peewee's PostgreSQL-specific one (playhouse.postgres_ext).
POSTGRES_MODULES = (*MODULES, "postgres")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PEEWEE_DATABASE = "peewee_test"
_URL_ENV = "CORESTORE_PEEWEE_SUITE_URL"  # parent -> child: the store's URL (PostgreSQL)

#: Tests that pass plainly and deliberately not through a store, with the reason (the same list
#: is on site/peewee-compatibility.md; tests/test_dropin.py tests each behaviour).
DELIBERATE: dict[str, str] = {}
#: The same for PostgreSQL (also on site/peewee-compatibility.md).
DELIBERATE_POSTGRES: dict[str, str] = {}


# -- the child: one test class, plainly or through a store -------------------------------------------
def _load_tests_package(checkout: str) -> None:
    """Make ``tests`` importable without running its ``__init__`` (which imports every module).
    The checkout itself is not put on ``sys.path``: ``peewee`` is the installed release."""
    pkg = types.ModuleType("tests")
    pkg.__path__ = [os.path.join(checkout, "tests")]  # type: ignore[attr-defined]
    sys.modules["tests"] = pkg


def _inject_store() -> Any:
    """Replace peewee's test ``db`` with a default-profile store's database on the same file
    (SQLite) or the same server and database (PostgreSQL: the URL the parent passes)."""
    import tests.base as base

    import corestore

    url = os.environ.get(_URL_ENV)
    store = corestore.open(url if url else os.path.abspath(base.db.database))
    sdb = store.database
    base.db = sdb
    base.TestModel._meta.set_database(sdb)
    for name in ("DatabaseTestCase", "ModelDatabaseTestCase", "ModelTestCase"):
        getattr(base, name).database = sdb
    return store


def _rebind_module(mod: Any, old: Any, new: Any) -> None:
    """A test module with its own ``db`` (peewee's ``postgres``: a ``PostgresqlExtDatabase``):
    the module's ``db``, its test classes' ``database`` and its models move to ``new``."""
    if getattr(mod, "db", None) is old:
        mod.db = new
    for obj in vars(mod).values():
        if not isinstance(obj, type):
            continue
        if getattr(obj, "database", None) is old:
            obj.database = new
        meta = getattr(obj, "_meta", None)
        if meta is not None and getattr(meta, "database", None) is old:
            meta.set_database(new)


class _Reporter(unittest.TextTestResult):
    """Writes one JSON line per finished test to stdout (the parent reads them as they come)."""

    def _emit(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        line = json.dumps({"id": test.id().split(".", 1)[1], "outcome": outcome, "detail": detail[-1500:]})
        sys.__stdout__.write(line + "\n")
        sys.__stdout__.flush()

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self._emit(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._emit(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._emit(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._emit(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._emit(test, "pass")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._emit(test, "fail", "unexpected success")


def child(checkout: str, mode: str, module: str, cls: str | None) -> int:
    _load_tests_package(checkout)
    store = _inject_store() if mode == "corestore" else None
    import importlib

    mod = importlib.import_module(f"tests.{module}")
    own = getattr(mod, "db", None)
    if store is not None and os.environ.get(_URL_ENV) and own is not None and own is not store.database:
        _rebind_module(mod, own, store.database)
    loader = unittest.TestLoader()
    if cls is None:  # list the test classes defined in the module
        names = [name for name, obj in vars(mod).items()
                 if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and obj.__module__ == mod.__name__
                 and loader.getTestCaseNames(obj)]
        sys.__stdout__.write(json.dumps(names) + "\n")
        return 0
    names = loader.getTestCaseNames(getattr(mod, cls))
    sys.__stdout__.write(json.dumps({"tests": [f"{module}.{cls}.{n}" for n in names]}) + "\n")
    sys.__stdout__.flush()
    suite = loader.loadTestsFromTestCase(getattr(mod, cls))
    runner = unittest.TextTestRunner(stream=open(os.devnull, "w"), resultclass=_Reporter, verbosity=0)
    runner.run(suite)
    if store is not None:
        store.close()
    return 0


# -- the parent ----------------------------------------------------------------------------------------
def release_of(checkout: str) -> str:
    """The newest release tag at or before the checkout's HEAD."""
    out = subprocess.run(["git", "-C", checkout, "describe", "--tags", "--abbrev=0", "--match", "[0-9]*", "HEAD"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_venv(venv: pathlib.Path, release: str, *, postgres: bool = False) -> pathlib.Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = "import peewee, corestore" + (", psycopg" if postgres else "") + "; print(peewee.__version__)"
    have = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if have.returncode != 0 or have.stdout.strip() != release:
        extra = ["psycopg[binary]"] if postgres else []
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(ROOT), f"peewee=={release}", *extra],
                       check=True)
    return python


# -- PostgreSQL: the server, the peewee_test database, peewee's environment ----------------------------
def postgres_setup(url: str, python: pathlib.Path) -> tuple[dict[str, str], str]:
    """Create ``peewee_test`` on the server of ``url`` when missing, and the ``hstore`` extension
    in it (with the venv's psycopg);
    returns the environment for peewee's ``tests/base.py`` and the store's URL (``url`` with the
    database ``peewee_test``)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    store_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + PEEWEE_DATABASE, parts.query, ""))
    create = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=5) as conn:\n"
        f"    if conn.execute(\"SELECT 1 FROM pg_database WHERE datname = '{PEEWEE_DATABASE}'\").fetchone() is None:\n"
        f"        conn.execute('CREATE DATABASE {PEEWEE_DATABASE}')\n"
        f"        print('created database {PEEWEE_DATABASE}')\n"
        "with psycopg.connect(sys.argv[2], autocommit=True, connect_timeout=5) as conn:\n"
        "    try:\n"  # peewee's HStoreField tests need it (PostgreSQL's contrib package)
        "        conn.execute('CREATE EXTENSION IF NOT EXISTS hstore')\n"
        "    except psycopg.Error as err:\n"
        "        print(f'no hstore extension (its tests fail in both runs): {err}')\n"
    )
    out = subprocess.run([str(python), "-c", create, url, store_url], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"cannot prepare the database {PEEWEE_DATABASE!r} on {_redacted(url)}:\n{out.stderr[-1500:]}")
    for line in out.stdout.splitlines():
        print(f"{line} ({_redacted(url)})", flush=True)
    env = {"PEEWEE_TEST_BACKEND": "psycopg3"}
    for key, value in (("HOST", parts.hostname), ("PORT", parts.port), ("USER", parts.username),
                       ("PASSWORD", urllib.parse.unquote(parts.password) if parts.password else None)):
        if value:
            env[f"PEEWEE_PSQL_{key}"] = str(value)
    env[_URL_ENV] = store_url
    return env, store_url


def _redacted(url: str) -> str:
    """``url`` without its password (this script runs outside the venv: no corestore import)."""
    import re

    url = re.sub(r"^([a-z]+://[^:@/]*):[^@]*@", r"\1:***@", url, flags=re.IGNORECASE)
    return re.sub(r"([?&](?:ssl)?password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def run_class(python: pathlib.Path, checkout: str, mode: str, module: str, cls: str, timeout: float,
              workdir: str, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Run one test class in a child; returns {test id: (outcome, detail)}; unfinished tests of a
    class that ran out of time are ``hang``."""
    cwd = tempfile.mkdtemp(prefix=f"{mode}-{module}-{cls}-", dir=workdir)
    cmd = [str(python), __file__, "--child", checkout, mode, module, cls]
    child_env = {**os.environ, **(env or {})}
    if mode == "plain":
        child_env.pop(_URL_ENV, None)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=child_env)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    results: dict[str, tuple[str, str]] = {}
    expected: list[str] = []
    for line in out.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if "tests" in rec:
                expected = rec["tests"]
            else:
                results[rec["id"]] = (rec["outcome"], rec["detail"])
    if not expected and not results:
        expected = [f"{module}.{cls}.(class)"]
    for test in expected:
        if test not in results:
            why = f"no result within {timeout:g} s (hang)" if timed_out else f"child exited {proc.returncode}: {err[-800:]}"
            results[test] = ("hang" if timed_out else "error", why)
    return results


def list_classes(python: pathlib.Path, checkout: str, module: str, workdir: str,
                 env: dict[str, str] | None = None) -> list[str]:
    cwd = tempfile.mkdtemp(prefix=f"list-{module}-", dir=workdir)
    child_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != _URL_ENV}
    try:
        out = subprocess.run([str(python), __file__, "--child", checkout, "plain", module, "-"], cwd=cwd,
                             capture_output=True, text=True, timeout=120, env=child_env)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"listing tests.{module} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", nargs="?", help="a checkout of peewee's git repository")
    parser.add_argument("--venv", help="virtual environment to create or reuse (default: under the workdir)")
    parser.add_argument("--workdir", help="where the test databases live (default: a new directory on /dev/shm)")
    parser.add_argument("--timeout", type=float, default=60.0, help="time limit per test class, seconds (default 60)")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite",
                        help="run peewee's tests on SQLite (default) or on a PostgreSQL server")
    parser.add_argument("--postgres-url", default=os.environ.get("CORESTORE_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
                        help="with --engine postgresql: the server (its database is replaced by peewee_test; "
                             "default $CORESTORE_TEST_POSTGRES_URL, else %(default)s)")
    parser.add_argument("--modules", nargs="+", help="peewee test modules to run (default: all of the engine's)")
    parser.add_argument("--json", help="also write every outcome to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the failure detail of each difference")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        checkout, mode, module, cls = args.child
        return child(checkout, mode, module, None if cls == "-" else cls)
    if not args.checkout:
        parser.error("give the path of a checkout of peewee's repository")
    checkout = os.path.abspath(args.checkout)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    workdir = args.workdir or tempfile.mkdtemp(prefix="corestore-peewee-suite-", dir=base)
    os.makedirs(workdir, exist_ok=True)
    release = release_of(checkout)
    venv = pathlib.Path(args.venv) if args.venv else pathlib.Path(workdir) / "venv"
    postgres = args.engine == "postgresql"
    print(f"peewee checkout {checkout}: release {release}; venv {venv}; engine {args.engine}", flush=True)
    python = make_venv(venv, release, postgres=postgres)
    env: dict[str, str] = {}
    if postgres:
        env, store_url = postgres_setup(args.postgres_url, python)
        print(f"PostgreSQL: peewee's tests on {_redacted(store_url)} (PEEWEE_TEST_BACKEND=psycopg3)", flush=True)
    deliberate_map = DELIBERATE_POSTGRES if postgres else DELIBERATE
    modules = args.modules or list(POSTGRES_MODULES if postgres else MODULES)
    outcomes: dict[str, dict[str, tuple[str, str]]] = {"plain": {}, "corestore": {}}
    started = time.monotonic()
    for module in modules:
        for cls in list_classes(python, checkout, module, workdir, env):
            for mode in ("plain", "corestore"):
                outcomes[mode].update(run_class(python, checkout, mode, module, cls, args.timeout, workdir, env))
        print(f"  {module}: done ({time.monotonic() - started:.0f} s)", flush=True)
    plain, through = outcomes["plain"], outcomes["corestore"]
    tests = sorted(set(plain) | set(through))
    passed_plain = [t for t in tests if plain.get(t, ("missing",))[0] == "pass"]
    passed_store = [t for t in tests if through.get(t, ("missing",))[0] == "pass"]
    differences = [t for t in passed_plain if through.get(t, ("missing",))[0] != "pass"]
    deliberate = [t for t in differences if t in deliberate_map]
    unexpected = [t for t in differences if t not in deliberate_map]
    for title, group in (("deliberate differences (documented)", deliberate), ("UNEXPECTED differences", unexpected)):
        print(f"\n{title}: {len(group)}")
        for t in group:
            outcome, detail = through.get(t, ("missing", ""))
            print(f"  {t}: {outcome} through corestore" + (f" - {deliberate_map[t]}" if t in deliberate_map else ""))
            if args.verbose and detail:
                print("    " + detail.strip().replace("\n", "\n    "))
    print(f"\npeewee {release} on {args.engine}: {len(tests)} tests; pass plainly {len(passed_plain)}; pass through corestore "
          f"{len(passed_store)}; pass plainly but not through corestore {len(differences)} "
          f"({len(deliberate)} deliberate, {len(unexpected)} unexpected)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"release": release, "engine": args.engine, "plain": plain, "corestore": through}, fh, indent=1)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
