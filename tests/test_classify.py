"""Tests for corestore.classify: the code table against the drivers, the error taxonomy table, and
real SQLite errors from sqlite3, apsw and peewee classified end to end."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import peewee
import pluggy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corestore import hookspecs
from corestore.classify import (
    FLAGS_BY_KIND,
    KIND_BY_CODE,
    MESSAGE_CODES,
    SQLITE_CODES,
    CoreClassifier,
    classify_code,
    classify_exception,
    code_name,
    driver_error,
    error_codes,
    kind_for_code,
)
from corestore.errors import Classification, ErrorKind, FatalError, QueryError

K = ErrorKind
SECRET = "hunter2-secret-parameter"


def raised(fn: Callable[[], object]) -> BaseException:
    """Run ``fn`` and return what it raised (fails the test if it raised nothing)."""
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the point is to capture it
        return exc
    pytest.fail("expected an exception")


# ---------------------------------------------------------------------------------------------
# The code table against what the drivers expose
# ---------------------------------------------------------------------------------------------

PRIMARY_NAMES = {name for code, name in SQLITE_CODES.items() if code < 256}


def test_primaries_are_the_documented_ones() -> None:
    assert {c for c in SQLITE_CODES if c < 256} == set(range(0, 29)) | {100, 101}


def test_table_has_every_result_code_of_python_sqlite3() -> None:
    # sqlite3 also exports authorizer actions and limits under SQLITE_*: keep result codes only
    # (a primary's name, or a primary's name followed by "_").
    exported = {
        name: value
        for name, value in vars(sqlite3).items()
        if name.startswith("SQLITE_")
        and isinstance(value, int)
        and any(name == p or name.startswith(p + "_") for p in PRIMARY_NAMES)
    }
    assert len(exported) > 100
    missing = {name: value for name, value in exported.items() if SQLITE_CODES.get(value) != name}
    assert missing == {}


def test_table_has_every_result_code_of_apsw() -> None:
    apsw = pytest.importorskip("apsw")
    exposed = {
        name: code
        for mapping in (apsw.mapping_result_codes, apsw.mapping_extended_result_codes)
        for name, code in mapping.items()
        if isinstance(name, str)
    }
    assert len(exposed) > 100
    assert {n: c for n, c in exposed.items() if SQLITE_CODES.get(c) != n} == {}


@pytest.mark.parametrize(
    "code, name",
    [
        (8458, "SQLITE_IOERR_CORRUPTFS"),
        (8714, "SQLITE_IOERR_IN_PAGE"),
        (3091, "SQLITE_CONSTRAINT_DATATYPE"),
        (517, "SQLITE_BUSY_SNAPSHOT"),
        (773, "SQLITE_BUSY_TIMEOUT"),
        (1032, "SQLITE_READONLY_DBMOVED"),
        (1544, "SQLITE_READONLY_DIRECTORY"),
        (279, "SQLITE_AUTH_USER"),
        (256, "SQLITE_OK_LOAD_PERMANENTLY"),
        (512, "SQLITE_OK_SYMLINK"),
        (283, "SQLITE_NOTICE_RECOVER_WAL"),
        (284, "SQLITE_WARNING_AUTOINDEX"),
        (1550, "SQLITE_CANTOPEN_SYMLINK"),
        (779, "SQLITE_CORRUPT_INDEX"),
    ],
)
def test_named_codes(code: int, name: str) -> None:
    assert SQLITE_CODES[code] == name


def test_every_extended_code_is_named_after_its_primary() -> None:
    for code, name in SQLITE_CODES.items():
        assert name.startswith(SQLITE_CODES[code & 0xFF]), (code, name)


def test_kind_table_covers_the_code_table() -> None:
    assert set(KIND_BY_CODE) == set(SQLITE_CODES)
    assert set(FLAGS_BY_KIND) == set(ErrorKind)


# ---------------------------------------------------------------------------------------------
# the error taxonomy (site/concepts/errors.md), row by row
# ---------------------------------------------------------------------------------------------

# kind -> (retry, breaker, reopen), copied from the error taxonomy ("by policy" is not the core's).
DESIGN_FLAGS = {
    K.BUSY: (True, False, False),
    K.TRANSIENT_IO: (True, True, True),
    K.FATAL_IO: (False, True, True),
    K.CORRUPT: (False, True, True),
    K.FULL: (False, True, False),
    K.READONLY: (False, True, False),
    K.ENVIRONMENT: (False, True, False),
    K.CONSTRAINT: (False, False, False),
    K.PROGRAMMING: (False, False, False),
    K.INVARIANT: (False, True, False),
    K.UNKNOWN: (False, False, False),
}

DESIGN_ROWS = [
    (K.BUSY, [5, 517, 6, 773, 261, 262, 518]),
    (K.TRANSIENT_IO, [4874, 5386, 4618, 5130, 1546, 15, 1032]),
    (K.FATAL_IO, [10, 266, 522, 778, 1034, 8458, 8714, 1290, 3850]),
    (K.CORRUPT, [11, 267, 523, 779, 26]),
    (K.FULL, [13]),
    (K.READONLY, [8, 264, 520, 776, 1288, 1544]),
    (K.ENVIRONMENT, [23, 279, 14, 270, 526, 782, 1038, 1294, 1550]),
    (K.CONSTRAINT, [19, 275, 787, 1299, 1555, 2067, 2579, 3091, 20, 25, 18]),
    (K.PROGRAMMING, [1, 257, 21]),
]


@pytest.mark.parametrize("kind, codes", DESIGN_ROWS, ids=[k.name for k, _ in DESIGN_ROWS])
def test_design_rows(kind: ErrorKind, codes: list[int]) -> None:
    for code in codes:
        c = classify_code(code, "msg")
        assert c.kind is kind, code
        assert (c.retryable, c.trips_breaker, c.reopen) == DESIGN_FLAGS[kind], code
        assert (c.code, c.extended_code, c.name, c.source) == (code & 0xFF, code, SQLITE_CODES[code], "core")


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_flags_per_kind(kind: ErrorKind) -> None:
    assert tuple(FLAGS_BY_KIND[kind]) == DESIGN_FLAGS[kind]


def test_io_families_split_as_designed() -> None:
    transient_io = {4874, 5386, 4618, 5130, 1546}
    for code in SQLITE_CODES:
        if code & 0xFF == 10:
            assert kind_for_code(code) is (K.TRANSIENT_IO if code in transient_io else K.FATAL_IO), code
        if code & 0xFF == 8:
            assert kind_for_code(code) is (K.TRANSIENT_IO if code == 1032 else K.READONLY), code
        if code & 0xFF in (19, 11, 14, 1, 5, 6):
            assert kind_for_code(code) is kind_for_code(code & 0xFF), code


@pytest.mark.parametrize(
    "code, kind",
    [
        (3, K.ENVIRONMENT),  # PERM
        (22, K.ENVIRONMENT),  # NOLFS
        (17, K.BUSY),  # SCHEMA
        (2, K.UNKNOWN),  # INTERNAL
        (4, K.UNKNOWN),  # ABORT
        (516, K.UNKNOWN),  # ABORT_ROLLBACK
        (7, K.UNKNOWN),  # NOMEM
        (9, K.UNKNOWN),  # INTERRUPT
        (12, K.UNKNOWN),  # NOTFOUND
        (16, K.UNKNOWN),  # EMPTY
        (24, K.UNKNOWN),  # FORMAT
        (27, K.UNKNOWN),
        (283, K.UNKNOWN),  # NOTICE
        (28, K.UNKNOWN),
        (284, K.UNKNOWN),  # WARNING
        (0, K.UNKNOWN),
        (100, K.UNKNOWN),
        (101, K.UNKNOWN),
    ],
)
def test_documented_odd_codes(code: int, kind: ErrorKind) -> None:
    assert kind_for_code(code) is kind


@given(st.integers(min_value=1, max_value=(1 << 20)))
def test_unknown_extended_codes_follow_their_primary(code: int) -> None:
    expected = KIND_BY_CODE[code] if code in KIND_BY_CODE else KIND_BY_CODE.get(code & 0xFF, K.UNKNOWN)
    assert kind_for_code(code) is expected
    assert code_name(code).startswith(SQLITE_CODES.get(code & 0xFF, "SQLITE_UNKNOWN"))


def test_new_extended_code_of_a_known_family() -> None:
    assert 37 << 8 | 10 not in SQLITE_CODES
    c = classify_code(37 << 8 | 10)
    assert (c.kind, c.code, c.name) == (K.FATAL_IO, 10, f"SQLITE_IOERR_{37 << 8 | 10}")


def test_classify_code_none_is_unknown() -> None:
    assert classify_code(None, "x" * 500) == Classification(kind=K.UNKNOWN, message="x" * 200)


# ---------------------------------------------------------------------------------------------
# Real errors from sqlite3
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
    conn.execute("INSERT INTO t (name) VALUES (?)", (SECRET,))
    conn.commit()
    conn.close()
    return path


def corrupt_db(path: Path) -> None:
    """A database whose third page (a b-tree page of ``t``) is overwritten with 0xFF."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 100)
    conn.commit()
    conn.close()
    with open(path, "r+b") as f:
        f.seek(2 * 4096)
        f.write(b"\xff" * 64)


