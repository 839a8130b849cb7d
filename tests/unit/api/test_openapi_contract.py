"""The OpenAPI document is a contract a generator can use: typed answers and errors,
snake_case operationIds, tags; statuses come only from the error classes."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from sandboxer import errors
from sandboxer.api.app import create_app
from sandboxer.config import Settings

from .conftest import Api

TAGS = {"profiles", "sandboxes", "events", "pools", "targets", "images", "admin",
        "snapshots"}
OPERATIONS = {
    ("get", "/v1/whoami"): ("whoami", "Whoami"),
    ("get", "/v1/profiles"): ("list_profiles", "ProfileList"),
    ("get", "/v1/profiles/{profile_id}"): ("get_profile", "ProfileDocument"),
    ("post", "/v1/profiles/validate"): ("validate_profiles", "ValidationReport"),
    ("post", "/v1/sandboxes"): ("create_sandbox", "SandboxStatus"),
    ("get", "/v1/sandboxes"): ("list_sandboxes", "SandboxList"),
    ("get", "/v1/sandboxes/{sandbox_id}"): ("get_sandbox", "SandboxStatus"),
    ("delete", "/v1/sandboxes/{sandbox_id}"): ("destroy_sandbox", "SandboxStatus"),
    ("post", "/v1/sandboxes/{sandbox_id}/extend"): ("extend_sandbox", "SandboxStatus"),
    ("post", "/v1/sandboxes/{sandbox_id}/stop"): ("stop_sandbox", "SandboxStatus"),
    ("post", "/v1/sandboxes/{sandbox_id}/start"): ("start_sandbox", "SandboxStatus"),
    ("post", "/v1/sandboxes/{sandbox_id}/pause"): ("pause_sandbox", "SandboxStatus"),
    ("post", "/v1/sandboxes/{sandbox_id}/resume"): ("resume_sandbox", "SandboxStatus"),
    ("get", "/v1/sandboxes/{sandbox_id}/reachability"): ("get_reachability", "Reachability"),
    ("get", "/v1/events"): ("list_events", "EventList"),
    ("post", "/v1/reap"): ("reap", "SandboxList"),
    ("post", "/v1/reconcile"): ("reconcile", "ReconcileReport"),
    ("get", "/v1/pools"): ("list_pools", "PoolList"),
    ("get", "/v1/pools/{profile_id}"): ("get_pool", "Pool"),
    ("get", "/v1/targets"): ("list_targets", "TargetList"),
    ("post", "/v1/targets"): ("add_target", "TargetAdded"),
    ("get", "/v1/targets/check"): ("check_targets", "TargetCheckList"),
    ("delete", "/v1/targets/{name}"): ("remove_target", "TargetRemoved"),
    ("post", "/v1/images/{name}/build"): ("build_image", "ImageBuilt"),
    ("get", "/v1/doctor"): ("doctor", "DoctorReport"),
    ("post", "/v1/images/build"): ("build_image_by_name", "ImageBuilt"),
    ("post", "/v1/tokens"): ("add_token", "TokenCreated"),
    ("get", "/v1/tokens"): ("list_tokens", "TokenList"),
    ("delete", "/v1/tokens/{token_id}"): ("remove_token", "TokenRemoved"),
    ("post", "/v1/events/publish"): ("publish_events", "PublishReport"),
    ("get", "/v1/sandboxes/{sandbox_id}/identity"): ("get_identity", "SandboxIdentity"),
    ("post", "/v1/sandboxes/{sandbox_id}/snapshot"): ("snapshot_sandbox", "SnapshotStatus"),
    ("post", "/v1/sandboxes/{sandbox_id}/fork"): ("fork_sandbox", "SandboxStatus"),
    ("get", "/v1/snapshots"): ("list_snapshots", "SnapshotList"),
    ("get", "/v1/snapshots/{snapshot_id}"): ("get_snapshot", "SnapshotStatus"),
    ("delete", "/v1/snapshots/{snapshot_id}"): ("delete_snapshot", "SnapshotStatus"),
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("openapi")
    doc: dict[str, Any] = create_app(Settings.from_env({"SANDBOXER_HOME": str(home)}),
                                     background=False).openapi()
    return doc


def _ref(response: dict[str, Any]) -> str:
    return str(response["content"]["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]


def test_every_route_declares_its_answer_operation_id_and_tag(spec: dict[str, Any]) -> None:
    found = {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}
    assert set(found) == set(OPERATIONS)
    for key, (operation_id, model) in OPERATIONS.items():
        op = found[key]
        assert op["operationId"] == operation_id, key
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", op["operationId"]), key
        assert len(op["tags"]) == 1, key
        assert set(op["tags"]) <= TAGS, key
        ok = "201" if "201" in op["responses"] else "200"  # a create's, then a dry run's
        assert _ref(op["responses"][ok]) == model, key
    assert _ref(found[("post", "/v1/sandboxes")]["responses"]["200"]) == "Plan"
    assert "201" in found[("post", "/v1/sandboxes")]["responses"]
    assert [t["name"] for t in spec["tags"]] == sorted(TAGS, key=[
        "profiles", "sandboxes", "events", "pools", "targets", "images", "admin",
        "snapshots"].index)


def test_every_error_status_carries_the_error_document(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["ErrorDocument"]
    assert error["properties"]["schema"]["const"] == "sandboxer.error/v1"
    assert set(error["required"]) == {"schema", "code", "exit_code", "message"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            failing = {s: r for s, r in op["responses"].items() if not s.startswith("2")}
            assert {"401", "500", "503"} <= set(failing), (method, path)
            for status, response in failing.items():
                assert _ref(response) == "ErrorDocument", (method, path, status)
                assert "code:" in response["description"]
    create = spec["paths"]["/v1/sandboxes"]["post"]["responses"]
    assert {"403", "404", "409", "413", "422", "502", "503"} <= set(create)
    assert "sandbox_not_found" in spec["paths"]["/v1/sandboxes/{sandbox_id}"]["get"][
        "responses"]["404"]["description"]
    for op in ("stop", "start", "pause", "resume"):  # wrong state, cannot, failed
        declared = spec["paths"][f"/v1/sandboxes/{{sandbox_id}}/{op}"]["post"]["responses"]
        assert {"404", "409", "422", "502"} <= set(declared), op


def test_the_events_route_declares_the_document_it_sends(spec: dict[str, Any]) -> None:
    events = spec["components"]["schemas"]["EventList"]
    assert events["properties"]["schema"]["const"] == "sandboxer.events/v1"
    assert events["properties"]["items"]["items"]["$ref"].endswith("/Event")


def test_framework_statuses_map_back_to_error_classes() -> None:
    for status, cls in errors.BY_HTTP_STATUS.items():
        assert cls.http_status == status
        err = errors.for_http_status(status, "x")
        assert (type(err), err.http_status) == (cls, status)
    assert errors.for_http_status(405, "x").code == "usage"
    assert errors.for_http_status(418, "x").http_status == errors.UsageError.http_status
    assert errors.from_code("usage", "x").__class__ is errors.UsageError


def test_framework_errors_answer_with_their_class_status(api: Api) -> None:
    r = httpx.put(f"{api.url}/v1/sandboxes", headers=api.auth(api.alice))
    assert (r.status_code, r.json()["code"], r.json()["exit_code"]) == (405, "usage", 2)
    assert "allow" in r.headers
    r = httpx.get(f"{api.url}/v1/sandboxes", params={"state": "bogus"},
                  headers=api.auth(api.alice))
    assert (r.status_code, r.json()["code"], r.json()["exit_code"]) == (422, "invalid_input", 4)
    r = httpx.get(f"{api.url}/v1/nothing", headers=api.auth(api.alice))
    assert (r.status_code, r.json()["code"], r.json()["exit_code"]) == (404, "not_found", 3)
