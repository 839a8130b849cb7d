"""Routes of snapshots and forks (docs/api.md#snapshots), beside ``api/routes.py``'s, with
the same declared documents, error statuses, operationIds and tags."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from sandboxer.api.models import ForkRequest, SnapshotRequest
from sandboxer.api.routes import BODY, SANDBOX, SandboxId, Svc, Who, _json, errors
from sandboxer.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NoTarget,
    NotFound,
    ProvisionFailed,
    SecretBackendUnavailable,
    SecretError,
)
from sandboxer.models import responses as r
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.models.snapshot import SnapshotStatus

router = APIRouter(prefix="/v1")
SnapshotId = Annotated[str, Path(max_length=64, description="a snapshot id (snap-…)")]
TAG = {"name": "snapshots", "description": "snapshots of sandboxes' data, and forks"}


@router.post("/sandboxes/{sandbox_id}/snapshot", status_code=201,
             response_model=SnapshotStatus, tags=["snapshots"],
             summary="record a snapshot of a ready, stopped or paused sandbox (returns once "
             "ready or failed); the sandbox stays in its state",
             responses=errors(*SANDBOX, Conflict, *BODY, ProvisionFailed))
async def snapshot_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId,
                           body: SnapshotRequest | None = None) -> JSONResponse:
    req = body if body is not None else SnapshotRequest()
    return _json(await svc.snapshot(who, sandbox_id, req), 201)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201, response_model=SandboxStatus,
             tags=["snapshots"], summary="snapshot a sandbox and create a new one of its "
             "profile from it (returns once ready or failed)",
             responses=errors(*SANDBOX, Forbidden, Conflict, *BODY, SecretError,
                              SecretBackendUnavailable, ProvisionFailed, NoTarget))
async def fork_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId,
                       body: ForkRequest | None = None) -> JSONResponse:
    req = body if body is not None else ForkRequest()
    return _json(await svc.fork(who, sandbox_id, req), 201)


@router.get("/snapshots", summary="list snapshots (those holding data by default)",
            tags=["snapshots"], response_model=r.SnapshotList, responses=errors(InvalidInput))
def list_snapshots(
    svc: Svc, who: Who,
    sandbox: Annotated[str | None, Query(max_length=64, description="only its")] = None,
    all: Annotated[bool, Query(description="include deleted and failed")] = False,
) -> JSONResponse:
    items = svc.app.list_snapshots(sandbox_id=sandbox, all=all, caller=who)
    return _json({"schema": "sandboxer.snapshots/v1", "items": [s.document() for s in items]})


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotStatus, tags=["snapshots"],
            summary="one snapshot", responses=errors(NotFound, InvalidInput))
def get_snapshot(svc: Svc, who: Who, snapshot_id: SnapshotId) -> JSONResponse:
    return _json(svc.app.get_snapshot(snapshot_id, caller=who).document())


@router.delete("/snapshots/{snapshot_id}", response_model=SnapshotStatus, tags=["snapshots"],
               summary="delete a snapshot's data (idempotent)",
               responses=errors(NotFound, InvalidInput, Conflict, ProvisionFailed))
async def delete_snapshot(svc: Svc, who: Who, snapshot_id: SnapshotId) -> JSONResponse:
    return _json(await svc.delete_snapshot(who, snapshot_id))
