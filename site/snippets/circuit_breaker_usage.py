"""A caller that meets an open breaker: refused at once, nothing touched, told when to come back."""
import corestore

store = corestore.open(corestore.Profile(
    path="events.db",
    plugins=("circuit_breaker",),
    pragmas={"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000},
    settings={"circuit_breaker": {"failure_threshold": 3, "cooldown_s": 10}},
))
store.database.execute_sql("CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, kind TEXT)")


def record(kind: str) -> bool:
    """Write one event; on a refusal, give up for now (report it once, not per call)."""
    try:
        with store.transaction():
            store.database.execute_sql("INSERT INTO event (kind) VALUES (?)", (kind,))
        return True
    except corestore.CircuitOpenError as err:
        # retry_after: seconds until the breaker admits a probe (0 while half-open, None while
        # isolated). The file was not touched: no connection, no SQLite call.
        print(f"refused (retry_after={err.retry_after}): {err}")
        return False


breaker = store.plugin("circuit_breaker")
breaker.isolate("moving the volume")  # forced open until reset(): every store on the file, this process
assert record("login") is False

component = store.health().components["circuit_breaker"]
print(component.status.name, "-", component.summary)  # DOWN - ISOLATED: moving the volume; ...
assert component.details["state"] == "isolated"

breaker.reset()  # forced closed: the streaks and the cooldown growth are forgotten
assert record("login") is True
print(breaker.snapshot()["lanes"]["write"])  # {'consecutive_failures': 0, 'failures': 0, 'successes': 2}
store.close()
