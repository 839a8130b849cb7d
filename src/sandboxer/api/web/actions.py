"""The dashboard's actions (POST forms): extend, stop, start, pause, resume, snapshot, fork,
destroy.

Each is the API route's own call on the API's service (api/service.py), as the signed-in
caller: the same checks, the same authorization (another actor's sandbox is not found),
the same events and publisher wake-up. A form carries the session's CSRF token; success
answers 303 to the sandbox's page (the list after a destroy, its snapshots after a
snapshot, the new sandbox after a fork), a failure the error's page with its status.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from sandboxer.api.web import session
from sandboxer.api.web.pages import failed
from sandboxer.api.web.render import redirect
from sandboxer.api.web.session import Viewer
from sandboxer.errors import InvalidInput, NotFound, SandboxerError
from sandboxer.models.requests import ForkRequest, SnapshotRequest
from sandboxer.values import LIFECYCLE

router = APIRouter(include_in_schema=False)
M = TypeVar("M", bound=BaseModel)
Who = Annotated[Viewer, Depends(session.viewer)]
ACTIONS = ("extend", "destroy", "snapshot", "fork", *LIFECYCLE)


def _request(model: type[M], **fields: Any) -> M:
    """The API's request model of a form's fields; InvalidInput naming the field."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        where = ".".join(str(p) for p in e.errors()[0].get("loc", ()))
        raise InvalidInput(f"{where}: {e.errors()[0].get('msg', 'invalid')}") from e


@router.post("/sandboxes/{sandbox_id}/{action}")
async def act(request: Request, who: Who, sandbox_id: str, action: str) -> Response:
    svc = session.service(request)
    try:
        if action not in ACTIONS:
            raise NotFound(f"no dashboard action {action!r}",
                           hint=f"one of {', '.join(ACTIONS)}")
        fields = await session.form(request)
        session.check_csrf(fields, who)
        sandbox_id = sandbox_id[:128]
        if action == "extend":
            await asyncio.to_thread(svc.extend, who.caller, sandbox_id,
                                    fields.get("ttl", "").strip())
        elif action == "destroy":
            await svc.destroy(who.caller, sandbox_id)
            return redirect("/")
        elif action == "snapshot":
            name = fields.get("name", "").strip() or None
            await svc.snapshot(who.caller, sandbox_id, _request(SnapshotRequest, name=name))
            return redirect(f"/snapshots?sandbox={sandbox_id}")
        elif action == "fork":
            made = await svc.fork(who.caller, sandbox_id, ForkRequest())
            return redirect(f"/sandboxes/{made['id']}")
        else:
            await svc.lifecycle(who.caller, action, sandbox_id)
    except SandboxerError as e:
        return failed(request, who, e)
    return redirect(f"/sandboxes/{sandbox_id}")
