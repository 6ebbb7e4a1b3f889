"""``.ci/peewee_suite.py``: peewee's test ``db`` is really replaced by a store's database, and a
test class that hangs is reported as ``hang`` after the time limit instead of being waited on.

The script itself needs a checkout of peewee's repository and a network-free package index to
run in full; here it runs on a small stand-in checkout laid out as peewee's is (``tests/base.py``
with ``db``, ``TestModel`` and the test-case classes), in this interpreter's environment.
"""
from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from helpers import ROOT

BASE = '''
import unittest
from peewee import *
db = SqliteDatabase("peewee_test.db")
class TestModel(Model):
    class Meta:
        database = db
class BaseTestCase(unittest.TestCase):
    pass
class DatabaseTestCase(BaseTestCase):
    database = db
    def setUp(self):
        if not self.database.is_closed():
            self.database.close()
        self.database.connect()
    def tearDown(self):
        self.database.close()
class ModelDatabaseTestCase(DatabaseTestCase):
    database = db
class ModelTestCase(ModelDatabaseTestCase):
    database = db
    requires = None
    def setUp(self):
        super().setUp()
        self.database.drop_tables(self.requires, safe=True)
        self.database.create_tables(self.requires)
'''

MODULE = '''
import time
from .base import ModelTestCase, TestModel, db
from peewee import IntegerField
class Item(TestModel):
    value = IntegerField()
class TestThroughStore(ModelTestCase):
    requires = [Item]
    def test_db_is_the_store_database(self):
        self.assertEqual(type(Item._meta.database).__name__, "PolicySqliteDatabase")
        self.assertIs(db, self.database)
    def test_session(self):
        db.session_start(); Item.create(value=1); db.session_commit()
        self.assertEqual(Item.select().count(), 1)
class TestHangs(ModelTestCase):
    requires = [Item]
    def test_sleeps(self):
        time.sleep(60)
'''


@pytest.fixture
def suite(tmp_path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("peewee_suite", ROOT / ".ci" / "peewee_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkout(tmp_path: Path) -> str:
    tests = tmp_path / "peewee" / "tests"
    tests.mkdir(parents=True)
    (tests / "__init__.py").write_text("raise RuntimeError('the script must not import tests/__init__.py')\n")
    (tests / "base.py").write_text(textwrap.dedent(BASE))
    (tests / "standin.py").write_text(textwrap.dedent(MODULE))
    return str(tmp_path / "peewee")


def test_store_database_replaces_peewees_test_db(suite: ModuleType, checkout: str, tmp_path: Path) -> None:
    python = Path(sys.executable)
    through = suite.run_class(python, checkout, "corestore", "standin", "TestThroughStore", 60, str(tmp_path))
    plain = suite.run_class(python, checkout, "plain", "standin", "TestThroughStore", 60, str(tmp_path))
    assert {k: v[0] for k, v in through.items()} == {
        "standin.TestThroughStore.test_db_is_the_store_database": "pass",
        "standin.TestThroughStore.test_session": "pass",
    }, through
    assert plain["standin.TestThroughStore.test_db_is_the_store_database"][0] == "fail"
    assert plain["standin.TestThroughStore.test_session"][0] == "pass"


def test_a_hanging_class_is_reported_not_waited_on(suite: ModuleType, checkout: str, tmp_path: Path) -> None:
    out = suite.run_class(Path(sys.executable), checkout, "corestore", "standin", "TestHangs", 3, str(tmp_path))
    assert out == {"standin.TestHangs.test_sleeps": ("hang", "no result within 3 s (hang)")}
    assert suite.list_classes(Path(sys.executable), checkout, "standin", str(tmp_path)) == ["TestThroughStore", "TestHangs"]
