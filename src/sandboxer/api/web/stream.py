"""The dashboard's live updates: server-sent events over the outbox.

``GET /events/stream`` (the session cookie; 401 without one) sends each new event the
caller may see — the API's ``GET /v1/events`` read, so an actor gets only its own
sandboxes' events — as ``event: sandbox`` with the ``sandboxer.event/v1`` document as data
and its ``seq`` as the id; a browser that reconnects resumes after ``Last-Event-ID``. The
outbox is read every POLL seconds (creates by the CLI or another replica write the store,
not this process), a comment every HEARTBEAT seconds keeps proxies from closing the
connection, and a stream ends after LIFETIME seconds (the browser reconnects at once), when
the session's token stops being valid (``event: signed-out``), or when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from sandboxer.api.web import session
from sandboxer.api.web.session import Viewer
from sandboxer.models.queries import EventsQuery

router = APIRouter(include_in_schema=False)
POLL = 1.0
HEARTBEAT = 15.0
LIFETIME = 300.0
BATCH = 200


def _start(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    return int(raw) if raw.isdigit() and len(raw) < 19 else 0


async def _events(request: Request, who: Viewer, after: int,
                  sandbox_id: str | None) -> AsyncIterator[str]:
    svc = session.service(request)
    stopping: asyncio.Event = request.app.state.stopping
    loop = asyncio.get_running_loop()
    started = beat = loop.time()
    yield "retry: 1000\n\n"
    while loop.time() - started < LIFETIME and not stopping.is_set():
        try:
            who = await session.viewer(request)
        except session.SignInNeeded:
            yield "event: signed-out\ndata: {}\n\n"
            return
        query = EventsQuery(after=after, sandbox_id=sandbox_id, limit=BATCH)
        docs = await asyncio.to_thread(svc.app.event_documents, query, caller=who.caller)
        for doc in docs:
            after = int(doc["seq"])
            yield f"id: {after}\nevent: sandbox\ndata: {json.dumps(doc)}\n\n"
        if docs:
            beat = loop.time()
            if len(docs) == BATCH:
                continue
        elif loop.time() - beat >= HEARTBEAT:
            beat = loop.time()
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), POLL)


@router.get("/events/stream")
async def stream(request: Request) -> Response:
    try:
        who = await session.viewer(request)
    except session.SignInNeeded:
        return Response("sign in first\n", status_code=401, media_type="text/plain",
                        headers={"Cache-Control": "no-store"})
    sandbox_id = request.query_params.get("sandbox") or None
    return StreamingResponse(
        _events(request, who, _start(request), sandbox_id[:128] if sandbox_id else None),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no",
                 "X-Content-Type-Options": "nosniff"})
