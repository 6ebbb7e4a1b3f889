"""A container probe that reads the snapshot: no corestore import, no database connection."""
import json
import os
import socket
import subprocess
import sys

# (setup for this example: a store that writes its snapshot, in another process)
subprocess.run([sys.executable, "-c", """
import corestore
store = corestore.open(corestore.Profile(path="app.db", plugins=("health",),
                                         settings={"health": {"snapshot_path": "app.health.json"}}))
store.health()
store.close()
"""], check=True)


# --8<-- [start:probe]
def probe(snapshot_path: str) -> int:
    """0 UP, 1 DEGRADED, 2 DOWN, like `corestore health`; 2 when nobody speaks for the database."""
    try:
        with open(snapshot_path) as fh:  # renamed into place: never a partial file
            snapshot = json.load(fh)
    except FileNotFoundError:
        return 2
    writer = snapshot["snapshot"]
    if writer["closed"]:
        return 2  # the application closed the store
    if writer["host"] == socket.gethostname():
        try:
            os.kill(writer["pid"], 0)
        except ProcessLookupError:
            return 2  # the application is gone; its last word was not "closed"
        except PermissionError:
            pass
    return {"up": 0, "unknown": 0, "degraded": 1, "down": 2}[snapshot["status"]]
# --8<-- [end:probe]


print(probe("app.health.json"))
assert probe("app.health.json") == 2  # the setup process exited: it closed its store
assert probe("missing.json") == 2
