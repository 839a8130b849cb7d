"""The dashboard's pages (GET): sandboxes, one sandbox, events, targets, pools.

Each reads through the same application service, as the same caller, as the API route of
the same data (api/routes.py): an actor sees only its own sandboxes and their events, an
admin all. A failure is the service's error, shown as a page with its status.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sandboxer.api.web import session
from sandboxer.api.web.render import page
from sandboxer.api.web.session import Viewer
from sandboxer.errors import InvalidInput, SandboxerError
from sandboxer.models.queries import EventsQuery
from sandboxer.values import STATES

router = APIRouter(include_in_schema=False)
Who = Annotated[Viewer, Depends(session.viewer)]
RECENT_EVENTS = 100
TIMELINE = 200  # one sandbox's events shown on its page
# What each state offers, in the order the buttons appear (docs/api.md#the-dashboard).
ACTIONS: dict[str, tuple[str, ...]] = {
    "ready": ("extend", "stop", "pause", "snapshot", "fork", "destroy"),
    "paused": ("extend", "resume", "stop", "snapshot", "fork", "destroy"),
    "stopped": ("extend", "start", "snapshot", "fork", "destroy"),
    "unreachable": ("extend", "destroy"),
    "provisioning": ("destroy",),
    "destroying": ("destroy",),
}


def failed(request: Request, who: Viewer | None, e: SandboxerError) -> Response:
    return page(request, "error.html", who, e.http_status, error=e)


def _one(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


async def _events(request: Request, who: Viewer, *, sandbox_id: str | None = None,
                  limit: int = RECENT_EVENTS) -> list[dict[str, Any]]:
    """The caller's newest events (of one sandbox), oldest first: the API's
    ``GET /v1/events`` read, from the end of the outbox."""
    svc = session.service(request)
    query = EventsQuery(sandbox_id=sandbox_id, limit=limit, newest=True)
    return await asyncio.to_thread(svc.app.event_documents, query, caller=who.caller)


async def high_water(request: Request, who: Viewer) -> int:
    """The last event's seq this caller can see: where a page's live stream starts."""
    last = await _events(request, who, limit=1)
    return int(last[-1]["seq"]) if last else 0


@router.get("/")
async def sandboxes(request: Request, who: Who) -> Response:
    from sandboxer.values import parse_labels

    states = [s for s in request.query_params.getlist("state") if s]
    profile, actor = _one(request, "profile"), _one(request, "actor")
    label = [v for v in request.query_params.getlist("label") if v.strip()]
    everything = request.query_params.get("all") == "1"
    filters = {"state": states, "profile": profile, "actor": actor, "label": label,
               "all": everything}
    svc = session.service(request)
    try:
        try:  # the one k=v parser the CLI's --label and the API's label= use
            labels = parse_labels(label, "label")
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        items = await asyncio.to_thread(
            svc.client(who.caller).list_documents, states=states or None, profile=profile,
            actor=actor, labels=labels or None, all=everything)
    except SandboxerError as e:
        return page(request, "sandboxes.html", who, e.http_status, items=[], error=e,
                    filters=filters, states=STATES, after=0)
    return page(request, "sandboxes.html", who, items=items, error=None, filters=filters,
                states=STATES, after=await high_water(request, who))


def _ssh_config(request: Request, doc: dict[str, Any]) -> str | None:
    """The ssh_config stanza `sandboxer ssh-config ID` prints on this server's machine
    (its known_hosts file written as that command writes it)."""
    from sandboxer.openssh import ensure_known_hosts, known_hosts_path, stanza
    from sandboxer.reachability import host_alias, ssh_options

    reach = doc.get("reachability")
    if not reach:
        return None
    settings = session.service(request).settings
    known = known_hosts_path(settings, doc["id"])
    try:
        options = ssh_options(reach, known)
        ensure_known_hosts(known, reach["known_hosts"])
    except (SandboxerError, OSError, KeyError):
        return None
    return stanza(host_alias(reach), options,
                  f"{doc['id']}: {doc['profile']}, expires {doc['expires_at']}")


@router.get("/sandboxes/{sandbox_id}")
async def sandbox(request: Request, who: Who, sandbox_id: str) -> Response:
    svc = session.service(request)
    try:
        doc = await svc.get_document(who.caller, sandbox_id[:128])
    except SandboxerError as e:
        return failed(request, who, e)
    events = await _events(request, who, sandbox_id=doc["id"], limit=TIMELINE)
    stanza = await asyncio.to_thread(_ssh_config, request, doc) \
        if doc.get("state") == "ready" else None
    return page(request, "sandbox.html", who, doc=doc, events=events[::-1], stanza=stanza,
                actions=ACTIONS.get(doc["state"], ()),
                after=int(events[-1]["seq"]) if events else 0)


@router.get("/events")
async def events(request: Request, who: Who) -> Response:
    items = await _events(request, who)
    return page(request, "events.html", who, events=items[::-1],
                after=int(items[-1]["seq"]) if items else 0)


@router.get("/targets")
async def targets(request: Request, who: Who) -> Response:
    """Every extension's targets with health, the reason when down and the capacity used,
    probed now (the service's ``target_health``, what placement and reconcile see),
    beside what ``GET /v1/targets`` says of those added with `targets add`."""
    svc = session.service(request)
    try:
        health = await svc.app.target_health(caller=who.caller)
        summaries = await asyncio.to_thread(svc.client(who.caller).targets_list)
    except SandboxerError as e:
        return failed(request, who, e)
    known = {(s.get("name"), s.get("extension")): s for s in summaries}
    rows = [{**t, "summary": known.get((t["name"], t["extension"])) or {}} for t in health]
    return page(request, "targets.html", who, targets=rows,
                after=await high_water(request, who))


@router.get("/pools")
async def pools(request: Request, who: Who) -> Response:
    svc = session.service(request)
    try:
        items = await asyncio.to_thread(svc.client(who.caller).pools_list)
    except SandboxerError as e:
        return failed(request, who, e)
    return page(request, "pools.html", who, pools=items,
                after=await high_water(request, who))
