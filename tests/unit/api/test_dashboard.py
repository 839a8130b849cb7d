"""The dashboard's HTTP contract against a real server (both store backends): sign-in and
its cookie, CSRF and same-origin checks, the same authorization as the API (another
actor's sandbox is not found, for pages, actions and the live stream), a removed token
ending the session, the headers and the absence of external assets. The browser itself:
tests/integration/api/test_dashboard_browser.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from sandboxer.api.web import session
from sandboxer.api.web.auth import local_path
from sandboxer.api.web.render import remaining
from sandboxer.client.http import HttpClient

from .conftest import Api

OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def client(api: Api) -> httpx.Client:
    OPEN.append(httpx.Client(base_url=api.url, timeout=60))
    return OPEN[-1]


def signed_in(api: Api, token: str) -> httpx.Client:
    browser = client(api)
    form = browser.get("/sign-in")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    done = browser.post("/sign-in", data={"token": token, "nonce": nonce.group(1),
                                          "next": "/"})
    assert (done.status_code, done.headers["location"]) == (303, "/")
    return browser


def csrf(browser: httpx.Client, path: str = "/") -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', browser.get(path).text)
    assert found is not None
    return found.group(1)


@pytest.fixture
def boxes(api: Api) -> Iterator[dict[str, Any]]:
    with HttpClient(api.url, api.alice) as alice, HttpClient(api.url, api.bob) as bob:
        yield {"alice": alice.create("profile.fake", labels={"team": "a"}).id,
               "bob": bob.create("profile.fake").id}


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(api: Api) -> None:
    anonymous = client(api)
    first = anonymous.get("/targets?x=1")
    assert first.status_code == 303
    assert first.headers["location"] == "/sign-in?next=%2Ftargets%3Fx%3D1"
    assert anonymous.get("/events/stream").status_code == 401
    page = anonymous.get("/sign-in")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    bad = anonymous.post("/sign-in", data={"token": "sbxt_nope", "nonce": nonce})
    assert bad.status_code == 401
    assert "not valid" in bad.text
    assert "sandboxer_session" not in anonymous.cookies
    stale = httpx.post(f"{api.url}/sign-in", data={"token": api.alice, "nonce": "forged"})
    assert stale.status_code == 403
    assert "sandboxer_session" not in stale.headers.get(
        "set-cookie", "")
    good = anonymous.post("/sign-in", data={"token": api.alice, "nonce": nonce,
                                            "next": "//evil.example/"})
    assert (good.status_code, good.headers["location"]) == (303, "/")
    cookie = next(c for c in good.headers.get_list("set-cookie")
                  if c.startswith("sandboxer_session="))
    assert f"sandboxer_session={api.alice};" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie
    assert "Max-Age" not in cookie
    assert "alice" in anonymous.get("/").text


def test_the_cookie_is_secure_under_tls_and_next_stays_on_this_server() -> None:
    response = Response()
    request = Request({"type": "http", "scheme": "https", "method": "GET", "path": "/",
                       "headers": [], "query_string": b"", "server": ("h", 443)})
    session.set_session(response, request, "tok")
    assert "Secure" in response.headers["set-cookie"]
    for target, expected in (("/sandboxes/x?a=1", "/sandboxes/x?a=1"), ("//e.org", "/"),
                             ("/\\e.org", "/"), ("https://e.org/", "/"), (None, "/")):
        assert local_path(target) == expected


def test_pages_show_only_the_callers_sandboxes(api: Api, boxes: dict[str, Any]) -> None:
    alice, root = signed_in(api, api.alice), signed_in(api, api.root)
    listing = alice.get("/").text
    assert boxes["alice"] in listing
    assert boxes["bob"] not in listing
    assert "team=a" in listing
    everything = root.get("/").text
    assert boxes["alice"] in everything
    assert boxes["bob"] in everything
    assert boxes["alice"] not in root.get("/?actor=bob").text
    assert boxes["bob"] not in root.get("/?label=team%3Da").text
    assert alice.get("/?actor=bob").status_code == 403  # the API's rule, the API's status
    assert alice.get("/?state=nonsense").status_code == 422
    theirs = alice.get(f"/sandboxes/{boxes['bob']}")
    unknown = alice.get("/sandboxes/sbx-doesnotexist")
    assert theirs.status_code == unknown.status_code == 404
    assert boxes["bob"] not in alice.get("/events").text
    own = alice.get(f"/sandboxes/{boxes['alice']}")
    assert own.status_code == 200
    assert "sandbox.created" in own.text
    assert "sandbox.ready" in own.text


def test_actions_need_the_sessions_csrf_token_and_the_api_authorization(
        api: Api, boxes: dict[str, Any]) -> None:
    alice, bob = signed_in(api, api.alice), signed_in(api, api.bob)
    mine, theirs = boxes["alice"], boxes["bob"]
    token = csrf(alice)
    with HttpClient(api.url, api.root) as root:
        before = root.get(mine).expires_at
        for refused in ({"ttl": "90m"}, {"ttl": "90m", "csrf": csrf(bob)}):
            assert alice.post(f"/sandboxes/{mine}/extend", data=refused).status_code == 403
        cross = alice.post(f"/sandboxes/{mine}/extend", data={"ttl": "90m", "csrf": token},
                           headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        as_json = alice.post(f"/sandboxes/{mine}/extend", json={"ttl": "90m", "csrf": token})
        assert as_json.status_code == 422
        assert root.get(mine).expires_at == before
        assert alice.post(f"/sandboxes/{theirs}/destroy",
                          data={"csrf": token}).status_code == 404
        assert root.get(theirs).state == "ready"
        extended = alice.post(f"/sandboxes/{mine}/extend", data={"ttl": "90m", "csrf": token},
                              headers={"Origin": api.url})
        assert (extended.status_code, extended.headers["location"]) == (
            303, f"/sandboxes/{mine}")
        assert root.get(mine).expires_at > before
        too_long = alice.post(f"/sandboxes/{mine}/extend", data={"ttl": "x", "csrf": token})
        assert too_long.status_code == 422
        assert "invalid input" in too_long.text.lower()
        assert alice.post(f"/sandboxes/{mine}/stop", data={"csrf": token}).status_code == 303
        assert root.get(mine).state == "stopped"
        wrong = alice.post(f"/sandboxes/{mine}/resume", data={"csrf": token})
        assert wrong.status_code == 409
        assert alice.post(f"/sandboxes/{mine}/nonsense", data={"csrf": token}
                          ).status_code == 404
        gone = alice.post(f"/sandboxes/{mine}/destroy", data={"csrf": token})
        assert (gone.status_code, gone.headers["location"]) == (303, "/")
        assert root.get(mine).state == "destroyed"
        assert alice.post("/sign-out", data={"csrf": token}).status_code == 303


def stream_events(browser: httpx.Client, until: str, *, after: int = 0) -> list[dict[str, Any]]:
    """The stream's events up to the first whose sandbox is ``until``."""
    seen: list[dict[str, Any]] = []
    with browser.stream("GET", f"/events/stream?after={after}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["sandbox_id"] == until:
                    return seen
    raise AssertionError(f"the stream ended before an event of {until}")


def test_the_live_stream_sends_only_the_callers_events(api: Api,
                                                       boxes: dict[str, Any]) -> None:
    alice = signed_in(api, api.alice)
    with HttpClient(api.url, api.bob) as bob:
        later = bob.create("profile.fake").id
    with HttpClient(api.url, api.alice) as own:
        last = own.create("profile.fake").id
    seen = stream_events(alice, last)
    assert {e["sandbox_id"] for e in seen} == {boxes["alice"], last}
    assert later not in {e["sandbox_id"] for e in seen}
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs)
    resumed = stream_events(alice, last, after=seqs[-2])  # as a reconnect after that id
    assert [e["seq"] for e in resumed] == seqs[-1:]


