"""What a refused call costs: force the breaker open and time the caller's whole path.

``python -m benchmarks --only breaker`` does the same with alternating pairs against a committed
write (``breaker.rejected_call``) and reports the breaker's share of the default hot path.
"""
import statistics
import time

import corestore

store = corestore.open(corestore.Profile(
    path="cost.db",
    plugins=("circuit_breaker",),
    pragmas={"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000},
))
store.database.execute_sql("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
breaker = store.plugin("circuit_breaker")
breaker.isolate("measuring refusals")

samples = []
for _ in range(7):
    calls = 2000
    start = time.perf_counter()
    for i in range(calls):
        try:
            with store.transaction():
                store.database.execute_sql("INSERT INTO t (v) VALUES (?)", (i,))
        except corestore.CircuitOpenError:
            pass
    samples.append((time.perf_counter() - start) / calls * 1e6)

breaker.reset()
assert store.database.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 0  # nothing got through
print(f"a refused transaction: {statistics.median(samples):.1f} µs (median of {len(samples)} runs)")
store.close()
