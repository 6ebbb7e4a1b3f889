"""The health plugin: pace the database probe and write the report where a monitor can read it."""
import json

import corestore

profile = corestore.Profile(
    path="app.db",
    plugins=("health",),
    pragmas={"journal_mode": "wal", "busy_timeout": 5000},
    settings={"health": {"probe_interval_s": 5, "snapshot_path": "app.health.json"}},
)
store = corestore.open(profile)
report = store.health()  # probes the database (at most every 5 s) and writes the first snapshot
store.plugin("health").flush()  # the file is written on the plugin's thread; wait for it here

with open("app.health.json") as fh:  # what a container probe, a sidecar or `corestore health` reads
    snapshot = json.load(fh)
print(snapshot["status"], sorted(snapshot["components"]), snapshot["snapshot"]["pid"])
assert snapshot["status"] == report.status.value == "up"
assert snapshot["snapshot"]["closed"] is False

store.close()  # the last report is written once more, marked closed
with open("app.health.json") as fh:
    assert json.load(fh)["snapshot"]["closed"] is True
