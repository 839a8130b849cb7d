"""stop, start, pause and resume of real ext.local sandboxes through the real CLI (a
`sandboxer` process, through the warm local service as users run it): the workspace and
the host key survive a stop and start, a pause keeps its processes, a stopped sandbox is
extended in its state and destroyed like any other."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config import Settings

from .conftest import SANDBOXER, raw_state, ssh

pytestmark = pytest.mark.integration


def sbx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOXER, *args], capture_output=True, text=True, timeout=180,
                          check=False, stdin=subprocess.DEVNULL, env=dict(os.environ))


def doc(*args: str) -> Any:
    done = sbx(*args, "--json")
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return json.loads(done.stdout)


def run_in(reach: dict[str, Any], command: str) -> str:
    done = ssh(reach, command)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_stop_start_keeps_the_workspace_and_host_key(local_home: Settings) -> None:
    box = doc("create", "profile.local", "--ttl", "10m", "-q")
    sid, reach = box["id"], box["reachability"]
    digest = run_in(reach, "head -c 65536 /dev/urandom > /workspace/data && "
                    "sha256sum /workspace/data | cut -d' ' -f1")
    stopped = doc("stop", sid)
    assert (stopped["state"], stopped["reason"]) == ("stopped", "stopped")
    assert ssh(reach, "true", timeout=20).returncode != 0  # its processes ended
    shown = sbx("reachability", "show", sid)
    assert shown.returncode == 8
    assert f"sandboxer start {sid}" in shown.stderr
    started = doc("start", sid)
    assert started["state"] == "ready"
    again = started["reachability"]
    assert again["known_hosts"].split()[-2:] == reach["known_hosts"].split()[-2:]
    assert run_in(again, "sha256sum /workspace/data | cut -d' ' -f1") == digest
    types = [e["type"] for e in doc("events", "--sandbox", sid)["items"]]
    assert types[-2:] == ["sandbox.stopped", "sandbox.started"]


def test_a_stopped_sandbox_is_extended_in_its_state_and_destroyed(
        local_home: Settings) -> None:
    box = doc("create", "profile.local", "--ttl", "5m", "-q")
    sid = box["id"]
    doc("stop", sid)
    longer = doc("extend", sid, "--ttl", "30m")
    assert longer["state"] == "stopped"
    assert datetime.fromisoformat(longer["expires_at"]) > datetime.fromisoformat(
        box["expires_at"])
    workspace = Path(raw_state(local_home, sid)["handle"]["data"]["workspace"])
    assert workspace.exists()
    gone = doc("destroy", sid)["items"][0]
    assert (gone["state"], gone["reason"]) == ("destroyed", "destroyed")
    assert not workspace.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="ext.local pauses through the freezer "
                    "cgroup, which its endpoint manages only as root")
def test_pause_keeps_processes_and_resume_carries_on(local_home: Settings) -> None:
    box = doc("create", "profile.local", "--ttl", "10m", "-q")
    sid, reach = box["id"], box["reachability"]
    run_in(reach, "nohup sh -c 'while :; do date +%s%N >> /workspace/ticks; sleep 0.05; "
                  "done' >/dev/null 2>&1 & echo $! > /workspace/pid")
    pid = run_in(reach, "cat /workspace/pid")
    paused = doc("pause", sid)
    assert paused["state"] == "paused"
    assert sbx("reachability", "show", sid).returncode == 8
    resumed = doc("resume", sid)
    assert resumed["state"] == "ready"
    assert resumed["reachability"] == reach
    assert run_in(reach, f"kill -0 {pid} && echo alive") == "alive"
    doc("pause", sid)
    gone = doc("destroy", sid)["items"][0]  # a paused sandbox is destroyed too
    assert gone["state"] == "destroyed"
