"""A Starlette (or FastAPI: the same ASGI app) service on a store: every unit of work through
``await store.arun()``, usage rows through accounting's non-blocking ``submit()``, the store's
health through ``await store.ahealth()``, the Kubernetes probes (``/probes/livez``,
``/probes/readyz``, ``/probes/startupz``, ``/probes/healthz``, ``/probes/metrics``) from
``corestore_contrib.http_health`` mounted beside the routes, and ``aflush``/``aclose`` at shutdown.

Run it: ``python asyncio_starlette.py [PORT]`` (0 or nothing: an ephemeral port, printed).
"""
import contextlib
import socket
import sys

import peewee
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import corestore
from corestore_contrib.http_health import make_asgi_app


class Note(peewee.Model):
    text = peewee.TextField()


class Usage(peewee.Model):
    route = peewee.TextField()
    tokens = peewee.IntegerField()


def create_schema(store: corestore.Store) -> None:
    store.bind([Note, Usage])
    store.database.create_tables([Note, Usage])


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    store = await corestore.aopen(corestore.Profile(
        path="notes.db", plugins=("accounting",),
        pragmas={"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000},
    ), setup=create_schema, threads=8, queue=256)
    app.state.store = store
    app.state.acc = store.plugin("accounting")
    try:
        yield
    finally:
        await app.state.acc.aflush(5.0)  # usage rows durable before the store closes
        await store.aclose()


async def add_note(request: Request) -> JSONResponse:
    store, acc = request.app.state.store, request.app.state.acc
    text = (await request.json())["text"]
    # the whole unit runs on the store's executor; a client that disconnects mid-request
    # cancels it: it never runs, stops before COMMIT, or finishes (never half of it)
    note_id = await store.arun(lambda: Note.create(text=text).id, deadline_s=2.0, name="add_note")
    acc.submit(Usage, {"route": "add_note", "tokens": len(text)})  # O(1), never blocks the loop
    return JSONResponse({"id": note_id}, status_code=201)


async def get_note(request: Request) -> JSONResponse:
    store = request.app.state.store
    note_id = int(request.path_params["note_id"])
    text = await store.arun(lambda: Note.get_or_none(Note.id == note_id), read=True, deadline_s=2.0)
    if text is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse({"id": note_id, "text": text.text})


async def health(request: Request) -> JSONResponse:
    report = await request.app.state.store.ahealth(deadline_s=2.0)
    return JSONResponse({"status": report.status.name}, status_code=200 if report.status.name != "DOWN" else 503)


app = Starlette(routes=[
    Route("/notes", add_note, methods=["POST"]),
    Route("/notes/{note_id:int}", get_note),
    Route("/health", health),
    # probe-aware health for the orchestrator: readiness fails while notes.db is critical and its
    # breaker is open, it is quarantined or DOWN; liveness never fails for the database
    Mount("/probes", app=make_asgi_app(expect=["notes.db"], critical=["notes.db"])),
], lifespan=lifespan)


if __name__ == "__main__":
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    sock.listen(128)  # connections wait in the backlog until the app has started
    print("listening on", sock.getsockname()[1], flush=True)
    # Ctrl-C: uvicorn shuts down (the lifespan flushes and closes the store), then re-raises it
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
