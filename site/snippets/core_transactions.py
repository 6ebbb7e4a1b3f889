import peewee

import corestore
from corestore import StoreError


class Account(peewee.Model):
    name = peewee.TextField(unique=True)
    balance = peewee.IntegerField(default=0)


def setup(store):
    store.bind([Account])
    store.database.create_tables([Account], safe=True)


store = corestore.open("bank.db", setup=setup)

# A write transaction: BEGIN IMMEDIATE, COMMIT, post-commit invariants. Never retried.
with store.transaction(name="open-accounts"):
    Account.create(name="alice", balance=100)
    Account.get_or_create(name="bob")  # peewee's own atomic() inside: a savepoint of this transaction

# A read transaction (BEGIN DEFERRED): one consistent snapshot. Writing inside it is an error.
with store.read():
    total = Account.select(peewee.fn.SUM(Account.balance)).scalar()
assert total == 100


# A unit of work for run(): retried as a whole on BUSY and TRANSIENT_IO, within the profile's
# retry budget and deadline_s, whichever is shorter.
def transfer():
    Account.update(balance=Account.balance - 10).where(Account.name == "alice").execute()
    Account.update(balance=Account.balance + 10).where(Account.name == "bob").execute()
    return "moved 10"


try:
    print(store.run(transfer, name="transfer", deadline_s=2.0))
except StoreError as err:
    if err.committed is None:
        # The COMMIT statement itself failed: the transfer may or may not be durable. run() did
        # not retry it (that could move the money twice). Look before doing it again.
        raise
    raise  # committed is False: nothing was written; safe to try again later

# A unit that is safe to repeat may say so: then even an uncertain COMMIT is retried.
store.run(lambda: Account.insert(name="carol").on_conflict_ignore().execute(), idempotent=True)

# Caller errors are never retried; they keep peewee's exception types.
try:
    with store.transaction():
        Account.create(name="alice")
except peewee.IntegrityError as err:
    assert isinstance(err, corestore.ConstraintError)
    assert err.committed is False

with store.read():
    assert Account.get(Account.name == "bob").balance == 10
store.close()
