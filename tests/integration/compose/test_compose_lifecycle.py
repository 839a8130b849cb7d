"""ext.compose-ssh lifecycle on a real dockerd and compose v2: stop/start, pause/resume,
activity, bind, and a container docker restarted getting its secrets back.

Sandboxes are made with the installed CLI (the SSH target, so the remote path runs: the
docker CLI over one SSH connection; the local target for the engine API's path). Activity,
bind and pause are driven through the extension as core drives it (``Manager.extension``);
stop/start/pause/resume also through the CLI; the restart is noticed by core's keeper for
ext.compose-ssh on its own. The secret is a ``file:`` ref: the keeper resolves it again.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr
from tests.canary_support import SANDBOXER, leaks
from tests.docker_support import wait_until
from tests.integration.compose.test_compose_ssh import make_env

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.extensions.base import Handle
from sandboxer.extensions.compose_ssh import ready
from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

if TYPE_CHECKING:
    from .conftest import DockerDaemon, SshTarget

pytestmark = pytest.mark.integration

PROFILE = {
    "id": "profile.life", "extension": "ext.compose-ssh", "route": "self-hosted-only",
    "ttl": {"default": "30m", "max": "2h"},
    "reachability": {"user": "agent"},
    "setup": {"env": {"PLAIN": "plain"},
              "secret_refs": [{"name": "TOKEN", "ref": "file:{token_file}"}]},
}
# The workspace the hashes cover: files in the container's own layer (/tmp/work) and in
# the named volume (the home directory).
HASH = ("find /tmp/work /home/agent/data -type f -print0 | sort -z "
        "| xargs -0 sha256sum | sha256sum")
FILL = ("mkdir -p /tmp/work/a/b ~/data && for i in $(seq 1 40); do "
        "head -c 4096 /dev/urandom > /tmp/work/a/b/f$i; done; "
        "head -c 65536 /dev/urandom > ~/data/blob")


@dataclass
class Home:
    env: dict[str, str]
    token: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOXER, *args], env=self.env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)

    def create(self, target: str) -> dict[str, Any]:
        done = self.cli("create", "profile.life", "--target", target, "--json")
        assert done.returncode == 0, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def ssh(self, doc: dict[str, Any], command: str, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        argv = [*shlex.split(doc["reachability"]["ssh_command"]), "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "--", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def out(self, doc: dict[str, Any], command: str) -> str:
        done = self.ssh(doc, command)
        assert done.returncode == 0, (command, done.stderr)
        return done.stdout.strip()

    def extension(self) -> tuple[ComposeSSHExtension, LocalClient]:
        client = LocalClient(Settings.from_env(self.env))
        ext = client.manager.extension("ext.compose-ssh")
        assert isinstance(ext, ComposeSSHExtension)
        return ext, client

    def handle(self, client: LocalClient, sid: str) -> Handle:
        found = [h for h in client.manager.store.live_handles("ext.compose-ssh")
                 if h.sandbox_id == sid]
        assert found, sid
        return found[0]


@pytest.fixture
def home(ssh_target: SshTarget, tmp_path: Path) -> Iterator[Home]:
    """A sandboxer home with target t1 (``make_env``) and profile.life: a named volume at
    the home directory, setup env and one secret ref."""
    for ctx in make_env(ssh_target, tmp_path):
        doc = {**PROFILE, "spec": {
            "service": "main", "pull": "never",
            "compose": {"services": {"main": {"image": ssh_target.image,
                                              "volumes": ["data:/home/agent"]}},
                        "volumes": {"data": {}}}}}
        token = f"cnrylife{secrets.token_hex(12)}"
        (tmp_path / "token").write_text(token)
        (tmp_path / "token").chmod(0o600)
        text = json.dumps(doc).replace("{token_file}", str(tmp_path / "token"))
        (ctx.profiles / "life.yaml").write_text(text)
        yield Home(ctx.env, token)


def test_activity_and_bind_over_ssh(
    home: Home, docker_daemon: DockerDaemon, ssh_target: SshTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = home.create("t1")
    sid = doc["id"]
    ext, client = home.extension()
    handle = home.handle(client, sid)
    assert home.out(doc, 'printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{home.token}|plain"
    home.out(doc, FILL)
    before = home.out(doc, HASH)

    # Activity: a session open (a sleeping command) and CPU burnt show.
    quiet = asyncio.run(ext.activity(handle))
    assert quiet.sessions == 0, quiet
    holder = subprocess.Popen(
        [*shlex.split(doc["reachability"]["ssh_command"]), "-o", "BatchMode=yes", "--",
         "sleep 60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_until("the session to show", lambda: asyncio.run(
            ext.activity(handle)).sessions >= 1, timeout=30, interval=0.2)
        home.out(doc, "timeout 3 sh -c 'while :; do :; done' || true")
        busy = asyncio.run(ext.activity(handle))
        # At least a fifth of those 3 s, however loaded this machine is.
        assert busy.cpu_seconds >= quiet.cpu_seconds + 0.6, (quiet, busy)
    finally:
        holder.kill()
        holder.wait()

    # bind replaces what provision bound: the new env, exactly the new secrets.
    other = f"cnryother{secrets.token_hex(8)}"
    asyncio.run(ext.bind(handle, {"EXTRA": "x"}, {"OTHER": SecretStr(other)}))
    assert home.out(doc, 'printf "%s|%s|%s|" "${TOKEN-unset}" "${PLAIN-unset}" "$EXTRA"; '
                    'cat /run/secrets/OTHER; echo; ls /run/secrets') == \
        f"unset|unset|x|{other}\nOTHER"
    asyncio.run(ext.bind(handle, {"PLAIN": "plain"}, {"TOKEN": SecretStr(home.token)}))
    assert home.out(doc, 'printf "%s|%s|%s" "$TOKEN" "$PLAIN" "${EXTRA-unset}"') == \
        f"{home.token}|plain|unset"
    assert home.out(doc, HASH) == before

    # Canaries: nowhere in our home, the project directory, docker inspect or the logs.
    canaries = [home.token, other]
    inspected = docker_daemon.docker("inspect", handle.data["container"]).stdout
    logs = docker_daemon.docker("logs", handle.data["container"]).stdout
    assert not [c for c in canaries if c in inspected + logs + caplog.text]
    found = leaks(canaries, [Path(home.env["SANDBOXER_HOME"]), ssh_target.home])
    assert not found, found


def test_ten_pause_resume_cycles_keep_files_and_memory(
    home: Home, docker_daemon: DockerDaemon,
) -> None:
    doc = home.create("local")  # the engine API's path
    ext, client = home.extension()
    handle = home.handle(client, doc["id"])
    home.out(doc, FILL)
    # A process keeping state in memory only: a counter it reports through a file.
    home.out(doc, "nohup sh -c 'n=0; while :; do n=$((n+1)); echo $n > /tmp/n.t; "
             "mv /tmp/n.t /tmp/n; sleep 0.05; done' >/dev/null 2>&1 &")
    where = (handle.data["host"], handle.data["port"])
    for cycle in range(10):
        before = home.out(doc, HASH)
        counter = int(home.out(doc, "cat /tmp/n"))
        asyncio.run(ext.pause(handle))
        asyncio.run(ext.pause(handle))  # idempotent
        state = docker_daemon.docker("inspect", "--format", "{{.State.Status}}",
                                     handle.data["container"]).stdout.strip()
        assert state == "paused", cycle
        assert not asyncio.run(ready.banner(*where, time.monotonic() + 1))  # frozen
        asyncio.run(ext.resume(handle))
        asyncio.run(ext.resume(handle))
        assert home.out(doc, HASH) == before, cycle

        def counting(last: int = counter) -> bool:
            return int(home.out(doc, "cat /tmp/n")) > last

        wait_until("the counter to go on", counting, timeout=10, interval=0.1)
    activity = asyncio.run(ext.activity(handle))
    assert activity.cpu_seconds > 0, activity


def test_cli_stop_start_pause_resume_and_a_restart_the_keeper_rebinds(
    home: Home, docker_daemon: DockerDaemon, ssh_target: SshTarget,
) -> None:
    """Through `sandboxer stop/start/pause/resume` (core's Manager), and a `docker restart`
    that core's keeper for ext.compose-ssh notices on its own: Host.rebind resolves the
    `file:` ref again (an `env:` one from this shell would not resolve in the keeper)."""
    token = home.token
    doc = home.create("t1")
    sid = doc["id"]
    home.out(doc, FILL)
    before = home.out(doc, HASH)

    def state(*argv: str) -> str:
        done = home.cli(*argv, sid, "--json")
        assert done.returncode == 0, (argv, done.stderr)
        return str(json.loads(done.stdout)["state"])

    assert state("stop") == "stopped"
    assert home.cli("pause", sid).returncode == 8  # only a ready one pauses: a Conflict
    assert state("start") == "ready"
    got = json.loads(home.cli("get", sid, "--json").stdout)
    assert got["reachability"]["port"] == doc["reachability"]["port"]  # pinned
    assert home.out(doc, HASH) == before  # through the pinned known_hosts: same host key
    assert home.out(doc, 'printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{token}|plain"
    assert state("pause") == "paused"
    assert state("resume") == "ready"
    assert home.out(doc, HASH) == before

    container = docker_daemon.docker(
        "ps", "-q", "--filter", f"label=sandboxer.id={sid}").stdout.split()[0]
    docker_daemon.docker("restart", "-t", "2", container)

    def bound_again() -> bool:
        done = home.ssh(doc, "cat /run/secrets/TOKEN", timeout=20)
        return done.returncode == 0 and done.stdout == token

    wait_until("the keeper to bind the secret again", bound_again, timeout=60, interval=0.5)
    assert home.out(doc, 'printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{token}|plain"
    assert home.out(doc, HASH) == before
    events = json.loads(home.cli("events", "--sandbox", sid, "--json").stdout)["items"]
    kinds = [e["type"] for e in events]
    assert "sandbox.restored" in kinds, kinds
    for kind in ("sandbox.stopped", "sandbox.started", "sandbox.paused", "sandbox.resumed"):
        assert kind in kinds, kinds

    inspected = docker_daemon.docker("inspect", container).stdout
    logs = docker_daemon.docker("logs", container).stdout
    assert token not in inspected + logs
    found = leaks([token], [Path(home.env["SANDBOXER_HOME"]), ssh_target.home])
    assert not found, found
