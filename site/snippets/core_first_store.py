import peewee

import corestore


class Event(peewee.Model):
    kind = peewee.TextField()


def create_schema(store):
    store.bind([Event])  # bind the models to this store's database
    store.database.create_tables([Event], safe=True)


# The built-in "default" profile: WAL, synchronous=FULL, wal_guard,
# wal_invariants, circuit_breaker and health. setup runs once per store,
# under the cross-process init lock.
store = corestore.open("app.db", setup=create_schema)

# BEGIN IMMEDIATE ... COMMIT, then the post-commit invariants
with store.transaction():
    Event.create(kind="signup")

# a unit of work, retried as a whole on BUSY
store.run(lambda: Event.create(kind="retried"))

with store.read():  # one consistent snapshot
    print(Event.select().count(), "events")  # 2 events

print(store.health().status)  # UP
store.close()
