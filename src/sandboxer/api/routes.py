"""Routes of the HTTP API (docs/api.md): what the CLI needs to work against a server.

Each route declares the document it answers with (sandboxer.models.responses), every error
status it can answer with (a ``sandboxer.error/v1`` document, the status taken from the
error classes it may raise), a snake_case operationId (its function's name) and a tag, so a
generated client is typed end to end. Routes answer with the service's documents as they
are (a JSONResponse): the declared model describes the wire, it never reshapes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from sandboxer.access import Caller
from sandboxer.api.models import (
    NAME,
    PROFILE_ID,
    CreateRequest,
    ExtendRequest,
    ImageBuildRequest,
    NamedImageBuildRequest,
    TargetAddRequest,
    TokenAddRequest,
    ValidateRequest,
)
from sandboxer.api.service import Service
from sandboxer.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NoTarget,
    NotFound,
    ProvisionFailed,
    RequestTooLarge,
    SandboxerError,
    SecretBackendUnavailable,
    SecretError,
    StoreBusy,
    StoreUnavailable,
    Unauthenticated,
    UsageError,
)
from sandboxer.models import responses as r
from sandboxer.models.queries import STATES
from sandboxer.models.reachability import Reachability
from sandboxer.models.sandbox import SandboxStatus

bearer = HTTPBearer(auto_error=False, description="a token from `sandboxer tokens add`")
# The service refuses an unknown state (one message on every transport); the schema
# still lists the states.
State = Annotated[str, Field(json_schema_extra={"enum": list(STATES)})]
SandboxId = Annotated[str, Path(max_length=64, description="a sandbox id (sbx-…)")]
TAGS: list[dict[str, Any]] = [
    {"name": "profiles", "description": "the catalog sandboxes are created from"},
    {"name": "sandboxes", "description": "create, inspect, extend, stop, start, pause, "
     "resume and destroy sandboxes"},
    {"name": "events", "description": "the outbox of state changes"},
    {"name": "pools", "description": "sandboxes provisioned ahead, claimed by a create"},
    {"name": "targets", "description": "where sandboxes run"},
    {"name": "images", "description": "image recipes"},
    {"name": "admin", "description": "the caller's identity and operator actions"},
]


def operation_id(route: APIRoute) -> str:
    """A route's operationId: its function's name (snake_case, e.g. ``create_sandbox``)."""
    return route.name


def _family(cls: type[SandboxerError]) -> list[type[SandboxerError]]:
    """``cls`` and its subclasses that answer with the same status."""
    subs = [c for sub in cls.__subclasses__() for c in _family(sub)]
    return [cls, *(c for c in subs if c.http_status == cls.http_status)]


def errors(*raised: type[SandboxerError]) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route that may raise ``raised``: each status once, its
    codes listed. Every route may also answer 401 (no valid token), 503 (the store is
    busy) and 500 (unexpected)."""
    codes: dict[int, list[str]] = {}
    every: tuple[type[SandboxerError], ...] = (Unauthenticated, StoreBusy, StoreUnavailable,
                                               SandboxerError)
    for cls in (*every, *raised):
        for one in _family(cls):
            listed = codes.setdefault(one.http_status, [])
            if one.code not in listed:
                listed.append(one.code)
    return {status: {"model": r.ErrorDocument,
                     "description": "a sandboxer.error/v1 document; code: " + ", ".join(c)}
            for status, c in sorted(codes.items())}


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def _token(creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthenticated("this request needs a bearer token",
                              hint="send `Authorization: Bearer TOKEN` "
                              "(an operator makes one with `sandboxer tokens add ACTOR`)")
    return creds.credentials


def _valid(found: Caller | None) -> Caller:
    if found is None:
        raise Unauthenticated("the bearer token is not valid",
                              hint="it may have been removed; ask for a new one")
    return found


def caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None,
                                              Depends(bearer)]) -> Caller:
    """Every route's dependency: the actor of a valid bearer token, or 401."""
    return _valid(service(request).authenticate(_token(creds)))


async def _service(request: Request) -> Service:
    return service(request)


async def _caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None,
                                                     Depends(bearer)]) -> Caller:
    # A cached token is answered on the event loop (a thread hop costs more than the
    # check); any other is looked up in a worker thread (Service.authenticate_on_loop).
    return _valid(await service(request).authenticate_on_loop(_token(creds)))


