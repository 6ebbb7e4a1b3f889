"""wal_invariants: handle a post-commit violation without writing twice (run from an empty directory)."""
import logging

import corestore

log = logging.getLogger("orders")

store = corestore.open(corestore.Profile(
    path="orders.db",
    plugins=("wal_invariants",),
    pragmas={"journal_mode": "wal", "synchronous": "full", "busy_timeout": 5000},
    settings={"wal_invariants": {"on_violation": "raise"}},  # default: "report" (never raises)
))
store.database.execute_sql("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")


def place_order() -> int:
    return store.database.execute_sql("INSERT INTO orders (item) VALUES (?)", ("book",)).lastrowid


try:
    order_id = store.run(place_order)
except corestore.InvariantViolation as err:
    # The order IS committed (err.committed is True): never run place_order again.
    order_id = err.result
    log.error("order %s committed, but the file looks wrong: %s", order_id,
              [(v.check, dict(v.evidence)) for v in err.violations])

component = store.health().components["wal_invariants"]
print(f"order {order_id}; wal_invariants {component.status.name}: {component.summary}")
store.close()
