"""ext.vm-packer's lifecycle on one real TCG VM (boots are minutes here, so one combined
test): pause/resume ten times with the disk's content hashes and a process's memory kept,
activity, a clean stop with the disk kept, start with the same host key and the binding
again, and the keeper's restart survival (a guest reset, a QEMU gone) through
Host.rebind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets as random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed
from sandboxer.extensions.base import Handle, key_paths
from sandboxer.extensions.vm_packer import qemu, qmp

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli

    from sandboxer.extensions.vm_packer.extension import VMPackerExtension

pytestmark = [pytest.mark.integration, pytest.mark.vm]

PROFILE = """\
id: profile.vm-states
extension: ext.vm-packer
spec:
  packer: {template: base.json}
  vm: {cpus: 1, memory: 384M, accel: auto, boot_timeout: 300}
reachability: {user: agent}
setup:
  env: {GREETING: "hello there"}
  secret_refs: [{name: API_TOKEN, ref: "env:SBX_VM_STATES_TOKEN"}]
"""
HASH = "sha256sum ~/work.bin | cut -d' ' -f1; cat /proc/$(cat ~/sleeper.pid)/status | grep VmRSS"
SHOW = 'printf "%s|%s\\n" "$API_TOKEN" "$GREETING"'


def ssh(known_hosts: Path, reach: dict[str, Any], command: str,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", reach["identity_file"], "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=20",
            "-p", str(reach["port"]), f"{reach['user']}@127.0.0.1", "--", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def must(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


class RebindingHost:
    """Core's Host with rebind done here (resolve the ref as core would, bind)."""

    def __init__(self, host: Any, ext: VMPackerExtension, handle: Handle,
                 secrets: Mapping[str, SecretStr], env: Mapping[str, str]) -> None:
        self.host, self.ext, self.handle = host, ext, handle
        self.secrets, self.env = secrets, env
        self.rebound: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.host, name)

    async def rebind(self, sandbox_id: str) -> bool:
        self.rebound.append(sandbox_id)
        await self.ext.bind(self.handle, self.env, self.secrets)
        return True

    async def refresh_reachability(self, sandbox_id: str) -> bool:
        return False


def phase(what: str, since: float) -> None:
    sys.stderr.write(f"{time.monotonic() - since:7.1f}s {what}\n")



