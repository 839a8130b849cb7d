"""Warm pools through the API server: its leader fills them, a create claims one, the
routes, the SDK, the CLI (by URL) and MCP say what each caller may see."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sandboxer.client.http import HttpClient
from sandboxer.config import Settings
from sandboxer.errors import NotFound

from .conftest import Api


@pytest.fixture
def settings(settings: Settings, profiles_dir: Path) -> Settings:
    (profiles_dir / "warm.yaml").write_text(
        "id: profile.warm\nextension: ext.fake\npool: {size: 2, max_age: 30m}\n")
    return settings


def _filled(sdk: HttpClient, n: int = 2) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        doc = sdk.pools_show("profile.warm")
        if doc["ready"] == n:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"the pool never held {n} ready sandboxes: {doc}")


def test_the_leader_fills_a_pool_and_a_create_claims_from_it(api: Api) -> None:
    with HttpClient(api.url, api.root) as root, HttpClient(api.url, api.alice) as alice:
        pooled = {s["id"] for s in _filled(root)["sandboxes"]}  # type: ignore[union-attr]
        assert [p["profile"] for p in root.pools_list()] == ["profile.warm"]
        seen = alice.pools_show("profile.warm")
        assert (seen["ready"], seen["sandboxes"]) == (2, None)  # counts, not sandboxes
        assert alice.list_documents() == []
        box = alice.create("profile.warm", labels={"k": "v"})
        assert box.id in pooled
        assert (box.actor, box.labels) == ("alice", {"k": "v"})
        assert [d["id"] for d in alice.list_documents()] == [box.id]
        refilled = {s["id"] for s in _filled(root)["sandboxes"]}  # type: ignore[union-attr]
        assert box.id not in refilled
        with pytest.raises(NotFound, match="no pool"):
            alice.pools_show("profile.fake")


def test_the_cli_by_url_prints_the_pool_documents(api: Api, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    with HttpClient(api.url, api.root) as root:
        _filled(root)
    env = {**os.environ, "SANDBOXER_URL": api.url, "SANDBOXER_TOKEN": api.root,
           "SANDBOXER_HOME": str(tmp_path / "elsewhere")}

    def cli(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "sandboxer", *argv], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = json.loads(cli("pools", "list", "--json"))
    assert listed["schema"] == "sandboxer.pools/v1"
    assert listed["items"][0]["ready"] == 2
    out = cli("pools", "show", "profile.warm")
    assert "profile.warm" in out
    assert "sbx-" in out
