"""ext.compose-ssh end to end: the installed CLI, a real dockerd, compose v2 and sshd."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support_env import KEEP_ENV

pytestmark = pytest.mark.integration

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
PROFILE = """\
id: profile.compose-test
extension: ext.compose-ssh
ttl: {{default: 30m, max: 2h}}
spec:
  service: main
  pull: never
  compose:
    services:
      main: {{image: "{image}"}}
      helper: {{image: "{image}", entrypoint: ["sleep", "infinity"]}}
reachability: {{user: agent}}
setup:
  env: {{GREETING: hello-from-setup, LITERAL: '$HOME'}}
  instructions: ["echo step-ran > /tmp/setup-marker"]
"""


@dataclass
class Env:
    env: dict[str, str]
    home: Path
    profiles: Path
    target: Any  # conftest.SshTarget

    def cli(self, *args: str, check: bool = False, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([SANDBOXER, *args], env=env or self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check:
            assert done.returncode == 0, f"sandboxer {' '.join(args)}: {done.stderr}"
        return done

    def docker(self, *args: str) -> str:
        done = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stdout

    def labelled(self, key: str, value: str) -> list[str]:
        """Containers, networks and volumes carrying a label."""
        f = f"label={key}={value}"
        return (self.docker("ps", "-a", "-q", "--filter", f).split()
                + self.docker("network", "ls", "-q", "--filter", f).split()
                + self.docker("volume", "ls", "-q", "--filter", f).split())

    def instance(self) -> str:
        import hashlib

        return hashlib.sha256(str(self.home).encode()).hexdigest()[:12]

    def remote_dirs(self) -> list[str]:
        out = self.target.run(["sh", "-c", 'ls -1 "$HOME/.sandboxer/$1" 2>/dev/null || true',
                               "sh", self.instance()])
        return out.stdout.decode().split()

    def add_profile(self, name: str, text: str) -> None:
        (self.profiles / f"{name}.yaml").write_text(text)


@pytest.fixture
def env(ssh_target: Any, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(ssh_target, tmp_path)


def make_env(ssh_target: Any, tmp_path: Path) -> Iterator[Env]:
    """A sandboxer home with target t1 (the SSH target), torn down after the test."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "compose-test.yaml").write_text(PROFILE.format(image=ssh_target.image))
    e = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_") or k in KEEP_ENV}
    e.update(SANDBOXER_HOME=str(tmp_path / "home"), SANDBOXER_PROFILES=str(profiles),
             HOME=str(tmp_path / "user"), DOCKER_HOST=ssh_target.docker_host)
    ctx = Env(e, tmp_path / "home", profiles, ssh_target)
    added = ctx.cli("targets", "add", "t1", ssh_target.url, "--identity",
                    str(ssh_target.identity_file), "--yes", "--capacity", "8", "--json")
    assert added.returncode == 0, added.stderr
    yield ctx
    live = json.loads(ctx.cli("list", "--json").stdout)["items"]
    if live:
        ctx.cli("destroy", *[d["id"] for d in live])
    ctx.cli("reconcile")


def test_target_add_pins_the_host_key_seen_at_first_contact(env: Env) -> None:
    (target,) = [t for t in json.loads(env.cli("targets", "list", "--json").stdout)["items"]
                 if t["name"] == "t1"]
    key = env.target.known_hosts.split()[1:]
    assert target["host_keys"][0].split()[1:] == key
    assert target["identity_file"] == str(env.target.identity_file)
    assert "PRIVATE KEY" not in json.dumps(target)
    check = json.loads(env.cli("targets", "check", "--json").stdout)["items"]
    by_name = {c["name"]: c for c in check}
    assert by_name["t1"]["ok"], by_name["t1"]
    assert by_name["t1"]["compose"] == "docker compose"
    assert by_name["t1"]["engine"]
    again = env.cli("targets", "add", "t1", env.target.url, "--yes")
    assert again.returncode == 8
    wrong = env.cli("targets", "add", "t2", env.target.url, "--identity",
                    str(env.target.identity_file), "--host-key-fingerprint", "SHA256:nope")
    assert wrong.returncode == 4
    assert "presented host key SHA256:" in wrong.stderr


