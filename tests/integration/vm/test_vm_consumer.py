"""profile.build (snuggle-inventor) through the CLI on a real QEMU VM (issue 7).

Test size: the shipped profile, extended to boot the cached base image (no GHC) with
small resources and two setup steps; its secret refs are the shipped ones, served by the
KV v2 test server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli

pytestmark = [pytest.mark.integration, pytest.mark.vm]
REPO = Path(__file__).resolve().parents[3]


def test_build_profile_runs_setup_with_secrets_in_a_vm(vm_cli: VMCli, kv_server: Any) -> None:
    token, deploy = "canary-vm-hackage-5d2e", "canary-vm-deploy-0a9f"
    kv_server.put("kv/build/hackage", token=token)
    kv_server.put("kv/build/git", deploy_key=deploy)
    vm_cli.env.update(BAO_ADDR=kv_server.url, BAO_TOKEN=kv_server.token)
    profile = vm_cli.profile("build-test", (
        "id: profile.build-test\nextends: profile.build\n"
        f"spec:\n  packer: {{template: {REPO / 'packer' / 'base.json'}}}\n"
        "  vm: {cpus: 1, memory: 384M, disk: null, accel: tcg}\n"
        "setup:\n  instructions:\n    - echo step-1 > /tmp/steps\n"
        "    - test -s /run/secrets/HACKAGE_TOKEN && echo step-2 >> /tmp/steps\n"))
    created = vm_cli.run("create", profile, "--json", timeout=600)
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    assert "packer: " not in created.stderr  # the cached image was reused, no build
    try:
        assert (doc["actor"], doc["labels"]["consumer"]) == ("snuggle", "snuggle-inventor")
        assert token not in created.stdout + created.stderr
        ran = json.loads(vm_cli.run("ssh", doc["id"], "--json", "--",
                                    "cat /tmp/steps; printenv HACKAGE_TOKEN").stdout)
        assert ran["stdout"].split() == ["step-1", "step-2", token]
        shown = vm_cli.run("get", doc["id"], "--json").stdout
        assert token not in shown
        assert deploy not in shown
    finally:
        assert vm_cli.run("destroy", doc["id"]).returncode == 0
