"""Usage rows off the request path: submit() returns at once, one writer thread batches them,
flush() says when they are durable, and stats() accounts for every row."""
import json

import peewee

import corestore


class Usage(peewee.Model):
    kind = peewee.TextField()
    tokens = peewee.IntegerField()
    cost = peewee.FloatField(default=0.0)
    ts = peewee.FloatField(null=True)  # filled with the submit time (ts_column)


def create_schema(store: corestore.Store) -> None:
    store.bind([Usage])
    store.database.create_tables([Usage])


store = corestore.open(corestore.Profile(
    path="usage.db",
    plugins=("accounting",),
    pragmas={"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000},
    settings={"accounting": {"ts_column": "ts", "queue_size": 10000, "on_full": "reject"}},
), setup=create_schema)
acc = store.plugin("accounting")


def handle_request(i: int) -> None:
    """The request path: O(1), no I/O, never waits for SQLite (safe on an event loop too)."""
    if not acc.submit(Usage, {"kind": "chat", "tokens": i}):
        pass  # queue full: the row is counted as rejected and the writer logs it; the request goes on


for i in range(1000):
    handle_request(i)
acc.submit(Usage, {"tokens": 7})  # no kind: NOT NULL refuses this row, and only this row

assert acc.flush(timeout=5)  # everything accepted so far is in the database or the dead-letter file
st = acc.stats()
print({k: st[k] for k in ("submitted", "accepted", "rejected", "written", "dead_lettered", "pending", "batches")})
# {'submitted': 1001, 'accepted': 1001, 'rejected': 0, 'written': 1000, 'dead_lettered': 1, 'pending': 0, 'batches': 4}
assert st["accepted"] == st["written"] + st["dead_lettered"] + st["dropped"] + st["pending"]
assert st["submitted"] == st["accepted"] + st["rejected"]

letter = acc.dead_letters()[0]
print(letter.reason, letter.kind, letter.error)  # refused CONSTRAINT IntegrityError: NOT NULL constraint failed: usage.kind
with open(acc.dead_letter_path) as fh:  # usage.db.corestore-deadletter.jsonl
    print(json.loads(fh.readline())["row"])  # {'tokens': 7}

print(store.health().components["accounting"].summary)  # 0 pending, 1000 written
store.close()  # drains the queue first (the plugin's on_close), then closes the connections
