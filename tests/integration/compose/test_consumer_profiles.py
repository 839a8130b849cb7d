"""The consumer profiles through the CLI on the real compose-ssh test target (issue 7).

profile.agent-dev runs as shipped (its image built by images/agent-dev); profile.build-
compose runs with a test-size override (the base image, no GHC) and its secret refs served
by the KV v2 test server, so the whole secret boundary is exercised too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support_env import KEEP_ENV

pytestmark = pytest.mark.integration

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="session")
def agent_image(docker_daemon: Any, base_image: str) -> str:
    """sandboxer/agent-dev built by its recipe into the test engine (rootfs cached)."""
    done = subprocess.run(["bash", str(ROOT / "images/agent-dev/build.sh"), "--docker-host",
                           docker_daemon.host], capture_output=True, text=True, timeout=1500,
                          check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"images/agent-dev/build.sh failed:\n{done.stderr[-3000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOXER, *args], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def consumer_env(ssh_target: Any, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_") or k in KEEP_ENV}
    env.update(SANDBOXER_HOME=str(tmp_path / "home"), HOME=str(tmp_path / "user"),
               DOCKER_HOST=ssh_target.docker_host)
    added = cli(env, "targets", "add", "t1", ssh_target.url, "--identity",
                str(ssh_target.identity_file), "--yes")
    assert added.returncode == 0, added.stderr
    return env


def test_agent_dev_creates_with_tunnel_metadata(agent_image: str,
                                                consumer_env: dict[str, str]) -> None:
    assert agent_image == "sandboxer/agent-dev:0.1.0"
    created = cli(consumer_env, "create", "profile.agent-dev", "--target", "t1", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    sid = doc["id"]
    try:
        assert (doc["actor"], doc["labels"]["consumer"]) == ("agt", "glas-harness")
        reach = json.loads(cli(consumer_env, "reachability", "show", sid, "--json").stdout)
        assert reach["tunnel_via"] == "obr-agent-dev"
        assert reach["identity"] == "agt"
        assert reach["tunnel"]["alias"] == f"sbx-{sid}"
        assert 2200 <= reach["tunnel"]["local_port"] <= 2999
        assert reach["tunnel_status"]["command"] == "ops-bridge tunnel status obr-agent-dev"
        # No ops-bridge runs here: reach the direct endpoint the route would point at.
        ran = cli(consumer_env, "ssh", "--direct", sid, "--json", "--",
                  "git --version && python3 -c 'print(6*7)' && test -w $HOME")
        result = json.loads(ran.stdout)
        assert result["exit_status"] == 0, result
        assert "git version" in result["stdout"]
        assert "42" in result["stdout"]
    finally:
        assert cli(consumer_env, "destroy", sid).returncode == 0


def test_build_compose_with_secrets_and_setup(ssh_target: Any, consumer_env: dict[str, str],
                                              tmp_path: Path, kv_server: Any) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    # Test size: the base image stands in for haskell-build; the refs are the shipped ones.
    (profiles / "build-test.yaml").write_text(
        "id: profile.build-test\nextends: profile.build-compose\n"
        "spec:\n  compose:\n    services:\n      build:\n"
        f"        image: {ssh_target.image}\n"
        "setup:\n  instructions:\n    - echo step-1 > /tmp/steps\n"
        "    - test -s /run/secrets/HACKAGE_TOKEN && echo step-2 >> /tmp/steps\n")
    token, deploy = "canary-hackage-7f3a", "canary-deploy-91bc"
    kv_server.put("kv/build/hackage", token=token)
    kv_server.put("kv/build/git", deploy_key=deploy)
    env = {**consumer_env, "SANDBOXER_PROFILES": str(profiles), "BAO_ADDR": kv_server.url,
           "BAO_TOKEN": kv_server.token}
    dry = cli(env, "create", "profile.build-test", "--target", "t1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert {r["name"]: r["status"] for r in json.loads(dry.stdout)["secret_refs"]} == {
        "HACKAGE_TOKEN": "ok", "GIT_DEPLOY_KEY": "ok"}
    created = cli(env, "create", "profile.build-test", "--target", "t1", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    try:
        assert token not in created.stdout + created.stderr
        ran = json.loads(cli(env, "ssh", doc["id"], "--json", "--",
                             "cat /tmp/steps; printenv HACKAGE_TOKEN").stdout)
        assert ran["stdout"].split() == ["step-1", "step-2", token]
        shown = cli(env, "get", doc["id"], "--json").stdout
        assert token not in shown
        assert deploy not in shown
    finally:
        assert cli(env, "destroy", doc["id"]).returncode == 0


@pytest.mark.parametrize("script", ["smoke-agent-dev.sh", "smoke-build-profile.sh"])
def test_smoke_scripts_dry_run(script: str, consumer_env: dict[str, str]) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / script)], env=consumer_env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "dry run done" in done.stderr
    assert json.loads(cli(consumer_env, "list", "--all", "--json").stdout)["items"] == []


def test_smoke_agent_dev_live(agent_image: str, consumer_env: dict[str, str]) -> None:
    env = {**consumer_env, "SANDBOXER_SMOKE_LIVE": "1", "SANDBOXER_SMOKE_TARGET": "t1",
           "PATH": f"{os.path.dirname(SANDBOXER)}:{consumer_env['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "scripts/smoke-agent-dev.sh")], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "agent says 42" in done.stdout
    assert "clone + run in" in done.stderr
    # The trap destroyed it.
    assert json.loads(cli(consumer_env, "list", "--json").stdout)["items"] == []
