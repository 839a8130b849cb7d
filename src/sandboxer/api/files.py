"""The files route of the HTTP API (docs/api.md): one file into or out of a ready sandbox.

``PUT /v1/sandboxes/{id}/files?path=P`` takes the file as the body
(``application/octet-stream``), streamed to a private temporary file of the server's home
(0600) and counted against ``SANDBOXER_API_MAX_FILE``, then copies it in over the
sandbox's pinned SSH (``CopiesFiles``); ``GET`` copies the file out the same way and
streams it back. The caller needs no key of the sandbox: the owner (or an admin) of a
ready sandbox may, anyone else gets not found, as for every route.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from sandboxer import envvars
from sandboxer.api.routes import SANDBOX, SandboxId, Svc, Who, errors
from sandboxer.errors import Conflict, RequestTooLarge
from sandboxer.models.files import FileCopied
from sandboxer.service.files import copied
from sandboxer.values import MAX_REMOTE_PATH

router = APIRouter(prefix="/v1")
Remote = Annotated[str, Query(min_length=1, max_length=MAX_REMOTE_PATH,
                              description="the path in the sandbox (relative: from the "
                              "login directory of its user)")]
FILE_ERRORS = (*SANDBOX, Conflict, RequestTooLarge)
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"request body over {limit} bytes",
                           hint="send less; the limit is SANDBOXER_API_MAX_FILE; "
                           "`sandboxer cp` (scp) has none")


@router.put("/sandboxes/{sandbox_id}/files", response_model=FileCopied,
            summary="write one file into a ready sandbox (the body, octet-stream)",
            tags=["sandboxes"], responses=errors(*FILE_ERRORS),
            openapi_extra={"requestBody": {"required": True, "content": BINARY}})
async def upload_file(request: Request, svc: Svc, who: Who, sandbox_id: SandboxId,
                      path: Remote) -> JSONResponse:
    from sandboxer.files import remote_path

    remote_path(path)
    await svc.get_document(who, sandbox_id)  # not found, and an endpoint served again
    svc.app.check_copy(sandbox_id, caller=who)  # before the body: not ready, cannot
    limit = envvars.api_max_file(svc.settings.env)
    with svc.app.scratch() as tmp:
        size = 0
        with tmp.open("wb") as out:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    if chunk:
                        await asyncio.to_thread(out.write, chunk)
            except ClientDisconnect as e:  # BodyLimit answered 413 already, or a hang-up
                raise _too_large(limit) from e
        written = await svc.app.put_file(sandbox_id, tmp, path, caller=who)
    return JSONResponse(copied(sandbox_id, path, written, "in"))


@router.get("/sandboxes/{sandbox_id}/files", response_class=FileResponse,
            summary="read one file of a ready sandbox (octet-stream)", tags=["sandboxes"],
            responses={200: {"content": BINARY, "description": "the file's bytes"},
                       **errors(*FILE_ERRORS)})
async def download_file(svc: Svc, who: Who, sandbox_id: SandboxId, path: Remote,
                        max_bytes: Annotated[int | None, Query(
                            ge=0, description="refuse (413) a file larger than this; "
                            "the server's SANDBOXER_API_MAX_FILE applies anyway")] = None,
                        ) -> FileResponse:
    from sandboxer.files import remote_path

    remote_path(path)
    await svc.get_document(who, sandbox_id)
    limit = envvars.api_max_file(svc.settings.env)
    cap = limit if max_bytes is None else min(limit, max_bytes)
    tmp = svc.app.scratch_file()
    try:
        await svc.app.get_file(sandbox_id, path, tmp, caller=who, max_bytes=cap)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileResponse(tmp, media_type="application/octet-stream",
                        background=BackgroundTask(tmp.unlink, missing_ok=True))
