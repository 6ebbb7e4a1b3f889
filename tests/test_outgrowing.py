"""The "Outgrowing one machine" guide: its data copy script (site/snippets/outgrow_copy.py) runs as
shown, from a SQLite store to a PostgreSQL store (a private schema on the test server), and the
copied rows, their types and the sequences are right; the guide's TOML moves a profile that
extended ``default`` onto ``postgresql`` and keeps its plugins and settings."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

import corestore
from corestore.profiles import load_config, resolve_profile

from helpers import ROOT, child_env

SNIPPET = ROOT / "site" / "snippets" / "outgrow_copy.py"
PAGE = ROOT / "site" / "guides" / "outgrowing-one-machine.md"

MODELS = '''
import datetime
import peewee

class Customer(peewee.Model):
    name = peewee.TextField()
    created = peewee.DateTimeField(default=datetime.datetime(2026, 1, 2, 3, 4, 5))

class Order(peewee.Model):  # "order" is a reserved word in PostgreSQL: the script must quote it
    customer = peewee.ForeignKeyField(Customer, backref="orders")
    total = peewee.DecimalField(decimal_places=2)
    paid = peewee.BooleanField(default=False)

MODELS = [Customer, Order]
'''


def test_copy_script_moves_every_row_and_the_sequences(tmp_path: Path, pg_url: str) -> None:
    pytest.importorskip("psycopg")
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent(MODELS))
    sys.path.insert(0, str(tmp_path))
    try:
        from myapp.models import MODELS as models  # noqa: N811
        from myapp.models import Customer, Order

        source = corestore.open(str(tmp_path / "events.db"))
        with source.database.bind_ctx(models):
            source.database.create_tables(models)
            with source.transaction():
                for i in range(2345):  # more than two batches of 1000
                    customer = Customer.create(name=f"c{i}")
                    Order.create(customer=customer, total=Decimal("12.50") + i, paid=i % 3 == 0)
            with source.transaction():  # a gap in the ids: the sequence must follow max(id), not the count
                Customer.delete().where(Customer.id == 5).execute()
                Order.delete().where(Order.customer == 5).execute()
        source.close()

        env = child_env()
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])  # myapp, then the project
        proc = subprocess.run([sys.executable, str(SNIPPET), str(tmp_path / "events.db"), pg_url], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.splitlines() == ["customer: 2344 rows read, 2344 on the server",
                                            "order: 2344 rows read, 2344 on the server"]

        target = corestore.open(pg_url)
        with target.database.bind_ctx(models):
            with target.read():
                assert Customer.select().count() == 2344 and Order.select().count() == 2344
                last = Order.get_by_id(2345)
                assert last.total == Decimal("2356.50") and last.paid is (2344 % 3 == 0)
                assert last.customer.name == "c2344"
                assert Customer.get_by_id(1).created.isoformat() == "2026-01-02T03:04:05"
                assert Order.select().where(Order.paid).count() == sum(1 for i in range(2345) if i % 3 == 0 and i != 4)
            with target.transaction():
                fresh = Customer.create(name="after the move")
                order = Order.create(customer=fresh, total=Decimal("1.00"))
            assert fresh.id == 2346 and order.id == 2346  # past the copied ids
        target.close()
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("myapp.models", "myapp"):
            sys.modules.pop(name, None)


def _toml_blocks() -> list[str]:
    text = PAGE.read_text()
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```toml"):
            inside, current = True, []
        elif inside and stripped.startswith("```"):
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line[4:] if line.startswith("    ") else line)
    return blocks


def test_the_guides_profiles_keep_plugins_and_settings(tmp_path: Path) -> None:
    sqlite_toml, postgres_toml = _toml_blocks()
    assert tomllib.loads(sqlite_toml)["profiles"]["ingest"]["extends"] == "default"
    profiles = {}
    for label, text in (("sqlite", sqlite_toml), ("postgresql", postgres_toml)):
        path = tmp_path / f"{label}.toml"
        path.write_text(text)
        config = load_config(str(path))
        assert config is not None
        binding = config.databases["events"]
        profiles[label] = resolve_profile(binding.profile, config=config, path=binding.path, binding=binding)
    sqlite, postgres = profiles["sqlite"], profiles["postgresql"]
    assert postgres.engine == "postgresql" and sqlite.engine == "sqlite"
    portable = [p for p in sqlite.plugins if p in ("circuit_breaker", "health", "accounting")]
    assert list(postgres.plugins) == portable
    assert postgres.settings_for("circuit_breaker") == sqlite.settings_for("circuit_breaker")
    assert dict(postgres.server_settings) == {"statement_timeout": "5s"}
