"""wal_guard: open a store, then read what the guard found (run from an empty directory)."""
import corestore

profile = corestore.Profile(
    path="app.db",
    plugins=("wal_guard",),  # the default profile enables it together with the other policies
    pragmas={"busy_timeout": 5000, "synchronous": "full", "wal_autocheckpoint": 1000},
    settings={"wal_guard": {"fallback": "none", "switch_attempts": 5}},
)
store = corestore.open(profile)  # the first connection opens here: a refusal raises now
component = store.health().components["wal_guard"]
print(f"wal_guard: {component.status.name} - {component.summary}")
print({key: component.details[key] for key in ("header_mode", "connection_mode", "fallback",
                                                "switched_by_this_process", "wal_bytes")})
store.close()
