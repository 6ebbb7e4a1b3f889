"""Mount the probe-aware health apps (here called directly: a WSGI call and an ASGI call)."""
import asyncio
import os

import corestore

# --8<-- [start:imports]
from corestore_contrib.http_health import make_asgi_app, make_wsgi_app

# --8<-- [end:imports]
os.makedirs("data", exist_ok=True)
with open("corestore.toml", "w") as fh:
    fh.write('[databases.orders]\npath = "data/orders.db"\nprofile = "default"\n')

# --8<-- [start:mount]
# Starlette / FastAPI: app.mount("/health", health) -> GET /health/readyz
health = make_asgi_app(expect=["orders"], config="corestore.toml")
# Flask / Django: DispatcherMiddleware(app.wsgi_app, {"/health": wsgi_health})
wsgi_health = make_wsgi_app(expect=["orders"], config="corestore.toml")
# --8<-- [end:mount]


def wsgi_get(path: str) -> str:
    seen = {}
    body = b"".join(wsgi_health({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda status, headers: seen.update(s=status)))
    return f"{seen['s']} {body.decode().strip()[:40]}"


async def asgi_get(path: str) -> int:
    sent = []

    async def receive():
        return {"type": "http.request"}

    async def send(message):
        sent.append(message)

    await health({"type": "http", "method": "GET", "path": "/health" + path, "root_path": "/health"}, receive, send)
    return sent[0]["status"]


assert wsgi_get("/startupz").startswith("503")  # the store is not open yet
store = corestore.open("orders", config="corestore.toml")
assert wsgi_get("/startupz").startswith("200")
assert asyncio.run(asgi_get("/readyz")) == 200
assert asyncio.run(asgi_get("/livez")) == 200
store.close()
