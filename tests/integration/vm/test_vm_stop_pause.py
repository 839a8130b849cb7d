"""ext.vm-packer's lifecycle on one real TCG VM (boots are minutes here, so one combined
test): pause/resume three times with the disk's content hashes and a process's memory kept,
activity, a clean stop with the disk kept, start with the same host key and the binding
again, and the keeper's restart survival (a binding gone as after a guest reboot, a QEMU
gone) through core's keeper and Host.rebind; a snapshot of the stopped VM."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets as random
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from sandboxer.config import Settings
from sandboxer.extensions.base import key_paths
from sandboxer.extensions.vm_packer import qemu, qmp
from sandboxer.values import new_snapshot_id

from .conftest import must, phase, ssh

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli


pytestmark = [pytest.mark.integration, pytest.mark.vm]

PROFILE = """\
id: profile.vm-states
extension: ext.vm-packer
spec:
  packer: {template: base.json}
  vm: {cpus: 1, memory: 384M, accel: auto, boot_timeout: 900}
reachability: {user: agent}
setup:
  env: {GREETING: "hello there"}
  secret_refs: [{name: API_TOKEN, ref: "file:TOKEN_FILE"}]
"""
HASH = "sha256sum ~/work.bin | cut -d' ' -f1; cat /proc/$(cat ~/sleeper.pid)/status | grep VmRSS"
SHOW = 'printf "%s|%s\\n" "$API_TOKEN" "$GREETING"'

@pytest.mark.timeout(1800)  # a TCG VM booted three times
def test_pause_resume_stop_start_and_restarts_keep_disk_key_and_secrets(vm_cli: VMCli
                                                                        ) -> None:
    token = f"tok-{random.token_hex(12)}"
    # A file ref: core's keeper resolves it again when it rebinds (an env: ref would not
    # resolve there, and core would stop the sandbox instead).
    token_file = vm_cli.home.parent / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    pid = vm_cli.profile("vm-states", PROFILE.replace("TOKEN_FILE", str(token_file)))
    created = vm_cli.json("create", pid, timeout=1000)
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
        # Activity: a busy process raises the CPU (a session held open is seen, and idle
        # handling acts on it, in test_vm_long_lived.py). The busy loop outlives its
        # session (nohup) and is ended before the pauses; the guest gets little of this
        # loaded host, hence the generous deadline.
        must(ssh(first_known, reach, "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & "
                 "echo $! > ~/busy.pid"))
        one = await ext.activity(handle)
        deadline = time.monotonic() + 180
        while (two := await ext.activity(handle)).cpu_seconds < one.cpu_seconds + 0.5:
            assert time.monotonic() < deadline, (one, two)
        must(ssh(first_known, reach, "kill $(cat ~/busy.pid)"))

        phase("activity", t0)
        # Pause/resume cycles: the guest stands still, then carries on with its disk and a
        # process's memory as they were. (Three: each costs a TCG SSH round; bench/vm.py
        # runs many more cycles for its figures.)
        for i in range(3):
            await ext.pause(handle)
            await ext.pause(handle)  # idempotent
            assert await qmp.status(d) == "paused"
            assert (await ext.activity(handle)).detail.startswith("paused")
            await ext.resume(handle)
            await ext.resume(handle)
            assert await qmp.status(d) == "running"
            assert must(ssh(first_known, reach, HASH)) == before, f"cycle {i + 1}"

        phase("three pause/resume cycles", t0)
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
        # A snapshot of the stopped VM: its disk copied as it is, nothing booted (the
        # secret canary below searches it too).
        snap = await ext.snapshot(handle, new_snapshot_id(), lambda _m: None)
        assert ext._pid(sid) is None
        with open(d / "overlay.qcow2", "rb") as f:
            assert snap.content_hash == f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"

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
        # A guest reboot leaves the tmpfs empty, as the boot of start just did: here it is
        # emptied in place (a real reboot is one more TCG boot, minutes). Core's keeper
        # sees no binding and rebinds (Host.rebind: the ref resolved again).
        # (The keeper log's "its guest rebooted", checked below, says it saw that.)
        must(ssh(known, new_reach, "rm -rf /run/secrets/.env /run/secrets/.bound "
                 "/run/secrets/*"))
        deadline = time.monotonic() + 400
        while ssh(known, new_reach, SHOW, timeout=60).stdout.strip() != f"{token}|hello there":
            assert time.monotonic() < deadline, "the keeper did not rebind"
            await asyncio.sleep(2)
        phase("rebound once the binding was gone", t0)

        # QEMU gone while the sandbox is ready (a host restart): the keeper boots it again
        # over its disk and rebinds.
        os.kill(ext._pid(sid), signal.SIGKILL)
        deadline = time.monotonic() + 500
        while True:
            port = json.loads((d / "record.json").read_text())["port"]
            out = ssh(known, {**reach, "port": port},
                      "sha256sum ~/work.bin | cut -d' ' -f1; " + SHOW, timeout=60).stdout
            if out.split("\n")[1:2] == [f"{token}|hello there"]:
                break
            assert time.monotonic() < deadline, "the keeper did not revive the VM"
            await asyncio.sleep(2)
        assert out.split("\n")[0] == before.split("\n")[0]
        log = (vm_cli.home / "log" / "keeper-ext.vm-packer.log").read_text()
        assert "its guest rebooted" in log
        assert "its QEMU is gone" in log
        phase("revived and rebound", t0)

    asyncio.run(lifecycle())
    for f in vm_cli.home.rglob("*"):
        if f.is_file() and not f.is_socket():
            assert token.encode() not in f.read_bytes(), f"the secret is in {f}"