Svc = Annotated[Service, Depends(_service)]
Who = Annotated[Caller, Depends(_caller)]
router = APIRouter(prefix="/v1")
BODY = (UsageError, InvalidInput, RequestTooLarge)  # 400: a body that is not JSON
SANDBOX = (NotFound, InvalidInput)


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)


@router.get("/whoami", summary="the actor of this token", tags=["admin"],
            response_model=r.Whoami, responses=errors())
def whoami(who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.whoami/v1", "actor": who.actor, "admin": who.admin})


# -- profiles ---------------------------------------------------------------------------


@router.get("/profiles", summary="the profile catalog", tags=["profiles"],
            response_model=r.ProfileList, responses=errors(InvalidInput))
def list_profiles(svc: Svc, who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.profiles/v1", "items": svc.client(who).list_profiles()})


@router.get("/profiles/{profile_id}", summary="one merged profile", tags=["profiles"],
            response_model=r.ProfileDocument, responses=errors(NotFound, InvalidInput))
def get_profile(svc: Svc, who: Who,
                profile_id: Annotated[str, Path(pattern=PROFILE_ID)]) -> JSONResponse:
    profile = svc.client(who).get_profile(profile_id)
    return _json({"schema": "sandboxer.profile/v1", **profile.model_dump(mode="json")})


@router.post("/profiles/validate", summary="validate profile files; creates nothing",
             tags=["profiles"], response_model=r.ValidationReport, responses=errors(*BODY))
def validate_profiles(svc: Svc, who: Who, body: ValidateRequest) -> JSONResponse:
    return _json({"schema": "sandboxer.validation/v1", "results": svc.validate(who, body)})


# -- sandboxes --------------------------------------------------------------------------


@router.post("/sandboxes", status_code=201, response_model=SandboxStatus,
             summary="create a sandbox (returns once ready or failed); dry_run: plan only",
             tags=["sandboxes"], response_description="the sandbox, ready",
             responses={200: {"model": r.Plan, "description": "dry_run: the plan"},
                        **errors(Forbidden, NotFound, Conflict, *BODY, SecretError,
                                 SecretBackendUnavailable, ProvisionFailed, NoTarget)})
async def create_sandbox(svc: Svc, who: Who, body: CreateRequest) -> JSONResponse:
    doc = await svc.create(who, body)
    return _json(doc, 200 if body.dry_run else 201)


@router.get("/sandboxes", summary="list sandboxes (live ones by default)",
            tags=["sandboxes"], response_model=r.SandboxList,
            responses=errors(InvalidInput, Forbidden))
def list_sandboxes(
    svc: Svc, who: Who,
    state: Annotated[list[State] | None, Query(max_length=5)] = None,
    profile: Annotated[str | None, Query(max_length=128)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    label: Annotated[list[str] | None, Query(max_length=32, description="k=v")] = None,
    all: bool = False,
) -> JSONResponse:
    from sandboxer.values import parse_labels

    try:  # the one k=v parser the CLI's --label uses too
        labels = parse_labels(label or [], "label")
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    items = svc.client(who).list_documents(states=state, profile=profile, actor=actor,
                                           labels=labels or None, all=all)
    return _json({"schema": "sandboxer.sandboxes/v1", "items": items})


@router.get("/sandboxes/{sandbox_id}", response_model=SandboxStatus, summary="one sandbox",
            tags=["sandboxes"], responses=errors(*SANDBOX))
async def get_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.get_document(who, sandbox_id))


@router.delete("/sandboxes/{sandbox_id}", response_model=SandboxStatus,
               summary="destroy a sandbox (idempotent)", tags=["sandboxes"],
               responses=errors(*SANDBOX, Conflict, ProvisionFailed))
async def destroy_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.destroy(who, sandbox_id))


@router.post("/sandboxes/{sandbox_id}/extend", response_model=SandboxStatus,
             summary="renew a lease", tags=["sandboxes"],
             responses=errors(*SANDBOX, Conflict, *BODY))
def extend_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId,
                   body: ExtendRequest) -> JSONResponse:
    return _json(svc.extend(who, sandbox_id, body.ttl))


# Lifecycle: 409 in the wrong state, 422 when the extension cannot (or a secret ref does
# not resolve again at start), 502 when the extension failed.
LIFECYCLE_ERRORS = (*SANDBOX, Conflict, ProvisionFailed)


@router.post("/sandboxes/{sandbox_id}/stop", response_model=SandboxStatus,
             summary="stop a ready or paused sandbox: its processes end, its data stays",
             tags=["sandboxes"], responses=errors(*LIFECYCLE_ERRORS))
