"""`/_control/*`: drive a FakeVLLM that runs in another process.

GET  /_control/stats                         counters, in-flight, every request record
POST /_control/push                          a Script dict, or a list of them, to the queue
PUT  /_control/default                       the Script used when the queue is empty
POST /_control/reset                         forget requests, queue, counters, prefix cache
GET  /_control/next_disconnect?within=S      the next client disconnect (504 if none)
POST /_control/stop_listening[?seconds=S]    refuse connections (for S seconds)
POST /_control/resume_listening
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import wire
from .script import Script, from_dict

if TYPE_CHECKING:
    from .server import FakeVLLM

PREFIX = "/_control"


def json_response(data: Any, status: int = 200) -> web.Response:
    body = wire.dumps(data).encode()
    return web.Response(
        status=status, body=body, headers=wire.headers("application/json", len(body))
    )


def add_routes(app: web.Application, fake: FakeVLLM) -> None:
    resume_tasks: set[asyncio.Task[None]] = set()

    async def stats(request: web.Request) -> web.Response:
        return json_response(fake.stats())

    async def push(request: web.Request) -> web.Response:
        data = await request.json()
        fake.push(*(from_dict(Script, d) for d in (data if isinstance(data, list) else [data])))
        return json_response({"queued_scripts": len(fake.queue)})

    async def default(request: web.Request) -> web.Response:
        fake.default = from_dict(Script, await request.json())
        return json_response({"ok": True})

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return json_response({"ok": True})

    async def next_disconnect(request: web.Request) -> web.Response:
        try:
            rec = await fake.next_disconnect(float(request.query.get("within", 2.0)))
        except TimeoutError:
            return json_response({"error": "no disconnect"}, 504)
        return json_response(rec.to_json())

    async def resume_after(seconds: float) -> None:
        await asyncio.sleep(seconds)
        await fake.resume_listening()

    async def stop_listening(request: web.Request) -> web.Response:
        await fake.stop_listening()
        if "seconds" in request.query:
            task = asyncio.create_task(resume_after(float(request.query["seconds"])))
            resume_tasks.add(task)
            task.add_done_callback(resume_tasks.discard)
        return json_response({"ok": True})

    async def resume_listening(request: web.Request) -> web.Response:
        await fake.resume_listening()
        return json_response({"ok": True})

    r = app.router
    r.add_get(f"{PREFIX}/stats", stats)
    r.add_post(f"{PREFIX}/push", push)
    r.add_put(f"{PREFIX}/default", default)
    r.add_post(f"{PREFIX}/reset", reset)
    r.add_get(f"{PREFIX}/next_disconnect", next_disconnect)
    r.add_post(f"{PREFIX}/stop_listening", stop_listening)
    r.add_post(f"{PREFIX}/resume_listening", resume_listening)
