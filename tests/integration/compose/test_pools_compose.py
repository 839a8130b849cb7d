"""Warm pools on ext.compose-ssh, through a real SSH target and dockerd: the pool fills
with a ready container that holds no secret, a create claims it and binds env and a
secret (a canary, file: ref) that its new SSH sessions see, and the canary is in no file
of ours."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.canary_support import Cli, leaks

from sandboxer.config import Settings
from sandboxer.models.requests import CreateRequest
from sandboxer.service.app import Service

from .test_secrets_compose import sandbox_ssh

if TYPE_CHECKING:
    from .conftest import SshTarget

pytestmark = pytest.mark.integration


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_compose_pool_binds_at_claim(ssh_target: SshTarget, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    value = f"cnrypoolc{secrets.token_hex(12)}"
    (tmp_path / "token.txt").write_text(value + "\n")
    home, profiles = tmp_path / "home", tmp_path / "profiles"
    profiles.mkdir()
    for k, v in {"SANDBOXER_HOME": str(home), "HOME": str(tmp_path / "user"),
                 "SANDBOXER_PROFILES": str(profiles)}.items():
        monkeypatch.setenv(k, v)
    (profiles / "cpool.yaml").write_text(json.dumps({
        "id": "profile.cpool", "extension": "ext.compose-ssh", "route": "self-hosted-only",
        "spec": {"service": "main", "pull": "never",
                 "compose": {"services": {"main": {"image": ssh_target.image}}}},
        "reachability": {"user": "agent"}, "pool": {"size": 1, "max_age": "30m"},
        "setup": {"env": {"MODE": "claimed"},
                  "secret_refs": [{"name": "TOKEN", "ref": f"file:{tmp_path / 'token.txt'}"}]},
    }))
    cli = Cli(timeout=600)
    added = cli("targets", "add", "tgt", ssh_target.url, "--identity",
                str(ssh_target.identity_file), "--yes", "--json")
    assert added.returncode == 0, added.stderr
    service = Service(Settings.from_env())
    try:
        deadline = time.monotonic() + 300
        while not (ready := service.store.query_documents(profile="profile.cpool",
                                                          pooled=True, states=["ready"])):
            run(service.refill_pools())
            assert time.monotonic() < deadline, "the compose pool never filled"
        (pooled,) = ready
        bare = sandbox_ssh(pooled["reachability"], 'printf "%s|%s\\n" "$MODE" "$TOKEN"; '
                           'ls /run/secrets 2>/dev/null | wc -l')
        assert bare.stdout.decode().split() == ["|", "0"], bare.stderr

        box = run(service.create(CreateRequest(profile="profile.cpool", actor="agt",
                                               labels={"run": "c"})))
        assert box.id == pooled["id"]
        assert (box.actor, box.labels) == ("agt", {"run": "c"})
        assert box.reachability is not None
        shown = sandbox_ssh(box.reachability.model_dump(mode="json", by_alias=True),
                            'printf "%s|%s\\n" "$MODE" "$TOKEN"; cat /run/secrets/TOKEN')
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.decode().splitlines() == [f"claimed|{value}", value]
        found = leaks([value], [home])
        assert not found, found
    finally:
        (profiles / "cpool.yaml").unlink()
        for doc in service.store.query_documents(states=["provisioning", "ready",
                                                         "unreachable", "destroying"]):
            run(service.destroy(doc["id"]))
