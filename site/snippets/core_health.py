import json

import corestore

store = corestore.open("app.db")
report = store.health()  # aggregates every plugin's component and the core's "database" probe

print(report.status, report.profile)
for name, component in report.components.items():
    print(f"{name:16} {component.status.name:9} {component.summary}")

document = report.to_dict()  # the JSON schema `corestore health --json` prints
print(json.dumps(document, indent=2)[:200])
assert document["status"] == "up" and "database" in document["components"]
assert report.status.exit_code == 0  # the CLI's exit code for this status: 0 UP, 1 DEGRADED, 2 DOWN
store.close()