def test_a_removed_token_ends_the_session(api: Api) -> None:
    alice = signed_in(api, api.alice)
    assert alice.get("/").status_code == 200
    with HttpClient(api.url, api.root) as root:
        (mine,) = [t for t in root.tokens_list() if t["actor"] == "alice"]
        root.tokens_remove(mine["id"])
    deadline = time.monotonic() + 10
    while alice.get("/").status_code != 303:  # at once here; within 1 s on any replica
        assert time.monotonic() < deadline, "the session outlived its token"
        time.sleep(0.05)


def test_pages_carry_strict_headers_and_no_external_asset(api: Api,
                                                          boxes: dict[str, Any]) -> None:
    root, anonymous = signed_in(api, api.root), client(api)
    for path in ("/", f"/sandboxes/{boxes['alice']}", "/events", "/targets", "/pools",
                 "/snapshots", "/sign-in"):
        page = (anonymous if path == "/sign-in" else root).get(path)
        assert page.status_code == 200, (path, page.text)
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-store"
        assert not re.search(r'(src|href)="(https?:)?//', page.text), path
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), path  # no inline
    fleet = root.get("/targets").text
    assert 'id="target-ext.fake-fake-1"' in fleet
    assert 'id="target-ext.local-local"' in fleet
    for name, kind in (("dash.js", "text/javascript"), ("dash.css", "text/css")):
        asset = httpx.get(f"{api.url}/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
        assert not re.search(r"https?://", asset.text)
    assert httpx.get(f"{api.url}/static/../app.py").status_code == 404
    paths = httpx.get(f"{api.url}/openapi.json").json()["paths"]
    assert all(p.startswith("/v1/") for p in paths)  # the dashboard is not the API


def test_the_countdown_without_javascript() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    at = {d: (now + d).isoformat().replace("+00:00", "Z")
          for d in (timedelta(seconds=200), timedelta(hours=1, minutes=4),
                    timedelta(days=2, hours=3), timedelta(seconds=-1))}
    assert [remaining(v, now) for v in at.values()] == ["3m 20s", "1h 04m", "2d 03h",
                                                        "expired"]
    assert remaining(None, now) == remaining("garbage", now) == "—"


def test_snapshots_are_taken_shown_and_deleted_only_by_their_owner(
        api: Api, boxes: dict[str, Any]) -> None:
    import asyncio

    from sandboxer.manager import Manager

    alice, root = signed_in(api, api.alice), signed_in(api, api.root)
    token = csrf(alice)
    taken = alice.post(f"/sandboxes/{boxes['alice']}/snapshot",
                       data={"csrf": token, "name": "before"})
    assert (taken.status_code, taken.headers["location"]) == (
        303, f"/snapshots?sandbox={boxes['alice']}")
    assert alice.post(f"/sandboxes/{boxes['bob']}/snapshot",
                      data={"csrf": token}).status_code == 404
    assert alice.post(f"/sandboxes/{boxes['alice']}/snapshot",
                      data={"csrf": token, "name": "x\ny"}).status_code == 422
    manager = Manager(api.settings)  # another process's snapshot, on the server's store
    try:
        theirs = asyncio.run(manager.snapshot(boxes["bob"]))
        (mine,) = manager.list_snapshots(sandbox_id=boxes["alice"])
        assert mine.name == "before"
        listing = alice.get("/snapshots").text
        assert mine.id in listing
        assert "before" in listing
        assert theirs.id not in listing
        everything = root.get("/snapshots").text
        assert mine.id in everything
        assert theirs.id in everything
        assert theirs.id not in root.get(f"/snapshots?sandbox={boxes['alice']}").text
        assert alice.post(f"/snapshots/{theirs.id}/delete",
                          data={"csrf": token}).status_code == 404
        assert alice.post(f"/snapshots/{mine.id}/delete", data={"x": "1"}).status_code == 403
        assert manager.get_snapshot(theirs.id).state == mine.state == "ready"
        done = alice.post(f"/snapshots/{mine.id}/delete", data={"csrf": token})
        assert (done.status_code, done.headers["location"]) == (303, "/snapshots")
        assert manager.get_snapshot(mine.id).state == "deleted"
        assert mine.id not in alice.get("/snapshots").text
        assert mine.id in alice.get("/snapshots?all=1").text
        forked = alice.post(f"/sandboxes/{boxes['alice']}/fork", data={"csrf": token})
        assert forked.status_code == 303
        fork_id = forked.headers["location"].removeprefix("/sandboxes/")
        assert fork_id != boxes["alice"]
        copy = manager.get(fork_id)
        assert (copy.state, copy.actor, copy.profile) == ("ready", "alice", "profile.fake")
        assert copy.snapshot is not None
        assert copy.snapshot in alice.get(forked.headers["location"]).text
    finally:
        manager.store.close()
