"""quarantine: what a caller sees, and what the doctor will show (run from an empty directory)."""
import corestore
from corestore_plugins.quarantine import format_marker, read_marker

store = corestore.open(corestore.Profile(
    path="events.db",
    plugins=("wal_invariants", "quarantine"),
    pragmas={"journal_mode": "wal", "synchronous": "full", "busy_timeout": 5000},
    settings={"quarantine": {"kinds": ["CORRUPT", "INVARIANT"], "allow_reads": True}},
))
store.database.execute_sql("CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, kind TEXT)")


def record(kind: str) -> None:
    try:
        store.run(lambda: store.database.execute_sql("INSERT INTO event (kind) VALUES (?)", (kind,)))
    except corestore.CorruptionError as err:
        if err.classification is not None and err.classification.name == "QUARANTINED":
            # Refused before touching the file: keep the event elsewhere, page a person.
            print("quarantined:", err)
            return
        raise  # the fault itself: the store is now quarantined (see the marker)


record("started")
print("quarantine:", store.health().components["quarantine"].summary)
marker = read_marker(store.path)  # what `corestore doctor PATH` shows; None when not quarantined
print(format_marker(marker) if marker else "no quarantine marker")
store.close()
