"""A real ext.local sandbox with secrets outlives restarts of `sandboxer serve` (SIGTERM,
then kill -9): its sessions still get the secrets afterwards, and a stop and start through
the new server resolves them again there (a changed value is the one bound), with no value
in anything the API answered."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from tests.api_support import add_token
from tests.integration.conftest import ssh
from tests.integration.test_secrets_local import canary
from tests.support_env import KEEP_ENV

from sandboxer.client.http import HttpClient
from sandboxer.config import Settings

from .conftest import Serve

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SANDBOXER_") or k in KEEP_ENV
           or k in ("SANDBOXER_HOME", "SANDBOXER_PROFILES")}
    env.update(extra)
    return env


def _secrets(reach: dict[str, object]) -> list[str]:
    done = ssh(reach, 'echo "$ENVTOK"; echo "$FILETOK"; cat /run/secrets/FILETOK')
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().splitlines()


def test_secrets_survive_serve_restarts_and_a_start_resolves_them_again(
        local_home: Settings, tmp_path: Path) -> None:
    first, second = canary("rst1"), canary("rst2")
    filed = tmp_path / "secret.txt"
    filed.write_text(first + "-file\n")
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "sec.yaml").write_text(
        "id: profile.sec\nextends: profile.local\nsetup:\n  secret_refs: ["
        "{name: ENVTOK, ref: 'env:SBX_CANARY_RESTART'}, "
        f"{{name: FILETOK, ref: 'file:{filed}'}}]\n")
    token = add_token(local_home, "agt")
    log = tmp_path / "serve.log"
    texts: list[str] = []
    server = Serve(_env(SBX_CANARY_RESTART=first), log)
    try:
        with HttpClient(server.url, token) as sdk:
            box = sdk.create("profile.sec", ttl="10m")
            reach = sdk.reachability(box.id).model_dump(mode="json", by_alias=True)
        assert _secrets(reach) == [first, first + "-file", first + "-file"]
        assert server.stop() == 0
        server = Serve(_env(SBX_CANARY_RESTART=first), log)
        with HttpClient(server.url, token) as sdk:
            assert sdk.get(box.id).state == "ready"
            assert _secrets(sdk.reachability(box.id).model_dump(
                mode="json", by_alias=True)) == [first, first + "-file", first + "-file"]
        server.kill()
        filed.write_text(second + "-file\n")
        server = Serve(_env(SBX_CANARY_RESTART=second), log)
        with HttpClient(server.url, token) as sdk:
            assert sdk.stop(box.id).state == "stopped"
            started = sdk.start(box.id)
            assert started.state == "ready"
            again = started.model_dump(mode="json", by_alias=True)["reachability"]
            assert _secrets(again) == [second, second + "-file", second + "-file"]
            auth = {"Authorization": f"Bearer {token}"}
            texts += [httpx.get(f"{server.url}/v1/{p}", headers=auth).text
                      for p in (f"sandboxes/{box.id}", "events", "sandboxes?all=true")]
            assert sdk.destroy(box.id).state == "destroyed"
    finally:
        server.stop()
    texts.append(log.read_text())
    assert not [t for t in texts if first in t or second in t]