def assert_verdict(exc: BaseException, kind: ErrorKind, extended: int, text: str) -> Classification:
    c = classify_exception(exc)
    assert (c.kind, c.extended_code, c.code, c.name) == (kind, extended, extended & 0xFF, SQLITE_CODES[extended])
    assert text in c.message
    assert SECRET not in c.message
    assert (c.retryable, c.trips_breaker, c.reopen) == DESIGN_FLAGS[kind]
    assert error_codes(exc)[:3] == (extended & 0xFF, extended, SQLITE_CODES[extended])
    return c


def test_sqlite3_busy(db_path: Path) -> None:
    holder = sqlite3.connect(db_path, isolation_level=None)
    other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        exc = raised(lambda: other.execute("BEGIN IMMEDIATE"))
    finally:
        holder.execute("ROLLBACK")
    assert driver_error(exc) is exc
    assert_verdict(exc, K.BUSY, 5, "database is locked")


def test_sqlite3_busy_snapshot(db_path: Path) -> None:
    reader = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    writer = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    reader.execute("PRAGMA journal_mode=WAL")
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()
    writer.execute("INSERT INTO t (name) VALUES ('b')")  # the reader's snapshot is now stale
    exc = raised(lambda: reader.execute("INSERT INTO t (name) VALUES ('c')"))
    assert_verdict(exc, K.BUSY, 517, "database is locked")


