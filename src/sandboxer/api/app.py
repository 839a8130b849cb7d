"""The FastAPI application: authentication, error mapping, size limits, background loops.

Every error leaves as a ``sandboxer.error/v1`` document (``code``, ``exit_code``,
``message``) with the HTTP status mapped once from ``SandboxerError.http_status`` (a status
the framework answers by itself goes back to its error class through
``errors.for_http_status``); the message goes through the same redaction as the CLI's
errors. Unexpected exceptions become a 500 naming only their type (the traceback goes to
the server log, redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sandboxer import __version__, envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, RequestTooLarge, SandboxerError, for_http_status
from sandboxer.redaction import redact

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY = 1_048_576

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def error_document(code: str, exit_code: int, message: str) -> dict[str, Any]:
    return {"schema": "sandboxer.error/v1", "code": code, "exit_code": exit_code,
            "message": redact(message)}


def error_response(e: SandboxerError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.http_status == 401 else None
    return JSONResponse(error_document(e.code, e.exit_code, e.render()),
                        status_code=e.http_status, headers=headers)


def _validation_text(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:10]:  # location and rule only: never echo the input back
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = RequestTooLarge(f"request body over {self.limit} bytes",
                                    hint="send less; the limit is SANDBOXER_API_MAX_BODY")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(too_large)(scope, receive, send)
                return
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit:  # a streamed body: answer now, the app sees a hang-up
                    refused = True
                    await error_response(too_large)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)


async def _background(app: FastAPI, stop: asyncio.Event) -> None:
    """The leader's duties — reaper, periodic reconcile, idle handling, warm pools, State
    Hub publisher — run by whichever replica of this store leads (service/leader.py;
    docs/architecture.md)."""
    from sandboxer import events, idling
    from sandboxer.service.leader import Campaign, every, publishing

    service = app.state.service
    settings: Settings = service.settings
    env = settings.env
    loop = asyncio.get_running_loop()
    pruned = -1e9

    async def reap() -> None:
        nonlocal pruned
        await service.reap_due()
        if loop.time() - pruned > 60:
            pruned = loop.time()
            events.prune(settings, service.store)

    async def reconcile() -> None:
        removed = await service.app.reconcile()
        service.changed.set()
        if removed:
            log.info("reconcile removed %d resource(s) no live sandbox claims", len(removed))

    async def refill() -> None:
        if made := await service.app.refill_pools():
            service.changed.set()
            log.info("provisioned %d sandbox(es) ahead for warm pools", made)

    from sandboxer.pools import REFILL_INTERVAL

    duties = [every("the reaper", envvars.reap_interval(env), reap),
              every("reconcile", envvars.reconcile_interval(env), reconcile),
              every("idle handling", envvars.idle_interval(env),
                    idling.Watcher(service.manager).round),
              every("the pools", REFILL_INTERVAL, refill)]
    config = events.hub_config(settings)
    if config is not None:
        duties.append(publishing(service.store, config, service.changed))
        log.info("the leader delivers events to State Hub at %s", config.url)
    else:
        log.info("SANDBOXER_STATE_HUB_URL is not set: events stay in the outbox "
                 "(kept for SANDBOXER_EVENTS_RETENTION)")
    campaign = Campaign(service.store, duties, interval=envvars.leader_interval(env))
    service.campaign = campaign
    await campaign.run(stop)


def create_app(settings: Settings | None = None, *, background: bool = True,
               grace: float = 30.0) -> FastAPI:
    """The API application over ``settings``' home; ``background``: campaign for the
    leader role and run its duties (reaper, reconcile, State Hub publisher) while leading."""
    from sandboxer.api import routes, snapshot_routes
    from sandboxer.api.service import Service

    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = Service(settings)
        stop = asyncio.Event()
        loops = asyncio.ensure_future(_background(app, stop)) if background else None
        try:
            yield
        finally:
            app.state.stopping.set()
            await app.state.service.drain(grace)
            stop.set()
            if loops is not None:
                await asyncio.wait({loops}, timeout=15)
            app.state.service.store.close()

    app = FastAPI(title="sand-boxer", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  openapi_tags=[*routes.TAGS, snapshot_routes.TAG],
                  generate_unique_id_function=routes.operation_id,
                  description="Sandbox custodian API (docs/api.md). Every route needs "
                  "`Authorization: Bearer TOKEN` (`sandboxer tokens add ACTOR`).")
    app.include_router(routes.router)
    app.include_router(snapshot_routes.router)
    from sandboxer.api import web

    web.install(app)  # the dashboard at / (api/web/)

    @app.exception_handler(SandboxerError)
    async def sandboxer_error(_r: Request, e: SandboxerError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(InvalidInput(_validation_text(e)))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        path = request.url.path
        if e.status_code in (404, 405) and (path == "/v1" or path.startswith("/v1/")):
            try:  # under /v1 authentication comes first, even for a route that is not there
                routes.caller(request, await routes.bearer(request))
            except SandboxerError as unauthenticated:
                return error_response(unauthenticated)
        text = str(e.detail)
        if e.status_code in (404, 405):
            text = f"{text}: {request.method} {request.url.path} (see /openapi.json)"
        response = error_response(for_http_status(e.status_code, text))
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("unexpected error in %s %s", request.method, request.url.path,
                  exc_info=e)
        return error_response(SandboxerError(
            f"unexpected error ({type(e).__name__}); see the server log"))

    from sandboxer.api.fastpath import FastRead

    limit = envvars.api_max_body(settings.env)
    app.add_middleware(BodyLimit, limit=limit)
    app.add_middleware(FastRead)  # the outermost (added last): it reads no body
    return app
