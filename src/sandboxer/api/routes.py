"""The routes of docs/api.md, including what the CLI needs to work against a server."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from sandboxer.access import Caller
from sandboxer.api.models import (
    NAME,
    PROFILE_ID,
    CreateRequest,
    ExtendRequest,
    ImageBuildRequest,
    TargetAddRequest,
    ValidateRequest,
)
from sandboxer.api.service import Service
from sandboxer.errors import InvalidInput, Unauthenticated
from sandboxer.models.events import Event
from sandboxer.models.queries import STATES
from sandboxer.models.reachability import Reachability
from sandboxer.models.sandbox import SandboxStatus

bearer = HTTPBearer(auto_error=False, description="a token from `sandboxer tokens add`")
Doc = dict[str, Any]
# The service refuses an unknown state (one message on every transport); the schema
# still lists the states.
State = Annotated[str, Field(json_schema_extra={"enum": list(STATES)})]
SandboxId = Annotated[str, Path(max_length=64, description="a sandbox id (sbx-…)")]
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"description": d} for s, d in ((401, "no or unknown bearer token"),
                                       (403, "needs an admin token or another actor"),
                                       (404, "unknown, or another actor's"),
                                       (422, "invalid request"))}


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None,
                                              Depends(bearer)]) -> Caller:
    """Every route's dependency: the actor of a valid bearer token, or 401."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthenticated("this request needs a bearer token",
                              hint="send `Authorization: Bearer TOKEN` "
                              "(an operator makes one with `sandboxer tokens add ACTOR`)")
    found = service(request).authenticate(creds.credentials)
    if found is None:
        raise Unauthenticated("the bearer token is not valid",
                              hint="it may have been removed; ask for a new one")
    return found


Svc = Annotated[Service, Depends(service)]
Who = Annotated[Caller, Depends(caller)]
router = APIRouter(prefix="/v1", responses=ERRORS)


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)


@router.get("/whoami", summary="the actor of this token")
def whoami(who: Who) -> Doc:
    return {"schema": "sandboxer.whoami/v1", "actor": who.actor, "admin": who.admin}


# -- profiles ---------------------------------------------------------------------------


@router.get("/profiles", summary="the profile catalog")
def list_profiles(svc: Svc, who: Who) -> Doc:
    return {"schema": "sandboxer.profiles/v1", "items": svc.client(who).list_profiles()}


@router.get("/profiles/{profile_id}", summary="one merged profile")
def get_profile(svc: Svc, who: Who,
                profile_id: Annotated[str, Path(pattern=PROFILE_ID)]) -> Doc:
    profile = svc.client(who).get_profile(profile_id)
    return {"schema": "sandboxer.profile/v1", **profile.model_dump(mode="json")}


@router.post("/profiles/validate", summary="validate profile files; creates nothing")
def validate_profiles(svc: Svc, who: Who, body: ValidateRequest) -> Doc:
    return {"schema": "sandboxer.validation/v1", "results": svc.validate(who, body)}


# -- sandboxes --------------------------------------------------------------------------


@router.post("/sandboxes", status_code=201, response_model=None,
             summary="create a sandbox (returns once ready or failed); dry_run: plan only",
             responses={201: {"model": SandboxStatus}, 200: {"description": "a plan"}})
async def create_sandbox(svc: Svc, who: Who, body: CreateRequest) -> JSONResponse:
    doc = await svc.create(who, body)
    return _json(doc, 200 if body.dry_run else 201)


@router.get("/sandboxes", summary="list sandboxes (live ones by default)")
def list_sandboxes(
    svc: Svc, who: Who,
    state: Annotated[list[State] | None, Query(max_length=5)] = None,
    profile: Annotated[str | None, Query(max_length=128)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    label: Annotated[list[str] | None, Query(max_length=32, description="k=v")] = None,
    all: bool = False,
) -> Doc:
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput("label: expected key=value")
        labels[key] = value
    from sandboxer.values import validate_labels

    try:
        validate_labels(labels)
    except ValueError as e:
        raise InvalidInput(f"label: {e}") from e
    items = svc.client(who).list_documents(states=state, profile=profile, actor=actor,
                                           labels=labels or None, all=all)
    return {"schema": "sandboxer.sandboxes/v1", "items": items}


@router.get("/sandboxes/{sandbox_id}", response_model=None,
            responses={200: {"model": SandboxStatus}}, summary="one sandbox")
def get_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(svc.client(who).get_document(sandbox_id))


@router.delete("/sandboxes/{sandbox_id}", response_model=None,
               responses={200: {"model": SandboxStatus}},
               summary="destroy a sandbox (idempotent)")
async def destroy_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.destroy(who, sandbox_id))


@router.post("/sandboxes/{sandbox_id}/extend", response_model=None,
             responses={200: {"model": SandboxStatus}}, summary="renew a lease")
def extend_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId,
                   body: ExtendRequest) -> JSONResponse:
    return _json(svc.extend(who, sandbox_id, body.ttl))


@router.get("/sandboxes/{sandbox_id}/reachability", response_model=None,
            responses={200: {"model": Reachability}},
            summary="the reachability descriptor of a ready sandbox")
def reachability(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    reach = svc.client(who).reachability(sandbox_id)
    return _json(reach.model_dump(mode="json", by_alias=True))


# -- events, reap, reconcile -------------------------------------------------------------


@router.get("/events", response_model=None, summary="the event outbox with delivery state",
            responses={200: {"model": list[Event]}})
def list_events(
    svc: Svc, who: Who,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    sandbox: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Doc:
    items = svc.client(who).event_documents(after=after, sandbox_id=sandbox, limit=limit)
    return {"schema": "sandboxer.events/v1", "items": items}


@router.post("/reap", summary="destroy expired leases now (admin)")
async def reap(svc: Svc, who: Who) -> Doc:
    return {"schema": "sandboxer.sandboxes/v1", "items": await svc.reap(who)}


@router.post("/reconcile", summary="destroy what no live sandbox claims (admin)")
async def reconcile(svc: Svc, who: Who) -> Doc:
    return {"schema": "sandboxer.reconcile/v1", "removed": await svc.reconcile(who)}


# -- targets and images -----------------------------------------------------------------

TargetName = Annotated[str, Path(pattern=NAME)]


@router.get("/targets", summary="configured targets plus `local`")
def list_targets(svc: Svc, who: Who) -> Doc:
    return {"schema": "sandboxer.targets/v1", "items": svc.client(who).targets_list()}


@router.post("/targets", status_code=201, summary="add a docker host (admin)")
async def add_target(svc: Svc, who: Who, body: TargetAddRequest) -> Doc:
    return {"schema": "sandboxer.target/v1", **await svc.targets_add(who, body)}


@router.get("/targets/check", summary="check every target")
async def check_targets(svc: Svc, who: Who,
                        name: Annotated[str | None, Query(pattern=NAME)] = None) -> Doc:
    return {"schema": "sandboxer.target-check/v1",
            "items": await svc.targets_check(who, name)}


@router.delete("/targets/{name}", summary="forget a target (admin)")
def remove_target(svc: Svc, who: Who, name: TargetName) -> Doc:
    svc.client(who).targets_remove(name)
    return {"schema": "sandboxer.target-removed/v1", "name": name}


@router.post("/images/{name}/build", summary="run an image recipe (admin)")
async def build_image(svc: Svc, who: Who,
                      name: Annotated[str, Path(pattern=PROFILE_ID)],
                      body: ImageBuildRequest | None = None) -> Doc:
    req = body if body is not None else ImageBuildRequest()
    return {"schema": "sandboxer.image/v1", **await svc.images_build(who, name, req)}
