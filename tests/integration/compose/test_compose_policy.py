"""The secure override holds on a real docker host over SSH: what compose will really run
(interpolated on the target) is checked against the allow-list before anything exists;
every service runs without capabilities; the SSH port survives a restart; volumes are
labelled (issue 12, items 1, 6 and 9)."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.compose.test_compose_ssh import Env, make_env

pytestmark = pytest.mark.integration


@pytest.fixture
def cenv(ssh_target: Any, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(ssh_target, tmp_path)

# (name, compose file, the `--allow` entry the refusal names). Each got a profile's compose
# file root on the docker host or another sandbox's data before the allow-list.
BYPASSES = [
    ("interp-bind", "services:\n  main:\n    image: {image}\n"
     "    volumes: ['${{UNSET_SBX:-/}}:/host']\n", "host-paths"),
    ("interp-pid", "services:\n  main:\n    image: {image}\n"
     "    pid: '${{UNSET_SBX:-host}}'\n", "host-pid"),
    ("driver-opts", "services:\n  main:\n    image: {image}\n    volumes: ['root:/host']\n"
     "volumes:\n  root:\n    driver_opts: {{type: none, o: bind, device: /}}\n",
     "driver-opts"),
    ("secret-file", "services:\n  main:\n    image: {image}\n    secrets: [s]\n"
     "secrets:\n  s: {{file: /etc/shadow}}\n", "host-files"),
    ("config-file", "services:\n  main:\n    image: {image}\n    configs: [c]\n"
     "configs:\n  c: {{file: /etc}}\n", "host-files"),
    ("env-file", "services:\n  main:\n    image: {image}\n    env_file: [/etc/shadow]\n",
     "env-file"),
    ("external-volume", "services:\n  main:\n    image: {image}\n    volumes: ['other:/data']\n"
     "volumes:\n  other: {{external: true, name: sbx-aaaaaaaaaa_data}}\n",
     "external-resources"),
    ("container-net", "services:\n  main:\n    image: {image}\n  side:\n    image: {image}\n"
     "    network_mode: 'container:sbx-aaaaaaaaaa-main-1'\n", "shared-namespaces"),
    ("cgroup-rules", "services:\n  main:\n    image: {image}\n  side:\n    image: {image}\n"
     "    device_cgroup_rules: ['b 7:* rmw']\n", "devices"),
    ("cgroup-host", "services:\n  main:\n    image: {image}\n  side:\n    image: {image}\n"
     "    cgroup: host\n", "host-cgroup"),
    ("ports", "services:\n  main:\n    image: {image}\n    ports: ['0.0.0.0:18080:22']\n",
     "ports"),
]


def _profile(env: Env, name: str, compose: str, extra: str = "") -> str:
    (env.profiles / f"{name}.compose.yaml").write_text(compose.format(image=env.target.image))
    env.add_profile(name, f"id: profile.{name}\nextension: ext.compose-ssh\n"
                    f"spec: {{service: main, pull: never, compose_file: {name}.compose.yaml"
                    f"{extra}}}\nreachability: {{user: agent}}\n")
    return f"profile.{name}"


@pytest.mark.parametrize(("name", "compose", "entry"), BYPASSES,
                         ids=[b[0] for b in BYPASSES])
def test_bypass_is_refused_before_anything_is_created(cenv: Env, name: str, compose: str,
                                                      entry: str) -> None:
    env = cenv
    profile = _profile(env, name, compose)
    res = env.cli("create", profile, "--target", "t1")
    assert res.returncode == 4, res.stderr
    assert f"--allow {entry}" in res.stderr, res.stderr
    assert env.labelled("sandboxer.instance", env.instance()) == []
    assert env.docker("ps", "-a", "-q", "--filter", "label=sandboxer.id").split() == []
    assert env.remote_dirs() == []


def _ssh(doc: dict[str, object], command: str) -> subprocess.CompletedProcess[str]:
    reach = doc["reachability"]
    assert isinstance(reach, dict)
    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_side_service_runs_without_capabilities_and_volumes_are_labelled(cenv: Env) -> None:
    env = cenv
    profile = _profile(env, "side", "services:\n  main:\n    image: {image}\n"
                       "    volumes: ['data:/data']\n  side:\n    image: {image}\n"
                       "    entrypoint: [sleep, infinity]\nvolumes:\n  data: {{}}\n")
    created = env.cli("create", profile, "--target", "t1", "--json")
    assert created.returncode == 0, created.stderr
    sid = json.loads(created.stdout)["id"]
    (side,) = env.docker("ps", "-q", "--filter", f"label=sandboxer.id={sid}",
                         "--filter", "label=com.docker.compose.service=side").split()
    status = env.docker("exec", side, "grep", "Cap", "/proc/1/status")
    assert "CapEff:\t0000000000000000" in status.splitlines()
    assert "CapBnd:\t0000000000000000" in status.splitlines()
    host = json.loads(env.docker("inspect", side))[0]["HostConfig"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["PidsLimit"] > 0
    assert host["Memory"] > 0
    # owned() finds leaked volumes by these labels.
    listed = env.docker("volume", "ls", "-q", "--filter", f"label=sandboxer.id={sid}",
                        "--filter", f"label=sandboxer.instance={env.instance()}").split()
    assert sorted(listed) == [f"{sid}_data", f"{sid}_sandboxer-keys",
                              f"{sid}_sandboxer-sshd-keys"], env.docker(
        "volume", "ls", "--format", "{{.Name}} {{.Labels}}")


def test_a_restarted_container_keeps_its_ssh_port(cenv: Env) -> None:
    env = cenv
    created = env.cli("create", "profile.compose-test", "--target", "t1", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    sid, port = doc["id"], doc["reachability"]["port"]
    (main,) = env.docker("ps", "-q", "--filter", f"label=sandboxer.id={sid}",
                         "--filter", "label=com.docker.compose.service=main").split()
    env.docker("restart", "-t", "2", main)
    assert env.docker("port", main, "22/tcp").split()[0].rsplit(":", 1)[1] == str(port)
    got = json.loads(env.cli("get", sid, "--json").stdout)
    assert got["state"] == "ready"
    deadline = time.monotonic() + 60
    while (done := _ssh(doc, "hostname")).returncode != 0:
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.5)
