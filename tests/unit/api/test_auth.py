"""Authentication and ownership over a real socket: 401, 403, 404 without leaking existence."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import Api


def test_missing_and_wrong_tokens_are_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer sbxt_nope"}, {"Authorization": "Basic x"},
                    {"Authorization": "Bearer"}):
        r = httpx.get(f"{api.url}/v1/sandboxes", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["code"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(f"{api.url}/v1/sandboxes/sbx-aaaaaaaaaa")
    assert r.status_code == 401  # authentication comes before any lookup


def test_a_removed_token_stops_working_within_the_cache_bound(api: Api) -> None:
    from sandboxer.api.service import TOKEN_CACHE_SECONDS
    from sandboxer.store import open_store
    from sandboxer.store.tokens import Tokens

    for path in ("/v1/whoami", "/v1/sandboxes/sbx-aaaaaaaaaa"):  # a route, the fast read
        assert httpx.get(f"{api.url}{path}", headers=api.auth(api.bob)).status_code in (
            200, 404)
    tokens = Tokens(open_store(api.settings))
    (bob,) = [t for t in tokens.list() if t["actor"] == "bob"]
    tokens.remove(bob["id"])
    removed = time.monotonic()
    # The server trusted bob's token when last it looked (before the removal): any request
    # it gets TOKEN_CACHE_SECONDS after the removal looks again and is refused.
    refused = {"/v1/whoami": False, "/v1/sandboxes/sbx-aaaaaaaaaa": False}
    deadline = removed + 30
    while not all(refused.values()):
        assert time.monotonic() < deadline, refused
        for path in refused:
            sent = time.monotonic()
            status = httpx.get(f"{api.url}{path}", headers=api.auth(api.bob)).status_code
            if sent - removed >= TOKEN_CACHE_SECONDS:
                assert status == 401, (path, sent - removed)
            refused[path] = status == 401
        time.sleep(0.05)


def test_another_actors_sandbox_looks_like_no_sandbox(api: Api) -> None:
    made = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake"},
                      headers=api.auth(api.alice))
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    assert made.json()["actor"] == "alice"  # the token's actor, not the profile's default
    unknown = "sbx-aaaaaaaaaa"
    for method, path, body in (("GET", "", None), ("DELETE", "", None),
                               ("POST", "/extend", {"ttl": "1h"}),
                               ("GET", "/reachability", None)):
        theirs = httpx.request(method, f"{api.url}/v1/sandboxes/{sid}{path}", json=body,
                               headers=api.auth(api.bob))
        nothing = httpx.request(method, f"{api.url}/v1/sandboxes/{unknown}{path}", json=body,
                                headers=api.auth(api.bob))
        assert theirs.status_code == nothing.status_code == 404, (method, path)
        assert theirs.json()["message"].replace(sid, "ID") == \
            nothing.json()["message"].replace(unknown, "ID")
    listed = httpx.get(f"{api.url}/v1/sandboxes", params={"all": "true"},
                       headers=api.auth(api.bob)).json()["items"]
    assert listed == []
    events = httpx.get(f"{api.url}/v1/events", headers=api.auth(api.bob)).json()["items"]
    assert events == []
    # Still alive and alice's: bob's DELETE did nothing.
    mine = httpx.get(f"{api.url}/v1/sandboxes/{sid}", headers=api.auth(api.alice))
    assert mine.json()["state"] == "ready"
    assert [e["type"] for e in httpx.get(f"{api.url}/v1/events", headers=api.auth(
        api.alice)).json()["items"]] == ["sandbox.created", "sandbox.ready"]


def test_admin_sees_and_changes_everything(api: Api) -> None:
    sid = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake"},
                     headers=api.auth(api.alice)).json()["id"]
    listed = httpx.get(f"{api.url}/v1/sandboxes", headers=api.auth(api.root)).json()["items"]
    assert [d["id"] for d in listed] == [sid]
    made = httpx.post(f"{api.url}/v1/sandboxes", headers=api.auth(api.root),
                      json={"profile": "profile.fake", "actor": "carol"})
    assert made.json()["actor"] == "carol"
    gone = httpx.delete(f"{api.url}/v1/sandboxes/{sid}", headers=api.auth(api.root))
    assert gone.json()["state"] == "destroyed"
    assert httpx.post(f"{api.url}/v1/reap", headers=api.auth(api.root)).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/sandboxes", {"profile": "profile.fake", "actor": "alice"}),
    ("GET", "/v1/sandboxes?actor=alice", None),
    ("POST", "/v1/reap", None),
    ("POST", "/v1/reconcile", None),
    ("DELETE", "/v1/targets/somewhere", None),
    ("POST", "/v1/images/base/build", None),
])
def test_what_needs_admin_or_another_actor_is_403(api: Api, method: str, path: str,
                                                  body: object) -> None:
    r = httpx.request(method, f"{api.url}{path}", json=body, headers=api.auth(api.bob))
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "forbidden"
    assert r.json()["exit_code"] == 8
