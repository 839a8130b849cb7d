"""The Python SDK (HttpClient) round-trips every Client method; the CLI uses it by URL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxer.client.http import HttpClient
from sandboxer.client.local import LocalClient
from sandboxer.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    SandboxNotFound,
    Unauthenticated,
    UsageError,
)
from sandboxer.models.sandbox import SandboxStatus

from .conftest import Api


def test_round_trip_matches_the_local_client(api: Api) -> None:
    with HttpClient(api.url, api.alice) as sdk:
        assert sdk.whoami()["actor"] == "alice"
        assert "profile.fake" in [p["id"] for p in sdk.list_profiles()]
        assert sdk.get_profile("profile.fake").extension == "ext.fake"
        plan = sdk.plan("profile.fake", ttl="10m")
        assert (plan["schema"], plan["ttl"]) == ("sandboxer.plan/v1", "10m")
        box = sdk.create("profile.fake", labels={"k": "v"}, name="one")
        assert isinstance(box, SandboxStatus)
        assert (box.state, box.actor, box.labels, box.name) == (
            "ready", "alice", {"tier": "test", "k": "v"}, "one")
        local = LocalClient(api.settings, reap_opportunistically=False)
        assert sdk.get_document(box.id) == local.get_document(box.id)
        assert sdk.get(box.id) == box
        assert [s.id for s in sdk.list_sandboxes(labels={"k": "v"})] == [box.id]
        assert sdk.list_documents(states=["destroyed"]) == []
        longer = sdk.extend(box.id, "90m")
        assert longer.expires_at > box.expires_at
        assert sdk.reachability(box.id).port == 2222
        assert [e.type for e in sdk.events(sandbox_id=box.id)] == [
            "sandbox.created", "sandbox.ready", "sandbox.extended"]
        assert sdk.event_documents(sandbox_id=box.id)[0]["delivery"] == "pending"
        assert [sdk.stop(box.id).state, sdk.start(box.id).state, sdk.pause(box.id).state,
                sdk.resume(box.id).state] == ["stopped", "ready", "paused", "ready"]
        assert isinstance(sdk.stop(box.id), SandboxStatus)
        gone = sdk.destroy(box.id)
        assert gone.state == "destroyed"
        assert sdk.destroy_document(box.id)["state"] == "destroyed"  # idempotent
        assert [d["id"] for d in sdk.list_documents(all=True)] == [box.id]
        assert sdk.targets_list()[0]["name"] == "local"


def test_errors_come_back_as_the_same_classes(api: Api) -> None:
    with HttpClient(api.url, api.bob) as sdk:
        with pytest.raises(SandboxNotFound, match="no sandbox with id 'sbx-aaaaaaaaaa'"):
            sdk.get("sbx-aaaaaaaaaa")
        with pytest.raises(Forbidden):
            sdk.reap()
        with pytest.raises(SandboxNotFound):
            sdk.stop("sbx-aaaaaaaaaa")
        with pytest.raises(InvalidInput):
            sdk.create("profile.fake", ttl="3h")
        with pytest.raises(NotFound):
            sdk.get("../../v1/profiles")  # a path segment, never another route
    with HttpClient(api.url, "sbxt_wrong") as sdk, pytest.raises(Unauthenticated):
        sdk.list_profiles()


def test_validate_uploads_files_and_names_them_back(api: Api, tmp_path: Path) -> None:
    good = tmp_path / "good one.yaml"  # a name the server would not take as is
    good.write_text("id: profile.g\nextends: profile.fake\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: profile.b\nextension: ext.fake\nttl: {default: forever}\n")
    with HttpClient(api.url, api.alice) as sdk:
        results = sdk.validate_profiles([good, bad])
    assert [(r["file"], r["ok"]) for r in results] == [(str(good), True), (str(bad), False)]
    assert str(bad) in results[1]["error"]


def test_the_cli_talks_to_a_server_when_sandboxer_url_is_set(api: Api, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SANDBOXER_URL": api.url, "SANDBOXER_TOKEN": api.alice,
           "SANDBOXER_HOME": str(tmp_path / "elsewhere")}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sandboxer", *argv], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    made = cli("create", "profile.fake", "--json", "--quiet")
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["id"]
    assert json.loads(cli("get", sid, "--json").stdout)["actor"] == "alice"
    assert [d["id"] for d in json.loads(cli("list", "--json").stdout)["items"]] == [sid]
    assert cli("extend", sid, "--ttl", "20m").returncode == 0
    stopped = cli("stop", sid, "--json")
    assert json.loads(stopped.stdout)["state"] == "stopped", stopped.stderr
    assert "stop on http" in stopped.stderr  # progress on stderr
    assert cli("resume", sid).returncode == 8
    assert json.loads(cli("start", sid, "--json", "-q").stdout)["state"] == "ready"
    shown = cli("events", "--json")
    assert len(json.loads(shown.stdout)["items"]) == 5
    missing = cli("get", "sbx-aaaaaaaaaa", "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stdout)["code"] == "sandbox_not_found"
    assert cli("reap").returncode == 8  # alice is no admin
    assert cli("destroy", sid).returncode == 0
    assert not (tmp_path / "elsewhere" / "state.db").exists()  # nothing local was used
    env["SANDBOXER_TOKEN"] = "sbxt_wrong"
    assert cli("list").returncode == 8
    env["SANDBOXER_URL"] = "http://127.0.0.1:9"
    down = cli("list")
    assert down.returncode == 1
    assert "cannot reach sand-boxer at http://127.0.0.1:9" in down.stderr


def test_tokens_publish_and_builds_by_any_name_round_trip(api: Api) -> None:
    with HttpClient(api.url, api.root) as sdk:
        token, summary = sdk.tokens_add("dave")
        assert token.startswith("sbxt_")
        assert set(summary) == {"id", "actor", "admin", "created_at", "last_used_at"}
        local = LocalClient(api.settings, reap_opportunistically=False)
        assert sdk.tokens_list() == local.tokens_list()  # the server's table
        assert token not in json.dumps(sdk.tokens_list())
        with HttpClient(api.url, token) as dave:
            assert dave.whoami() == {"schema": "sandboxer.whoami/v1", "actor": "dave",
                                     "admin": False}
            with pytest.raises(Forbidden):
                dave.tokens_list()
            with pytest.raises(Forbidden):
                dave.events_publish()
            assert sdk.tokens_remove(summary["id"])["actor"] == "dave"
            with pytest.raises(Unauthenticated):
                dave.whoami()
        with pytest.raises(NotFound):
            sdk.tokens_remove(summary["id"])
        # no State Hub on this server: the error the local command gives
        with pytest.raises(UsageError, match="no State Hub configured"):
            sdk.events_publish()
        # a name that is no path segment goes in the body; the same service answers
        with pytest.raises(InvalidInput, match="nothing builds an image named 'a b'"):
            sdk.images_build("a b")
        assert sdk.images_build("fake-image")["image"] == "fake/fake-image:1"
        with pytest.raises(UsageError, match="absolute path on the server's machine"):
            sdk.targets_add(name="t", url="fake://t", identity="relative/key")
