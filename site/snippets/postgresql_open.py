"""A PostgreSQL store: open it on a URL, bind the models, run units of work (site/postgresql.md).

Run by tests/test_postgres_core.py against the test server (DATABASE_URL set to a private schema).
"""
import os

import peewee

import corestore


class Account(peewee.Model):
    owner = peewee.CharField(unique=True)
    balance = peewee.IntegerField(default=0)


# --8<-- [start:open]
store = corestore.open(os.environ.get("DATABASE_URL", "postgresql://app@127.0.0.1:5432/app"))
store.bind([Account])
Account.create_table(safe=True)


def transfer(src: str, dst: str, amount: int) -> None:
    Account.update(balance=Account.balance - amount).where(Account.owner == src).execute()
    Account.update(balance=Account.balance + amount).where(Account.owner == dst).execute()


with store.transaction():
    Account.create(owner="ann", balance=100)
    Account.create(owner="bob")
store.run(lambda: transfer("ann", "bob", 30))  # retried as a whole on 40001/40P01/lost connection
with store.read():  # REPEATABLE READ READ ONLY: one snapshot
    print({a.owner: a.balance for a in Account.select().order_by(Account.owner)})
try:
    with store.read():
        Account.create(owner="eve")
except corestore.ReadOnlyError as err:
    print("refused:", err.classification.name, err.classification.sqlstate)
print(store.path, store.health().status.name)
store.close()
# --8<-- [end:open]
