"""The dashboard's snapshots: ``GET /snapshots`` (``?sandbox=ID``, ``?all=1``) and the
delete form ``POST /snapshots/{id}/delete``.

Both go through the snapshot operations the API's routes call (``GET /v1/snapshots``,
``DELETE /v1/snapshots/{id}``), as the signed-in caller: an actor sees and deletes only
its own snapshots (another's answers not found), an admin all. Taking one and forking are
a sandbox's actions (api/web/actions.py).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sandboxer.api.web import session
from sandboxer.api.web.pages import failed, high_water
from sandboxer.api.web.render import page, redirect
from sandboxer.api.web.session import Viewer
from sandboxer.errors import SandboxerError

router = APIRouter(include_in_schema=False)
Who = Annotated[Viewer, Depends(session.viewer)]
DELETABLE = frozenset({"ready", "failed", "creating", "deleting"})


@router.get("/snapshots")
async def snapshots(request: Request, who: Who) -> Response:
    svc = session.service(request)
    sandbox_id = (request.query_params.get("sandbox") or "").strip()[:128] or None
    everything = request.query_params.get("all") == "1"
    try:
        items = await asyncio.to_thread(svc.app.list_snapshots, sandbox_id=sandbox_id,
                                        all=everything, caller=who.caller)
    except SandboxerError as e:
        return failed(request, who, e)
    docs = [s.document() for s in items][::-1]  # newest first
    return page(request, "snapshots.html", who, snapshots=docs, sandbox=sandbox_id,
                all=everything, deletable=DELETABLE, after=await high_water(request, who))


@router.post("/snapshots/{snapshot_id}/delete")
async def delete(request: Request, who: Who, snapshot_id: str) -> Response:
    svc = session.service(request)
    try:
        session.check_csrf(await session.form(request), who)
        await svc.delete_snapshot(who.caller, snapshot_id[:128])
    except SandboxerError as e:
        return failed(request, who, e)
    return redirect("/snapshots")
