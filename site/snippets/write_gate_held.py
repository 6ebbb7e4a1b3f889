"""write_gate: writers queue in order; a checkpoint takes the gate too (run from an empty directory)."""
import corestore

store = corestore.open(corestore.Profile(
    path="orders.db",
    plugins=("wal_guard", "write_gate"),
    pragmas={"journal_mode": "wal", "synchronous": "full", "busy_timeout": 5000},
))
store.database.execute_sql("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")
for item in ("tea", "milk"):
    store.run(lambda item=item: store.database.execute_sql("INSERT INTO orders (item) VALUES (?)", (item,)))

gate = store.plugin("write_gate")
with gate.held(timeout_s=2.0) as held:  # True, or False if it could not be had in time
    busy, log, done = store.checkpoint("TRUNCATE")  # corestore's writers queue behind it
    print("gate held:", held, "checkpoint:", (busy, log, done))

print("write_gate:", store.health().components["write_gate"].summary)
store.close()
