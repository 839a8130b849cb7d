"""The hot read, `GET /v1/sandboxes/{id}`, answered below FastAPI when it succeeds.

Agents poll their sandbox's state; that one route is most of a busy server's requests.
FastAPI's per-request work for it (matching the route among all others, solving its
dependency tree, validating the path parameter) costs several times the work itself (a
cached token check and one store read), so this ASGI middleware answers the successful
case directly, with exactly the bytes and headers the route would send (a
``JSONResponse`` of the same document). Anything else passes to the application
untouched, and the route answers it as always: no or a wrong token (401), another
actor's or an unknown sandbox (404), an id the route's schema refuses, an error of the
store. Both read through the one ``Service.get_document``. So every
answer of this path is authenticated exactly as the route's, and every error document
comes from the route.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
PREFIX = "/v1/sandboxes/"
MAX_ID = 64  # routes.SandboxId's max_length


def _token(scope: Scope) -> str | None:
    """The bearer token as fastapi.security.HTTPBearer reads it; None without one, or
    when the request has a body (BodyLimit, which this runs outside of, judges those)."""
    token = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and token is None:
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            credentials = credentials.strip()
            if scheme.lower() != "bearer" or not credentials:
                return None
            token = credentials
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None
    return token


class FastRead:
    """ASGI middleware: a successful `GET /v1/sandboxes/{id}` without FastAPI's routing
    and dependency solving (module docstring); everything else goes to ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = await self._answer(scope)
            if body is not None:
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-length", str(len(body)).encode("latin-1")),
                    (b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(scope: Scope) -> bytes | None:
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return None
        sandbox_id = path[len(PREFIX):]
        if not sandbox_id or len(sandbox_id) > MAX_ID or "/" in sandbox_id:
            return None
        token = _token(scope)
        if token is None:
            return None
        service = scope["app"].state.service
        try:
            who = await service.authenticate_on_loop(token)
            if who is None:
                return None
            doc = await service.get_document(who, sandbox_id)
        except Exception:  # the route raises it again and answers its error document
            return None
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8")
