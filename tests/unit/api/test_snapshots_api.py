"""Snapshots and forks over the HTTP API: the SDK (HttpClient) round-trips them, owners
see only their own, errors keep their codes and statuses, the CLI works by URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sandboxer.client.http import HttpClient
from sandboxer.errors import Conflict, InvalidInput, SandboxNotFound, SnapshotNotFound
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.models.snapshot import SnapshotStatus

from .conftest import Api


def test_the_sdk_round_trips_snapshots_and_forks(api: Api) -> None:
    with HttpClient(api.url, api.alice) as sdk, HttpClient(api.url, api.bob) as bob:
        box = sdk.create("profile.fake", labels={"k": "v"})
        snap = sdk.snapshot(box.id, name="s1", retain="1d")
        assert isinstance(snap, SnapshotStatus)
        assert (snap.state, snap.actor, snap.name, snap.sandbox_id) == ("ready", "alice",
                                                                        "s1", box.id)
        assert (snap.expires_at - snap.created_at).total_seconds() == 86400
        assert sdk.get_snapshot(snap.id) == snap
        assert sdk.list_snapshots(sandbox_id=box.id) == [snap]
        made = sdk.create("profile.fake", from_snapshot=snap.id)
        assert (made.snapshot, made.state, made.actor) == (snap.id, "ready", "alice")
        fork = sdk.fork(box.id, labels={"b": "2"}, name="f", ttl="30m")
        assert isinstance(fork, SandboxStatus)
        assert (fork.name, fork.labels) == ("f", {"tier": "test", "k": "v", "b": "2"})
        assert fork.snapshot is not None
        assert len(sdk.list_snapshots()) == 2
        # Another actor: answered exactly as for what does not exist.
        with pytest.raises(SnapshotNotFound):
            bob.get_snapshot(snap.id)
        with pytest.raises(SnapshotNotFound):
            bob.delete_snapshot(snap.id)
        with pytest.raises(SnapshotNotFound):
            bob.create("profile.fake", from_snapshot=snap.id)
        with pytest.raises(SandboxNotFound):
            bob.snapshot(box.id)
        with pytest.raises(SandboxNotFound):
            bob.fork(box.id)
        assert bob.list_snapshots() == []
        with pytest.raises(InvalidInput, match=r"snapshot\.max"):
            sdk.snapshot(box.id, retain="60d")
        gone = sdk.delete_snapshot(snap.id)
        assert gone.state == "deleted"
        assert sdk.delete_snapshot(snap.id) == gone  # idempotent
        assert sdk.list_snapshots(all=True)[0].id == snap.id
        with pytest.raises(Conflict, match="only a ready snapshot"):
            sdk.create("profile.fake", from_snapshot=snap.id)
        types = [e.type for e in sdk.events(sandbox_id=box.id)]
        assert types.count("snapshot.created") == 2
        assert types[-1] == "snapshot.deleted"
        sdk.destroy(box.id)
        with pytest.raises(Conflict, match="it is destroyed"):
            sdk.snapshot(box.id)
    with HttpClient(api.url, api.root) as admin:
        assert len(admin.list_snapshots(all=True)) == 2


def test_routes_answer_statuses_and_the_cli_works_by_url(api: Api, tmp_path: Path) -> None:
    alice = api.auth(api.alice)
    made = httpx.post(f"{api.url}/v1/sandboxes", json={"profile": "profile.fake"},
                      headers=alice, timeout=60)
    sid = made.json()["id"]
    r = httpx.post(f"{api.url}/v1/sandboxes/{sid}/snapshot", headers=alice, timeout=60)
    assert r.status_code == 201
    snap = r.json()
    assert snap["schema"] == "sandboxer.snapshot/v1"
    r = httpx.get(f"{api.url}/v1/snapshots/{snap['id']}", headers=api.auth(api.bob))
    assert (r.status_code, r.json()["code"]) == (404, "snapshot_not_found")
    r = httpx.get(f"{api.url}/v1/snapshots", params={"sandbox": sid}, headers=alice)
    assert r.json() == {"schema": "sandboxer.snapshots/v1", "items": [snap]}
    r = httpx.post(f"{api.url}/v1/sandboxes/{sid}/snapshot", json={"retain": "bogus"},
                   headers=alice, timeout=60)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = httpx.post(f"{api.url}/v1/sandboxes", headers=alice, timeout=60,
                   json={"profile": "profile.fake", "from_snapshot": snap["id"]})
    assert (r.status_code, r.json()["snapshot"]) == (201, snap["id"])
    r = httpx.post(f"{api.url}/v1/sandboxes/{sid}/fork", json={"name": "x"}, headers=alice,
                   timeout=60)
    assert (r.status_code, r.json()["name"], r.json()["state"]) == (201, "x", "ready")

    env = {**os.environ, "SANDBOXER_URL": api.url, "SANDBOXER_TOKEN": api.alice,
           "SANDBOXER_HOME": str(tmp_path / "elsewhere")}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sandboxer", *argv], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    taken = cli("snapshot", sid, "--json", "--name", "by-url")
    assert taken.returncode == 0, taken.stderr
    assert "snapshot on http" in taken.stderr
    by_url = json.loads(taken.stdout)
    listed = json.loads(cli("snapshots", "list", "--sandbox", sid, "--json").stdout)
    assert [s["id"] for s in listed["items"]][-1] == by_url["id"]
    forked = cli("fork", sid, "--json", "-q")
    assert json.loads(forked.stdout)["state"] == "ready", forked.stderr
    assert cli("snapshots", "delete", by_url["id"]).returncode == 0
    assert cli("snapshots", "show", "snap-aaaaaaaaaa").returncode == 3
    assert not (tmp_path / "elsewhere" / "state.db").exists()  # nothing local was used
