"""ext.compose-ssh lifecycle on a real dockerd and compose v2: stop/start, pause/resume,
activity, bind, and a container docker restarted getting its secrets back.

Sandboxes are made with the installed CLI (the SSH target, so the remote path runs: the
docker CLI over one SSH connection; the local target for the engine API's path), then
driven through the extension as core drives it (``Manager.extension``).
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
from sandboxer.extensions.compose_ssh import ready, restarts
from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

if TYPE_CHECKING:
    from .conftest import DockerDaemon, SshTarget

pytestmark = pytest.mark.integration

PROFILE = {
    "id": "profile.life", "extension": "ext.compose-ssh", "route": "self-hosted-only",
    "ttl": {"default": "30m", "max": "2h"},
    "reachability": {"user": "agent"},
    "setup": {"env": {"PLAIN": "plain"},
              "secret_refs": [{"name": "TOKEN", "ref": "env:SBX_LIFE_TOKEN"}]},
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
        (ctx.profiles / "life.yaml").write_text(json.dumps(doc))
        token = f"cnrylife{secrets.token_hex(12)}"
        ctx.env["SBX_LIFE_TOKEN"] = token
        yield Home(ctx.env, token)


class Rebinding:
    """Host.rebind as core does it (refs resolved again: here, the known values)."""

    def __init__(self, ext: ComposeSSHExtension, handles: dict[str, Handle],
                 token: str) -> None:
        self.ext, self.handles, self.token, self.calls = ext, handles, token, 0

    async def rebind(self, sandbox_id: str) -> bool:
        self.calls += 1
        await self.ext.bind(self.handles[sandbox_id], {"PLAIN": "plain"},
                            {"TOKEN": SecretStr(self.token)})
        return True


def test_stop_start_activity_bind_and_restart_over_ssh(
    home: Home, docker_daemon: DockerDaemon, ssh_target: SshTarget, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = home.create("t1")
    sid = doc["id"]
    ext, client = home.extension()
    handle = home.handle(client, sid)
    assert home.out(doc, 'printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{home.token}|plain"
    home.out(doc, FILL)
    before = home.out(doc, HASH)
    key = asyncio.run(ext.endpoint(handle)).host_key

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
        assert busy.cpu_seconds >= quiet.cpu_seconds + 1.0, (quiet, busy)
    finally:
        holder.kill()
        holder.wait()

    # Stop: the processes end (no SSH), the data and the volume stay; start: same port,
    # same host key, the files and the secrets back.
    stopped = asyncio.run(ext.stop(handle))
    assert home.ssh(doc, "true", timeout=20).returncode != 0
    assert asyncio.run(ext.stop(stopped)) == stopped  # idempotent
    started = asyncio.run(ext.start(stopped, {"PLAIN": "again"},
                                    {"TOKEN": SecretStr(home.token)}))
    asyncio.run(ext.wait_ready(started, 60))
    assert started.data["port"] == doc["reachability"]["port"]
    assert asyncio.run(ext.endpoint(started)).host_key == key
    assert home.out(doc, HASH) == before  # through the pinned known_hosts: same host key
    # bind replaces what provision bound: the new PLAIN, the new secret set.
    assert home.out(doc, 'printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{home.token}|again"
    other = f"cnryother{secrets.token_hex(8)}"
    asyncio.run(ext.bind(started, {"EXTRA": "x"}, {"OTHER": SecretStr(other)}))
    assert home.out(doc, 'printf "%s|%s|%s|" "${TOKEN-unset}" "${PLAIN-unset}" "$EXTRA"; '
                    'cat /run/secrets/OTHER; echo; ls /run/secrets') == \
        f"unset|unset|x|{other}\nOTHER"

    # docker restarts the container: /run/secrets is empty; the watch notices and rebinds.
    docker_daemon.docker("restart", "-t", "2", started.data["container"])
    wait_until("sshd after the restart",
               lambda: home.ssh(doc, "true", timeout=20).returncode == 0, timeout=60)
    assert home.out(doc, "ls /run/secrets | wc -l") == "0"
    host = Rebinding(ext, {sid: started}, home.token)
    assert asyncio.run(restarts.check(ext, host, [started])) == [sid]
    assert asyncio.run(restarts.check(ext, host, [started])) == []
    assert host.calls == 1
    assert home.out(doc, 'printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{home.token}|plain"
    assert home.out(doc, HASH) == before

    # Canaries: nowhere in our home, the project directory, docker inspect or the logs.
    canaries = [home.token, other]
    inspected = docker_daemon.docker("inspect", started.data["container"]).stdout
    logs = docker_daemon.docker("logs", started.data["container"]).stdout
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
