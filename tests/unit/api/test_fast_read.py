"""The hot read: `GET /v1/sandboxes/{id}` answered below FastAPI, byte for byte as the route
would; anything else handed to the route; the token cache's bound."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx
from starlette.responses import JSONResponse

from sandboxer.api.fastpath import FastRead
from sandboxer.api.service import TOKEN_CACHE_SECONDS, Service
from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.store.tokens import Tokens

from .conftest import Api


def _get(app: Any, path: str, token: str | None,
         extra: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[list[dict[str, Any]], bool]:
    """Messages sent by ``FastRead`` over ``app`` for one GET; whether it passed it on."""
    passed: list[bool] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        passed.append(True)

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        headers += extra
        scope = {"type": "http", "method": "GET", "path": path, "headers": headers,
                 "app": app}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await FastRead(inner)(scope, None, send)
        return sent

    return asyncio.run(run()), bool(passed)


def test_the_fast_read_answers_what_the_route_would(api: Api) -> None:
    made = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake"},
                      headers=api.auth(api.alice))
    sid = made.json()["id"]
    got = httpx.get(f"{api.url}/v1/sandboxes/{sid}", headers=api.auth(api.alice))
    doc = LocalClient(api.settings).get_document(sid)
    expected = JSONResponse(doc)
    assert got.status_code == 200
    assert got.content == expected.body
    assert got.headers["content-type"] == expected.headers["content-type"]
    assert got.headers["content-length"] == expected.headers["content-length"]


def test_only_a_successful_read_is_answered_below_the_route(settings: Settings) -> None:
    service = Service(settings)
    app = SimpleNamespace(state=SimpleNamespace(service=service))
    alice, _ = Tokens(service.store).add("alice")
    bob, _ = Tokens(service.store).add("bob")
    sid = LocalClient(settings).create("profile.fake", actor="alice").id
    sent, passed = _get(app, f"/v1/sandboxes/{sid}", alice)
    assert not passed
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == JSONResponse(service.store.get_document(sid)).body
    for path, token in ((f"/v1/sandboxes/{sid}", None),  # 401 from the route
                        (f"/v1/sandboxes/{sid}", "sbxt_nope"),
                        (f"/v1/sandboxes/{sid}", bob),  # not bob's: 404 from the route
                        ("/v1/sandboxes/sbx-aaaaaaaaaa", alice),
                        ("/v1/sandboxes/" + "x" * 65, alice),  # the route's 422
                        (f"/v1/sandboxes/{sid}/reachability", alice),
                        ("/v1/sandboxes", alice)):
        sent, passed = _get(app, path, token)
        assert passed, path
        assert not sent, path
    for extra in ((b"content-length", b"10"), (b"transfer-encoding", b"chunked")):
        sent, passed = _get(app, f"/v1/sandboxes/{sid}", alice, (extra,))  # BodyLimit's
        assert passed, extra
        assert not sent, extra
    service.store.close()


def test_a_token_is_trusted_for_the_cache_bound_only(settings: Settings) -> None:
    now = [100.0]
    service = Service(settings, clock=lambda: now[0])
    tokens = Tokens(service.store)
    token, summary = tokens.add("alice")
    assert service.authenticate("sbxt_unknown") is None
    who = service.authenticate(token)
    assert who is not None
    assert who.actor == "alice"
    tokens.remove(summary["id"])
    now[0] += TOKEN_CACHE_SECONDS / 2
    assert service.authenticate(token) == who  # cached: the store is not asked
    now[0] += TOKEN_CACHE_SECONDS / 2
    assert service.authenticate(token) is None  # looked up again: gone
    later, _ = tokens.add("bob")
    assert service.authenticate(later) is not None  # a new token works at once
    service.store.close()
