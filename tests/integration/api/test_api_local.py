"""The full lifecycle on real ext.local through the API over a socket, with secret canaries
that must reach the sandbox and nothing else: API responses, the SDK, State Hub payloads."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from tests.api_support import ApiServer, StateHub, add_token, wait_for
from tests.integration.conftest import ssh
from tests.integration.test_secrets_local import canary

from sandboxer.client.http import HttpClient
from sandboxer.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("database")]  # both backends


def test_lifecycle_on_ext_local_through_the_api(local_home: Settings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    secret = canary("api")
    monkeypatch.setenv("SBX_CANARY_API", secret)
    hub = StateHub().start()
    for key, value in hub.env().items():
        monkeypatch.setenv(key, value)
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "sec.yaml").write_text(
        "id: profile.sec\nextends: profile.local\nsetup:\n"
        "  secret_refs: [{name: TOKEN, ref: 'env:SBX_CANARY_API'}]\n")
    settings = Settings.from_env()
    agt, other = add_token(settings, "agt"), add_token(settings, "other")
    texts: list[str] = []
    try:
        with ApiServer(settings) as server, HttpClient(server.url, agt) as sdk:
            box = sdk.create("profile.sec", ttl="10m", labels={"k": "v"})
            assert (box.state, box.actor, box.extension) == ("ready", "agt", "ext.local")
            reach = sdk.reachability(box.id).model_dump(mode="json", by_alias=True)
            done = ssh(reach, 'echo "in:$TOKEN"; id -un')
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().splitlines()[0] == f"in:{secret}"
            assert sdk.extend(box.id, "20m").expires_at > box.expires_at
            for path in ("", "/reachability"):
                r = httpx.get(f"{server.url}/v1/sandboxes/{box.id}{path}",
                              headers={"Authorization": f"Bearer {agt}"})
                texts.append(r.text)
                other_r = httpx.get(f"{server.url}/v1/sandboxes/{box.id}{path}",
                                    headers={"Authorization": f"Bearer {other}"})
                assert other_r.status_code == 404
            texts += [httpx.get(f"{server.url}/v1/{p}", headers={
                "Authorization": f"Bearer {agt}"}).text for p in ("sandboxes?all=true", "events")]
            gone = sdk.destroy(box.id)
            assert gone.state == "destroyed"
            assert ssh(reach, "true", timeout=10).returncode != 0
            wait_for(lambda: len(hub.accepted) >= 4)  # created, ready, extended, destroyed
            types = [hub.accepted[k]["type"] for k in hub.order]
            assert types == ["sandbox.created", "sandbox.ready", "sandbox.extended",
                             "sandbox.destroyed"]
    finally:
        hub.stop()
    texts += [raw.decode() for raw in hub.raw]
    assert not [t for t in texts if secret in t]