def test_sqlite3_constraints(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    exc = raised(lambda: conn.execute("INSERT INTO t (name) VALUES (?)", (SECRET,)))
    assert_verdict(exc, K.CONSTRAINT, 2067, "UNIQUE constraint failed")
    exc = raised(lambda: conn.execute("INSERT INTO t (name) VALUES (NULL)"))
    assert_verdict(exc, K.CONSTRAINT, 1299, "NOT NULL constraint failed")


def test_sqlite3_programming_errors(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    assert_verdict(raised(lambda: conn.execute("SELEC 1")), K.PROGRAMMING, 1, "syntax error")
    assert_verdict(raised(lambda: conn.execute("SELECT * FROM missing")), K.PROGRAMMING, 1, "no such table")


def test_sqlite3_closed_database_by_text(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.close()
    exc = raised(lambda: conn.execute("SELECT 1"))
    assert getattr(exc, "sqlite_errorcode", None) is None  # raised by Python, not SQLite
    assert driver_error(exc) is None
    c = classify_exception(exc)
    assert (c.kind, c.code, c.extended_code, c.name) == (K.PROGRAMMING, 21, None, "SQLITE_MISUSE")


def test_sqlite3_readonly(db_path: Path) -> None:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    exc = raised(lambda: conn.execute("INSERT INTO t (name) VALUES ('x')"))
    assert_verdict(exc, K.READONLY, 8, "readonly")


def test_sqlite3_notadb(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not sqlite" * 200)
    conn = sqlite3.connect(path)
    assert_verdict(raised(lambda: conn.execute("SELECT * FROM sqlite_master")), K.CORRUPT, 26, "not a database")


def test_sqlite3_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    corrupt_db(path)
    conn = sqlite3.connect(path)
    exc = raised(lambda: conn.execute("SELECT count(*), max(x) FROM t").fetchall())
    assert_verdict(exc, K.CORRUPT, 11, "malformed")


def test_sqlite3_cantopen(tmp_path: Path) -> None:
    exc = raised(lambda: sqlite3.connect(tmp_path / "missing" / "x.db"))
    assert_verdict(exc, K.ENVIRONMENT, 14, "unable to open")


# ---------------------------------------------------------------------------------------------
# Real errors from apsw (its own SQLite; never on a file the stdlib driver has open)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def apsw_path(tmp_path: Path) -> Path:
    apsw = pytest.importorskip("apsw")
    path = tmp_path / "apsw.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
    conn.execute("INSERT INTO t (name) VALUES (?)", (SECRET,))
    conn.close()
    return path


def test_apsw_errors(apsw_path: Path, tmp_path: Path) -> None:
    import apsw

    holder = apsw.Connection(str(apsw_path))
    other = apsw.Connection(str(apsw_path))
    other.set_busy_timeout(0)
    holder.execute("BEGIN IMMEDIATE")
    exc = raised(lambda: other.execute("BEGIN IMMEDIATE"))
    holder.execute("ROLLBACK")
    assert driver_error(exc) is exc
    assert_verdict(exc, K.BUSY, 5, "database is locked")

    assert_verdict(raised(lambda: holder.execute("INSERT INTO t (name) VALUES (?)", (SECRET,))), K.CONSTRAINT, 2067, "UNIQUE")
    assert_verdict(raised(lambda: holder.execute("SELEC 1")), K.PROGRAMMING, 1, "syntax error")
    assert_verdict(raised(lambda: holder.execute("SELECT * FROM missing")), K.PROGRAMMING, 1, "no such table")

    ro = apsw.Connection(str(apsw_path), flags=apsw.SQLITE_OPEN_READONLY)
    assert_verdict(raised(lambda: ro.execute("INSERT INTO t (name) VALUES ('x')")), K.READONLY, 8, "readonly")

    garbage = tmp_path / "garbage-apsw.db"
    garbage.write_bytes(b"not sqlite" * 200)
    bad = apsw.Connection(str(garbage))
    assert_verdict(raised(lambda: bad.execute("SELECT * FROM sqlite_master")), K.CORRUPT, 26, "not a database")

    corrupt = tmp_path / "corrupt-apsw.db"
    corrupt_db(corrupt)  # written and closed by sqlite3 before apsw opens it
    broken = apsw.Connection(str(corrupt))
    assert_verdict(raised(lambda: broken.execute("SELECT count(*), max(x) FROM t").fetchall()), K.CORRUPT, 11, "malformed")

    missing = str(tmp_path / "missing" / "x.db")
    assert_verdict(raised(lambda: apsw.Connection(missing)), K.ENVIRONMENT, 14, "unable to open")


def test_apsw_errors_without_code_use_text(apsw_path: Path) -> None:
    import apsw

    conn = apsw.Connection(str(apsw_path))
    exc = raised(lambda: conn.execute("SELECT ?", (1, SECRET)))  # wrong number of bindings
    assert driver_error(exc) is None
    c = classify_exception(exc)
    assert (c.kind, c.code, c.name) == (K.PROGRAMMING, 21, "SQLITE_MISUSE")
    assert SECRET not in c.message
    conn.close()
    c = classify_exception(raised(lambda: conn.execute("SELECT 1")))
    assert (c.kind, c.code) == (K.PROGRAMMING, 21)


# ---------------------------------------------------------------------------------------------
# Through peewee (wraps the driver error as .orig)
# ---------------------------------------------------------------------------------------------


def test_peewee_wrapped_errors(db_path: Path, tmp_path: Path) -> None:
    db = peewee.SqliteDatabase(str(db_path), timeout=0)
    exc = raised(lambda: db.execute_sql("INSERT INTO t (name) VALUES (?)", (SECRET,)))
    assert isinstance(exc, peewee.IntegrityError) and isinstance(exc.orig, sqlite3.IntegrityError)
    assert driver_error(exc) is exc.orig
    assert_verdict(exc, K.CONSTRAINT, 2067, "UNIQUE constraint failed")
    assert_verdict(raised(lambda: db.execute_sql("SELECT * FROM missing")), K.PROGRAMMING, 1, "no such table")

    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        exc = raised(lambda: db.execute_sql("BEGIN IMMEDIATE"))
    finally:
        holder.execute("ROLLBACK")
    assert isinstance(exc, peewee.OperationalError)
    assert_verdict(exc, K.BUSY, 5, "database is locked")
    db.close()

    missing = peewee.SqliteDatabase(str(tmp_path / "missing" / "x.db"))
    assert_verdict(raised(missing.connect), K.ENVIRONMENT, 14, "unable to open")


def test_symptom_alone_is_reported_as_is() -> None:
    conn = sqlite3.connect(":memory:")
    exc = raised(lambda: conn.execute("ROLLBACK"))
    assert driver_error(exc) is exc
    c = classify_exception(exc)
    assert (c.kind, c.extended_code) == (K.PROGRAMMING, 1)


def test_symptom_with_uncoded_cause_uses_the_cause_text() -> None:
    conn = sqlite3.connect(":memory:")
    cause = sqlite3.OperationalError("database or disk is full")  # no code attached

    def chain() -> None:
        try:
            raise cause
        except sqlite3.Error:
            conn.execute("ROLLBACK")  # real "cannot rollback", code 1, context = cause

    c = classify_exception(raised(chain))
    assert (c.kind, c.code, c.extended_code, c.name) == (K.FULL, 13, None, "SQLITE_FULL")


def test_abort_rollback_is_a_symptom() -> None:
    inner = sqlite3.OperationalError("database is locked")
    inner.sqlite_errorcode = 5  # type: ignore[attr-defined]
    outer = sqlite3.OperationalError("abort due to ROLLBACK")
    outer.sqlite_errorcode = 516  # type: ignore[attr-defined]
    outer.__context__ = inner
    assert driver_error(outer) is inner
    assert classify_exception(outer).kind is K.BUSY


# ---------------------------------------------------------------------------------------------
# Text fallback, StoreError, non-database errors, chain walking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phrase, code", MESSAGE_CODES)
def test_message_fallback(phrase: str, code: int) -> None:
    exc = sqlite3.OperationalError(f"prefix {phrase.upper()}: suffix")
    primary, extended, name, message = error_codes(exc)
    assert (primary, extended, name) == (code, None, SQLITE_CODES[code])
    c = classify_exception(exc)
    assert (c.kind, c.code, c.extended_code) == (kind_for_code(code), code, None)


@pytest.mark.parametrize(
    "text, code",
    [
        ("database table is locked: t", 6),
        ("Cannot operate on a closed database.", 21),
        ("no such table: x", 1),
        ('near "x": syntax error', 1),
        ("UNIQUE constraint failed: t.name", 19),
        ("disk I/O error", 10),
    ],
)
def test_message_fallback_real_messages(text: str, code: int) -> None:
    assert error_codes(peewee.OperationalError(text))[0] == code


def test_text_of_application_errors_is_not_trusted() -> None:
    c = classify_exception(ValueError("database is locked"))
    assert (c.kind, c.code, c.retryable) == (K.UNKNOWN, None, False)


def test_unknown_exception() -> None:
    c = classify_exception(ValueError("bad input " + "y" * 300))
    assert c == Classification(kind=K.UNKNOWN, message=("bad input " + "y" * 300)[:200], source="core")
    assert error_codes(KeyError("k")) == (None, None, "", "'k'")


def test_store_error_classification_wins() -> None:
    decided = Classification(kind=K.TRANSIENT_IO, code=10, extended_code=4874, source="myplugin")
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    store_error = FatalError("failed", classification=decided)
    store_error.__cause__ = busy
    assert classify_exception(store_error) is decided
    wrapper = RuntimeError("outer")
    wrapper.__context__ = busy  # a coded error comes first in the walk
    wrapper.__cause__ = store_error
    assert classify_exception(wrapper) is decided


def test_store_error_without_classification_is_looked_through(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    driver = raised(lambda: conn.execute("SELECT * FROM missing"))
    err = QueryError("bad query", classification=None)
    err.__cause__ = driver
    assert classify_exception(err).extended_code == 1


def test_broken_str_does_not_raise() -> None:
    class Broken(sqlite3.OperationalError):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert classify_exception(Broken()) == Classification(kind=K.UNKNOWN, message="Broken")
    coded = Broken()
    coded.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert (classify_exception(coded).kind, classify_exception(coded).message) == (K.BUSY, "Broken")


def test_cycles_and_long_chains_terminate() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert classify_exception(a).kind is K.UNKNOWN
    head: BaseException = ValueError("head")
    current = head
    for i in range(1000):
        nxt = ValueError(str(i))
        current.__context__ = nxt
        current = nxt
    coded = sqlite3.OperationalError("disk I/O error")
    coded.sqlite_errorcode = 778  # type: ignore[attr-defined]
    current.__context__ = coded
    assert driver_error(head) is None  # beyond the walk's bound


@given(
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.sampled_from(["orig", "cause", "context"])), max_size=20),
    st.lists(st.one_of(st.none(), st.integers(-5, 1 << 16)), min_size=8, max_size=8),
)
def test_arbitrary_chains_never_raise(edges: list[tuple[int, int, str]], codes: list[int | None]) -> None:
    nodes: list[BaseException] = []
    for i, code in enumerate(codes):
        exc = sqlite3.OperationalError(f"node {i}")
        if code is not None:
            exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        nodes.append(exc)
    for src, dst, attr in edges:
        if attr == "orig":
            nodes[src].orig = nodes[dst]  # type: ignore[attr-defined]
        elif attr == "cause":
            nodes[src].__cause__ = nodes[dst]
        else:
            nodes[src].__context__ = nodes[dst]
    c = classify_exception(nodes[0])
    found = driver_error(nodes[0])
    assert isinstance(c, Classification)
    if found is not None:
        assert c.extended_code == found.sqlite_errorcode  # type: ignore[attr-defined]
        assert c.kind is kind_for_code(c.extended_code)


def test_module_does_not_import_apsw() -> None:
    code = "import sys, corestore.classify; print('apsw' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# The hook implementation
# ---------------------------------------------------------------------------------------------


def test_core_classifier_is_asked_last() -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    override = Classification(kind=K.FATAL_IO, source="other")

    class Other:
        @hookspecs.hookimpl
        def classify_error(self, store: object, error: BaseException, operation: object) -> Classification | None:
            return override if isinstance(error, sqlite3.Error) else None

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(Other())
    core = CoreClassifier()
    assert core.name == "core"
    pm.register(core, name=core.name)  # registered last, which pluggy would otherwise call first
    assert pm.hook.classify_error(store=None, error=busy, operation=None) is override
    verdict = pm.hook.classify_error(store=None, error=ValueError("x"), operation=None)
    assert (verdict.kind, verdict.source) == (K.UNKNOWN, "core")