async def stop_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.lifecycle(who, "stop", sandbox_id))


@router.post("/sandboxes/{sandbox_id}/start", response_model=SandboxStatus,
             summary="start a stopped sandbox again (secrets resolved again)",
             tags=["sandboxes"], responses=errors(*LIFECYCLE_ERRORS, SecretError,
                                                  SecretBackendUnavailable))
async def start_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.lifecycle(who, "start", sandbox_id))


@router.post("/sandboxes/{sandbox_id}/pause", response_model=SandboxStatus,
             summary="freeze a ready sandbox, memory kept", tags=["sandboxes"],
             responses=errors(*LIFECYCLE_ERRORS))
async def pause_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.lifecycle(who, "pause", sandbox_id))


@router.post("/sandboxes/{sandbox_id}/resume", response_model=SandboxStatus,
             summary="thaw a paused sandbox where it was", tags=["sandboxes"],
             responses=errors(*LIFECYCLE_ERRORS))
async def resume_sandbox(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    return _json(await svc.lifecycle(who, "resume", sandbox_id))


@router.get("/sandboxes/{sandbox_id}/reachability", response_model=Reachability,
            summary="the reachability descriptor of a ready sandbox", tags=["sandboxes"],
            responses=errors(*SANDBOX, Conflict))
def get_reachability(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    reach = svc.client(who).reachability(sandbox_id)
    return _json(reach.model_dump(mode="json", by_alias=True))


# -- events, reap, reconcile -------------------------------------------------------------


@router.get("/events", summary="the event outbox with delivery state", tags=["events"],
            response_model=r.EventList, responses=errors(InvalidInput))
def list_events(
    svc: Svc, who: Who,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    sandbox: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> JSONResponse:
    items = svc.client(who).event_documents(after=after, sandbox_id=sandbox, limit=limit)
    return _json({"schema": "sandboxer.events/v1", "items": items})


@router.post("/reap", summary="destroy expired leases now (admin)", tags=["admin"],
             response_model=r.SandboxList, responses=errors(Forbidden, ProvisionFailed))
async def reap(svc: Svc, who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.sandboxes/v1", "items": await svc.reap(who)})


@router.post("/reconcile", summary="destroy what no live sandbox claims (admin)",
             tags=["admin"], response_model=r.ReconcileReport,
             responses=errors(Forbidden, ProvisionFailed))
async def reconcile(svc: Svc, who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.reconcile/v1", "removed": await svc.reconcile(who)})


# -- pools ------------------------------------------------------------------------------


@router.get("/pools", summary="every warm pool (admin: with its sandboxes)", tags=["pools"],
            response_model=r.PoolList, responses=errors(InvalidInput))
def list_pools(svc: Svc, who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.pools/v1", "items": svc.client(who).pools_list()})


@router.get("/pools/{profile_id}", summary="one profile's warm pool", tags=["pools"],
            response_model=r.Pool, responses=errors(NotFound, InvalidInput))
def get_pool(svc: Svc, who: Who,
             profile_id: Annotated[str, Path(pattern=PROFILE_ID)]) -> JSONResponse:
    return _json(svc.client(who).pools_show(profile_id))


# -- targets and images -----------------------------------------------------------------

TargetName = Annotated[str, Path(pattern=NAME)]


@router.get("/targets", summary="every extension's targets (implicit ones too)", tags=["targets"],
            response_model=r.TargetList, responses=errors())
def list_targets(svc: Svc, who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.targets/v1", "items": svc.client(who).targets_list()})


@router.post("/targets", status_code=201,
             summary="add a target; its URL scheme picks the extension (admin)",
             tags=["targets"], response_model=r.TargetAdded,
             responses=errors(Forbidden, Conflict, *BODY, ProvisionFailed, NoTarget))
async def add_target(svc: Svc, who: Who, body: TargetAddRequest) -> JSONResponse:
    return _json({"schema": "sandboxer.target/v1", **await svc.targets_add(who, body)},
                 201)


@router.get("/targets/check", summary="check every target", tags=["targets"],
            response_model=r.TargetCheckList, responses=errors(NotFound, InvalidInput))
async def check_targets(svc: Svc, who: Who, name: Annotated[str | None, Query(pattern=NAME)]
                        = None) -> JSONResponse:
    return _json({"schema": "sandboxer.target-check/v1",
                  "items": await svc.targets_check(who, name)})


@router.delete("/targets/{name}", summary="forget a target (admin)", tags=["targets"],
               response_model=r.TargetRemoved,
               responses=errors(Forbidden, NotFound, Conflict, InvalidInput))
def remove_target(svc: Svc, who: Who, name: TargetName) -> JSONResponse:
    svc.client(who).targets_remove(name)
    return _json({"schema": "sandboxer.target-removed/v1", "name": name})


@router.post("/images/{name}/build", summary="run an image recipe (admin)", tags=["images"],
             response_model=r.ImageBuilt,
             responses=errors(Forbidden, NotFound, *BODY, ProvisionFailed, NoTarget))
async def build_image(svc: Svc, who: Who,
                      name: Annotated[str, Path(pattern=PROFILE_ID)],
                      body: ImageBuildRequest | None = None) -> JSONResponse:
    req = body if body is not None else ImageBuildRequest()
    return _json({"schema": "sandboxer.image/v1", **await svc.images_build(who, name, req)})


@router.get("/doctor", summary="what the server's machine lacks (admin)", tags=["admin"],
            response_model=r.DoctorReport, responses=errors(Forbidden))
async def doctor(svc: Svc, who: Who) -> JSONResponse:
    checks = [c.document() for c in await svc.doctor(who)]
    return _json({"schema": "sandboxer.doctor/v1", "ok": all(c["ok"] for c in checks),
                  "checks": checks})


# -- remote operation: what the CLI did only on the server's own machine -----------------
# (tokens, `events publish`, image builds by any name); every one is admin-only.

TokenId = Annotated[str, Path(max_length=64, description="a token id (tok-…)")]
NO_STORE = {"Cache-Control": "no-store"}  # a new token must not sit in a cache


@router.post("/images/build", summary="build by any name `images build` takes, e.g. a "
             "Packer template path on the server's machine (admin)", tags=["images"],
             response_model=r.ImageBuilt,
             responses=errors(Forbidden, NotFound, *BODY, ProvisionFailed, NoTarget))
async def build_image_by_name(svc: Svc, who: Who, body: NamedImageBuildRequest) -> JSONResponse:
    req = ImageBuildRequest(target=body.target, variables=body.variables, force=body.force)
    return _json({"schema": "sandboxer.image/v1",
                  **await svc.images_build(who, body.name, req)})


@router.post("/tokens", status_code=201, summary="make a bearer token, returned only now "
             "(admin)", tags=["admin"], response_model=r.TokenCreated,
             responses=errors(Forbidden, *BODY))
def add_token(svc: Svc, who: Who, body: TokenAddRequest) -> JSONResponse:
    token, summary = svc.app.tokens_add(body.actor, admin=body.admin, caller=who)
    return JSONResponse({"schema": "sandboxer.token/v1", **summary, "token": token},
                        status_code=201, headers=NO_STORE)


@router.get("/tokens", summary="every token's id and actor, never a token (admin)",
            tags=["admin"], response_model=r.TokenList, responses=errors(Forbidden))
def list_tokens(svc: Svc, who: Who) -> JSONResponse:
    return _json({"schema": "sandboxer.tokens/v1", "items": svc.app.tokens_list(caller=who)})


@router.delete("/tokens/{token_id}", summary="revoke a token (admin)", tags=["admin"],
               response_model=r.TokenRemoved,
               responses=errors(Forbidden, NotFound, InvalidInput))
def remove_token(svc: Svc, who: Who, token_id: TokenId) -> JSONResponse:
    removed = svc.app.tokens_remove(token_id, caller=who)
    return _json({"schema": "sandboxer.token-removed/v1", **removed})


@router.post("/events/publish", summary="deliver undelivered events to State Hub once "
             "(admin)", tags=["events"], response_model=r.PublishReport,
             responses=errors(Forbidden, UsageError, Conflict))
async def publish_events(svc: Svc, who: Who) -> JSONResponse:
    return _json(await svc.events_publish(who))


@router.get("/sandboxes/{sandbox_id}/identity", response_model=r.SandboxIdentity,
            summary="the private key a ready sandbox is reached with (its owner's ssh from "
            "another machine)", tags=["sandboxes"], responses=errors(*SANDBOX, Conflict))
def get_identity(svc: Svc, who: Who, sandbox_id: SandboxId) -> JSONResponse:
    key = svc.app.identity(sandbox_id, caller=who)
    return JSONResponse({"schema": "sandboxer.identity/v1", "sandbox_id": sandbox_id,
                         "private_key": key}, headers=NO_STORE)
