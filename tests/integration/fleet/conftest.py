"""Three docker hosts in network namespaces (tests/fleet_support.py) and a sandboxer home
that knows them as targets h1 (zone=a, capacity 1), h2 (zone=b, disk=ssd, capacity 2) and
h3 (zone=b, capacity 3). The implicit ``local`` target has no engine here (its
DOCKER_HOST names no socket), so it is always passed over as unhealthy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.fleet_support import Fleet, FleetHost, fleet
from tests.support_env import KEEP_ENV

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
TARGETS = {"h1": (1, ["zone=a"]), "h2": (2, ["zone=b", "disk=ssd"]), "h3": (3, ["zone=b"])}
PROFILE = """\
id: profile.{name}
extension: ext.compose-ssh
ttl: {{default: 30m, max: 2h}}
{placement}
spec:
  service: main
  pull: never
  compose:
    services:
      main: {{image: "{image}"}}
reachability: {{user: agent}}
"""
PROFILES = {"spread": "", "zone-a": "placement: {pin: {zone: a}}",
            "zone-b": "placement: {pin: {zone: b}}",
            "ssd": "placement: {prefer: {disk: ssd}}"}


@pytest.fixture(scope="session")
def docker_fleet() -> Iterator[Fleet]:
    """Three docker hosts h1..h3, for the whole session."""
    with fleet(3) as f:
        yield f


@dataclass
class FleetEnv:
    """A sandboxer home whose targets are the fleet's hosts."""

    env: dict[str, str]
    fleet: Fleet

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOXER, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)

    def json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, f"sandboxer {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout)

    def create(self, profile: str, *extra: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("create", f"profile.{profile}", *extra)
        assert doc["state"] == "ready", doc
        return doc

    def get(self, sandbox_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("get", sandbox_id)
        return doc

    def events(self, sandbox_id: str) -> list[str]:
        return [e["type"] for e in self.json("events", "--sandbox", sandbox_id)["items"]]

    def host(self, name: str) -> FleetHost:
        return self.fleet[name]


@pytest.fixture
def fleet_env(docker_fleet: Fleet, tmp_path: Path) -> Iterator[FleetEnv]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name, placement in PROFILES.items():
        (profiles / f"{name}.yaml").write_text(
            PROFILE.format(name=name, placement=placement, image=docker_fleet.image))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_") or k in KEEP_ENV}
    env.update(SANDBOXER_HOME=str(tmp_path / "home"), SANDBOXER_PROFILES=str(profiles),
               HOME=str(tmp_path / "user"),
               DOCKER_HOST=f"unix://{tmp_path}/no-engine-here.sock")
    ctx = FleetEnv(env, docker_fleet)
    for name, (capacity, labels) in TARGETS.items():
        ctx.json(*docker_fleet[name].targets_add_args(capacity=capacity, labels=labels))
    yield ctx
    for h in docker_fleet.hosts:  # a test that failed half-way may have left one down
        h.link_up()
        h.start_sshd()
    live = ctx.json("list")["items"]
    if live:
        ctx.cli("destroy", *[d["id"] for d in live])
    ctx.cli("reconcile")
