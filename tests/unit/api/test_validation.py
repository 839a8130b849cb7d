"""Request validation: clear 4xx documents, size limits, the OpenAPI document."""

from __future__ import annotations

import httpx
import pytest

from .conftest import Api


@pytest.mark.parametrize(("body", "where"), [
    ({}, "body.profile: Field required"),
    ({"profile": "profile.fake", "colour": "vermilion"}, "body.colour: Extra inputs"),
    ({"profile": "profile.fake", "ttl": "forever"}, "expected a duration like 90s"),
    ({"profile": "profile.fake", "labels": {"BAD KEY": "v"}}, "body.labels"),
    ({"profile": "../etc/passwd"}, "body.profile"),
    ({"profile": "profile.fake", "dry_run": "perhaps"}, "body.dry_run"),
])
def test_invalid_bodies_are_422_naming_the_field(api: Api, body: object, where: str) -> None:
    r = httpx.post(f"{api.url}/v1/sandboxes", json=body, headers=api.auth(api.alice))
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["schema"] == "sandboxer.error/v1"
    assert doc["code"] == "invalid_input"
    assert where in doc["message"]
    assert "vermilion" not in doc["message"]  # the input itself is never echoed


def test_errors_from_the_manager_map_their_http_status(api: Api) -> None:
    auth = api.auth(api.alice)
    r = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.none"}, headers=auth)
    assert (r.status_code, r.json()["code"]) == (404, "profile_not_found")
    r = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake", "ttl": "3h"},
                   headers=auth)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    assert "ttl.max" in r.json()["message"]
    sid = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake"},
                     headers=auth).json()["id"]
    httpx.delete(f"{api.url}/v1/sandboxes/{sid}", headers=auth)
    r = httpx.post(f"{api.url}/v1/sandboxes/{sid}/extend", json={"ttl": "1h"}, headers=auth)
    assert (r.status_code, r.json()["code"], r.json()["exit_code"]) == (409, "conflict", 8)


def test_dry_run_plans_without_creating(api: Api) -> None:
    r = httpx.post(f"{api.url}/v1/sandboxes", headers=api.auth(api.alice),
                   json={"profile": "profile.fake", "dry_run": True, "ttl": "30m"})
    assert r.status_code == 200
    assert r.json()["schema"] == "sandboxer.plan/v1"
    assert r.json()["actor"] == "alice"
    assert httpx.get(f"{api.url}/v1/sandboxes", headers=api.auth(api.alice)).json()[
        "items"] == []


def test_oversized_bodies_are_413(api: Api) -> None:
    big = {"profile": "profile.fake", "name": "x" * 2_000_000}
    r = httpx.post(f"{api.url}/v1/sandboxes", json=big, headers=api.auth(api.alice))
    assert r.status_code == 413
    assert r.json()["code"] == "request_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"profile": "profile.fake", "name": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = httpx.post(f"{api.url}/v1/sandboxes", content=chunks(), headers={
        **api.auth(api.alice), "Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_routes_and_methods_answer_with_error_documents(api: Api) -> None:
    r = httpx.get(f"{api.url}/v1/nothing", headers=api.auth(api.alice))
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = httpx.put(f"{api.url}/v1/sandboxes", headers=api.auth(api.alice))
    assert r.status_code == 405
    assert r.json()["schema"] == "sandboxer.error/v1"


def test_unknown_v1_routes_authenticate_first(api: Api) -> None:
    for method, path in (("GET", "/v1/nothing"), ("PUT", "/v1/sandboxes"), ("GET", "/v1")):
        r = httpx.request(method, f"{api.url}{path}")
        assert (r.status_code, r.json()["code"]) == (401, "unauthenticated"), path
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(f"{api.url}/elsewhere")  # outside /v1: nothing to authenticate
    assert (r.status_code, r.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize("labels", [{"k": "v;rm-rf-VALUE"}, {"k": "VALUE\n"},
                                    {"BAD-VALUE-KEY": "v"}, {"k\nVALUE": "v"}])
def test_label_422s_never_echo_the_rejected_text(api: Api, labels: dict[str, str]) -> None:
    r = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake", "labels": labels},
                   headers=api.auth(api.alice))
    assert r.status_code == 422, r.text
    assert "VALUE" not in r.json()["message"]


def test_an_enormous_extend_is_422_not_500(api: Api) -> None:
    auth = api.auth(api.alice)
    sid = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake"},
                     headers=auth).json()["id"]
    r = httpx.post(f"{api.url}/v1/sandboxes/{sid}/extend", json={"ttl": "999999999d"},
                   headers=auth)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    assert "at most 36500d" in r.json()["message"]


def test_openapi_names_the_routes_and_the_bearer_scheme(api: Api) -> None:
    doc = httpx.get(f"{api.url}/openapi.json").json()
    for path in ("/v1/profiles", "/v1/sandboxes", "/v1/sandboxes/{sandbox_id}",
                 "/v1/sandboxes/{sandbox_id}/extend", "/v1/sandboxes/{sandbox_id}/reachability",
                 "/v1/events"):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