def test_create_over_ssh_reach_label_destroy(env: Env) -> None:
    created = env.cli("create", "profile.compose-test", "--target", "t1", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    sid = doc["id"]
    assert doc["state"] == "ready"
    assert doc["target"] == "t1"
    reach = doc["reachability"]
    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--",
            "id -un; echo $GREETING; cat /tmp/setup-marker; printenv LITERAL; "
            "grep Cap /proc/self/status"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["agent", "hello-from-setup", "step-ran", "$HOME"]
    assert "CapEff:\t0000000000000000" in lines  # the session has no capabilities

    containers = env.docker("ps", "-q", "--filter", f"label=sandboxer.id={sid}").split()
    assert len(containers) == 2  # every service is labelled
    main = json.loads(env.docker("inspect", *containers))
    main = next(c for c in main if c["Config"]["Labels"]["com.docker.compose.service"]
                == "main")
    host = main["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["NetworkMode"] != "host"
    # No host path: only the project's own key volumes (the SSH keys, out of its layer).
    assert sorted(host["Binds"]) == [f"{sid}_sandboxer-keys:/etc/sandboxer:rw",
                                     f"{sid}_sandboxer-sshd-keys:/etc/ssh/sandboxer:rw"]
    assert main["Config"]["Labels"]["sandboxer.instance"] == env.instance()
    assert sid in env.remote_dirs()
    listing = env.target.run(["sh", "-c", 'ls -la "$HOME/.sandboxer/$1/$2"', "sh",
                              env.instance(), sid]).stdout.decode()
    assert "ssh_host" not in listing  # keys went into the container, not onto the disk

    gone = env.cli("destroy", sid, "--json")
    assert gone.returncode == 0, gone.stderr
    assert env.labelled("sandboxer.id", sid) == []
    assert sid not in env.remote_dirs()
    assert env.cli("destroy", sid).returncode == 0  # idempotent
    refused = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert refused.returncode == 255


def test_reconcile_removes_a_project_left_by_a_killed_create(env: Env) -> None:
    # The create runs in the killed process itself (not in the local service, which would
    # see its client go and cancel the create cleanly): what it left is found by label.
    proc = subprocess.Popen([SANDBOXER, "create", "profile.compose-test", "--target", "t1"],
                            env={**env.env, "SANDBOXER_LOCAL_SERVICE": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not env.labelled("sandboxer.instance", env.instance()):
        assert proc.poll() is None, "create finished before it could be killed"
        assert time.monotonic() < deadline, "no container appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(env.home / "state.db")
    (sid, state) = conn.execute("SELECT id, state FROM sandboxes").fetchone()
    conn.close()
    assert state == "provisioning"
    rec = env.cli("reconcile", "--json")
    assert rec.returncode == 0, rec.stderr
    assert env.labelled("sandboxer.instance", env.instance()) == []
    assert sid not in env.remote_dirs()
    got = json.loads(env.cli("get", sid, "--json").stdout)
    assert (got["state"], got["reason"]) == ("failed", "abandoned")


def test_five_concurrent_creates_on_one_target(env: Env) -> None:
    procs = [subprocess.Popen([SANDBOXER, "create", "profile.compose-test", "--target", "t1",
                               "--json", "--quiet"], env=env.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(5)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    assert len({d["reachability"]["port"] for d in docs}) == 5
    for d in docs:
        argv = [*shlex.split(d["reachability"]["ssh_command"]), "-o", "BatchMode=yes",
                "--", "hostname"]
        assert subprocess.run(argv, capture_output=True, timeout=60, check=False
                              ).returncode == 0
    assert env.cli("destroy", *[d["id"] for d in docs]).returncode == 0
    assert env.labelled("sandboxer.instance", env.instance()) == []


def test_concurrent_creates_never_exceed_a_targets_capacity(env: Env) -> None:
    """Issue 12, item 3: on a target added with --capacity 1, of three creates started at
    once exactly one succeeds; the others exit 6 before anything exists on the target."""
    added = env.cli("targets", "add", "cap1", env.target.url, "--identity",
                    str(env.target.identity_file), "--yes", "--capacity", "1")
    assert added.returncode == 0, added.stderr
    procs = [subprocess.Popen([SANDBOXER, "create", "profile.compose-test", "--target", "cap1",
                               "--json", "--quiet"], env=env.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    assert sorted(rc for rc, _, _ in results) == [0, 6, 6], results
    (doc,) = [json.loads(out) for rc, out, _ in results if rc == 0]
    live = json.loads(env.cli("list", "--json").stdout)["items"]
    assert [d["id"] for d in live] == [doc["id"]]
    assert env.remote_dirs() == [doc["id"]]
    assert env.cli("destroy", doc["id"]).returncode == 0
    _no_leftovers(env)


def _no_leftovers(env: Env) -> None:
    assert env.labelled("sandboxer.instance", env.instance()) == []
    assert env.remote_dirs() == []


def test_refusals_before_anything_is_created(env: Env) -> None:
    image = env.target.image
    env.add_profile("syntax", "id: profile.syntax\nextension: ext.compose-ssh\n"
                    "spec: {service: main, compose_file: broken.yaml}\n")
    (env.profiles / "broken.yaml").write_text("services:\n  main: [unclosed\n")
    env.add_profile("nosvc", f"id: profile.nosvc\nextension: ext.compose-ssh\n"
                    f"spec: {{service: web, compose: {{services: "
                    f"{{main: {{image: '{image}'}}}}}}}}\n")
    env.add_profile("priv", f"id: profile.priv\nextension: ext.compose-ssh\n"
                    f"spec: {{service: main, compose: {{services: {{main: "
                    f"{{image: '{image}', privileged: true}}}}}}}}\n")
    for profile, needle in (("profile.syntax", "invalid YAML"),
                            ("profile.nosvc", "no service 'web'"),
                            ("profile.priv", "--allow privileged")):
        res = env.cli("create", profile, "--target", "t1")
        assert res.returncode == 4, res.stderr
        assert needle in res.stderr
    assert json.loads(env.cli("list", "--all", "--json").stdout)["items"] == []
    _no_leftovers(env)


def test_faults_fail_cleanly(env: Env, tmp_path: Path) -> None:
    # An image that is not on the target (no registry is reachable here).
    env.add_profile("noimage", "id: profile.noimage\nextension: ext.compose-ssh\n"
                    "spec: {service: main, pull: never, compose: {services: {main: "
                    "{image: 'sandboxer/absent:0.0.1'}}}}\n")
    res = env.cli("create", "profile.noimage", "--target", "t1")
    assert res.returncode == 5, res.stderr
    assert "sandboxer images build" in res.stderr
    _no_leftovers(env)
    # A host port the compose file publishes that is taken.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env.add_profile("clash", f"id: profile.clash\nextension: ext.compose-ssh\n"
                        f"spec: {{service: main, pull: never, compose: {{services: {{main: "
                        f"{{image: '{env.target.image}', "
                        f"ports: ['127.0.0.1:{port}:8080']}}}}}}}}\n")
        # Ports beyond the override's own need the grant.
        added = env.cli("targets", "add", "ports", env.target.url, "--identity",
                        str(env.target.identity_file), "--yes", "--allow", "ports")
        assert added.returncode == 0, added.stderr
        res = env.cli("create", "profile.clash", "--target", "ports")
    assert res.returncode == 5, res.stderr
    assert "taken" in res.stderr or "address already in use" in res.stderr
    _no_leftovers(env)
    assert {d["state"] for d in json.loads(env.cli("list", "--all", "--json").stdout)["items"]
            } == {"failed"}


def test_unreachable_targets_are_passed_over_with_reasons(env: Env) -> None:
    from sandboxer.extensions.compose_ssh.config import TargetConfig, target_record
    from sandboxer.store.sqlite import SqliteStore

    store = SqliteStore(env.home / "state.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    store.add_target(target_record(TargetConfig(name="down", url=f"ssh://x@127.0.0.1:{closed}",
                                                host_keys=[env.target.known_hosts])))
    forged = env.target.known_hosts.split()[0] + (
        " ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJzZWNvbmRrZXlub3R0aGVyZWFsb25lYWFhYWFhYWFh")
    store.add_target(target_record(TargetConfig(name="forged", url=env.target.url,
                                                identity_file=str(env.target.identity_file),
                                                host_keys=[forged])))
    res = env.cli("create", "profile.compose-test", "--target", "down")
    assert res.returncode == 6, res.stderr
    assert "down: unhealthy: cannot reach target down" in res.stderr
    res = env.cli("create", "profile.compose-test", "--target", "forged")
    assert res.returncode == 6, res.stderr
    assert "does not match the one recorded" in res.stderr
    # The engine is down for the local target (no daemon on that socket).
    no_engine = {**env.env, "DOCKER_HOST": f"unix://{env.home}/nothing.sock"}
    res = env.cli("create", "profile.compose-test", "--target", "local", env=no_engine)
    assert res.returncode == 6, res.stderr
    assert "no docker engine answers" in res.stderr
    # A host whose docker has no compose (v2 plugin or v1 binary).
    fake = env.home / "bin"
    fake.mkdir()
    (fake / "docker").write_text(
        "#!/bin/sh\nif [ \"$1\" = compose ]; then\n"
        "  echo \"docker: 'compose' is not a docker command.\" >&2; exit 1\nfi\n"
        f"exec {shutil.which('docker')} \"$@\"\n")
    (fake / "docker").chmod(0o755)
    no_compose = {**env.env, "PATH": f"{fake}:/usr/bin:/bin"}
    res = env.cli("create", "profile.compose-test", "--target", "local", env=no_compose)
    assert res.returncode == 6, res.stderr
    assert "neither `docker compose` (v2) nor `docker-compose` (v1)" in res.stderr
    assert json.loads(env.cli("list", "--all", "--json").stdout)["items"] == []
    store.remove_target("down")
    store.remove_target("forged")


def test_image_build_streams_to_an_ssh_target(env: Env) -> None:
    res = env.cli("images", "build", "base", "--target", "t1", "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    built = json.loads(res.stdout)
    assert built["image"].startswith("sandboxer/base:")
    tags = env.target.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"])
    assert built["image"] in tags.stdout.decode().split()