@pytest.mark.timeout(1800)  # a TCG VM booted four times
def test_pause_resume_stop_start_and_restarts_keep_disk_key_and_secrets(vm_cli: VMCli
                                                                        ) -> None:
    token = f"tok-{random.token_hex(12)}"
    vm_cli.env["SBX_VM_STATES_TOKEN"] = token
    pid = vm_cli.profile("vm-states", PROFILE)
    created = vm_cli.json("create", pid)
    sid, reach = created["id"], created["reachability"]
    first_known = vm_cli.home.parent / "first_known_hosts"
    first_known.write_text(reach["known_hosts"] + "\n")
    assert must(ssh(first_known, reach, SHOW)).strip() == f"{token}|hello there"
    must(ssh(first_known, reach, "head -c 4M /dev/urandom > ~/work.bin; "
             "nohup sleep 100000 >/dev/null 2>&1 & echo $! > ~/sleeper.pid; sync"))
    before = must(ssh(first_known, reach, HASH))

    from sandboxer.service.app import Service

    settings = Settings.from_env(vm_cli.env)
    ext: Any = Service(settings, upkeep=False).manager.extension("ext.vm-packer")
    [handle] = [h for h in ext.host.live_handles() if h.sandbox_id == sid]
    d = vm_cli.home / "vm" / sid
    assert (d / qmp.SOCKET).stat().st_mode & 0o777 == 0o600
    assert ext.stoppable(handle) is None
    assert ext.pausable(handle) is None

    async def lifecycle() -> None:
        t0 = time.monotonic()
        # Activity: a session held open is seen; a busy process raises the CPU.
        holder = subprocess.Popen(["ssh", "-i", reach["identity_file"], "-o",
                                   "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o",
                                   f"UserKnownHostsFile={first_known}", "-p",
                                   str(reach["port"]), f"{reach['user']}@127.0.0.1",
                                   "sleep 60"], stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while (seen := await ext.activity(handle)).sessions < 1:
                assert time.monotonic() < deadline, seen
        finally:
            holder.kill()
            holder.wait()
        # The busy loop outlives its session (nohup) and is ended before the pauses; the
        # guest gets little of this loaded host, hence the generous deadline.
        must(ssh(first_known, reach, "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & "
                 "echo $! > ~/busy.pid"))
        one = await ext.activity(handle)
        deadline = time.monotonic() + 180
        while (two := await ext.activity(handle)).cpu_seconds < one.cpu_seconds + 0.5:
            assert time.monotonic() < deadline, (one, two)
        must(ssh(first_known, reach, "kill $(cat ~/busy.pid)"))

        phase("activity", t0)
        # Ten pause/resume cycles: the guest stands still, then carries on with its disk
        # and a process's memory as they were.
        for i in range(10):
            await ext.pause(handle)
            await ext.pause(handle)  # idempotent
            assert await qmp.status(d) == "paused"
            assert (await ext.activity(handle)).detail.startswith("paused")
            await ext.resume(handle)
            await ext.resume(handle)
            assert await qmp.status(d) == "running"
            assert must(ssh(first_known, reach, HASH)) == before, f"cycle {i + 1}"

        phase("ten pause/resume cycles", t0)
        # Stop: a clean power-off (the guest's power button service), the disk kept.
        qemu_pid = ext._pid(sid)
        started = time.monotonic()
        await ext.stop(handle)
        took = time.monotonic() - started
        assert ext._pid(sid) is None
        assert not qemu.is_our_vm(qemu_pid, sid)
        assert (d / "overlay.qcow2").is_file()
        assert "reboot: Power down" in (d / "console.log").read_text(errors="replace"), \
            f"no clean guest shutdown in {took:.0f}s"
        await ext.stop(handle)  # idempotent

        phase("stopped", t0)
        # Start: the same disk and host key, the binding given again.
        secrets = {"API_TOKEN": SecretStr(token)}
        env = {"GREETING": "hello there"}
        again = await ext.start(handle, env, secrets)
        new_reach = {**reach, "port": again.data["port"]}
        known = key_paths(settings, sid)["known_hosts"]
        assert known.read_text().split()[-2:] == first_known.read_text().split()[-2:]
        if again.data["port"] == reach["port"]:  # the old port was free: same descriptor
            must(ssh(first_known, reach, "true"))
        out = must(ssh(known, new_reach, "sha256sum ~/work.bin | cut -d' ' -f1; " + SHOW))
        assert out.split("\n")[:2] == [before.split("\n")[0], f"{token}|hello there"]

        phase("started", t0)
        # A guest reboot (QMP system_reset) empties the tmpfs: the keeper's check sees no
        # binding and asks core to rebind.
        fake = RebindingHost(ext.host, ext, again, secrets, env)
        await qmp.command(d, "system_reset")
        deadline = time.monotonic() + 300
        while ssh(known, new_reach, "true", timeout=40).returncode != 0:
            assert time.monotonic() < deadline
        assert must(ssh(known, new_reach, SHOW)).strip() in ("|", f"{token}|hello there")
        await ext._keep(fake, again)
        assert fake.rebound == [sid]
        assert must(ssh(known, new_reach, SHOW)).strip() == f"{token}|hello there"

        phase("rebound after a reset", t0)
        # QEMU gone while the sandbox is ready (a host restart): booted again, rebound.
        os.kill(ext._pid(sid), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while ext._pid(sid) is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # The real keeper of this home may be reviving it meanwhile (its check runs every
        # 15 s, its rebind is core's): check again until the binding is back.
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(ProvisionFailed):
                await ext._keep(fake, again)
            port = json.loads((d / "record.json").read_text())["port"]
            out = ssh(known, {**reach, "port": port},
                      "sha256sum ~/work.bin | cut -d' ' -f1; " + SHOW).stdout
            if out.split("\n")[1:2] == [f"{token}|hello there"]:
                break
            assert time.monotonic() < deadline, out
        assert fake.rebound
        assert out.split("\n")[0] == before.split("\n")[0]
        phase("revived and rebound", t0)

    asyncio.run(lifecycle())
    for f in vm_cli.home.rglob("*"):
        if f.is_file() and not f.is_socket():
            assert token.encode() not in f.read_bytes(), f"the secret is in {f}"
