"""The attach variant: lease a VM that sand-boxer did not boot; destroy leaves it running
and its authorized_keys as it was."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput
from sandboxer.extensions import _keys
from sandboxer.extensions.base import Snapshots
from sandboxer.extensions.vm_packer import qemu
from sandboxer.manager import Manager
from sandboxer.values import new_snapshot_id

# The first test also waits for the module's VM to boot (TCG: minutes on a loaded host).
pytestmark = [pytest.mark.integration, pytest.mark.vm, pytest.mark.timeout(900)]


@dataclass
class RunningVM:
    port: int
    user: str
    host_key: str
    identity: Path
    known_hosts: Path
    pid: int

    def admin(self, command: str) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-i", str(self.identity), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(self.port),
                f"{self.user}@127.0.0.1", "--", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def running_vm(vm_images: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RunningVM]:
    """A VM booted with a bare qemu command from the test image, outside sand-boxer: one
    for the module (a TCG boot is minutes); each test leaves its authorized_keys as it
    found them, and checks that it does."""
    [key] = [p for p in vm_images.iterdir() if (p / "disk.qcow2").is_file()]
    d = tmp_path_factory.mktemp("attach") / "ops-vm"
    d.mkdir(mode=0o700)
    admin = d / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops-admin",
                    "-f", str(admin)], check=True)
    host = d / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host)], check=True)
    host_pub = " ".join(Path(f"{host}.pub").read_text().split()[:2])
    subprocess.run(qemu.overlay_argv(key / "disk.qcow2", d / "disk.qcow2", None), check=True)
    qemu.make_config_drive(d / "cfg.img", user="ops",
                           authorized_keys=Path(f"{admin}.pub").read_text(),
                           host_key=host.read_bytes(), hostname="ops-vm", secrets=False)
    port = qemu.free_port()
    boot = qemu.Boot(sandbox_id="ops-vm", image=key, overlay=d / "disk.qcow2",
                     config_drive=d / "cfg.img", pidfile=d / "pid", console=d / "console",
                     port=port, cpus=1, memory_mib=384, accel="tcg")
    subprocess.run(qemu.qemu_argv(boot), check=True)
    pid = int((d / "pid").read_text())
    known = d / "known_hosts"
    _keys.write_known_hosts(known, [_keys.known_hosts_line("127.0.0.1", port, host_pub)])
    vm = RunningVM(port=port, user="ops", host_key=host_pub, identity=admin,
                   known_hosts=known, pid=pid)
    try:
        deadline = time.monotonic() + 600
        while vm.admin("true").returncode != 0:
            assert time.monotonic() < deadline, (d / "console").read_text()[-2000:]
            time.sleep(1)
        yield vm
    finally:
        os.kill(pid, signal.SIGKILL)


def _attach_profile(vm_cli: VMCli, name: str, vm: RunningVM, *,
                    identity: Path | None = None, extra: str = "",
                    reach: str = "{user: ops}") -> str:
    """A profile leasing ``vm`` as ops, with the operator's key unless ``identity``."""
    return vm_cli.profile(name, f"""\
id: profile.{name}
extension: ext.vm-packer
{extra}spec:
  attach:
    host: 127.0.0.1
    port: {vm.port}
    user: ops
    host_key: "{vm.host_key}"
    identity: {identity or vm.identity}
reachability: {reach}
""")


def test_attach_leases_a_running_vm_and_destroy_leaves_it_running(
        vm_cli: VMCli, running_vm: RunningVM) -> None:
    before = running_vm.admin("cat ~/.ssh/authorized_keys").stdout
    pid = _attach_profile(vm_cli, "vm-attach", running_vm)
    done = vm_cli.run("create", pid, "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    sid, reach = doc["id"], doc["reachability"]
    assert running_vm.host_key in reach["known_hosts"]
    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "--", "hostname; whoami"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ops-vm", "ops"]
    assert f"sandboxer.id={sid}" in running_vm.admin("cat ~/.ssh/authorized_keys").stdout

    # Stop and pause are refused with the reason (InvalidInput, exit 4); the lease stays.
    manager = Manager(Settings.from_env(vm_cli.env))
    for verb in ("stop", "pause"):
        with pytest.raises(InvalidInput) as refused:
            asyncio.run(getattr(manager, verb)(sid))
        assert refused.value.exit_code == 4
        assert f"cannot {verb}" in refused.value.message, refused.value.message
        assert f"{sid} is an attached VM (ops@127.0.0.1:{running_vm.port})" \
            in refused.value.message
        assert f"not sand-boxer's to {verb}" in refused.value.message
    # Snapshots are refused too: the VM's disk is not sand-boxer's to copy.
    ext = manager.extension("ext.vm-packer")
    assert isinstance(ext, Snapshots)
    [handle] = [h for h in ext.host.live_handles() if h.sandbox_id == sid]
    why = ext.snapshottable(handle)
    assert why is not None
    assert f"{sid} is an attached VM (ops@127.0.0.1:{running_vm.port})" in why
    with pytest.raises(InvalidInput, match="its disk is not sand-boxer's to copy"):
        asyncio.run(ext.snapshot(handle, new_snapshot_id(), lambda _m: None))
    assert vm_cli.json("get", sid)["state"] == "ready"
    assert running_vm.admin("true").returncode == 0

    assert vm_cli.json("destroy", sid)["items"][0]["state"] == "destroyed"
    assert running_vm.admin("true").returncode == 0, "destroy stopped the attached VM"
    after = running_vm.admin("cat ~/.ssh/authorized_keys")
    assert after.returncode == 0, "the operator's own key no longer works"
    assert after.stdout == before
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                           stdin=subprocess.DEVNULL)
    assert again.returncode != 0, "the sandbox key still logs in after destroy"

    # A profile asking for forwarded ports is refused before anything reaches the VM.
    fwd = _attach_profile(vm_cli, "vm-attach-fwd", running_vm,
                          reach="{user: ops, forward: [8080]}")
    done = vm_cli.run("create", fwd, "--json", timeout=120)
    assert done.returncode == 4, done.stderr
    assert "reachability.forward is not supported by the attach variant" in done.stdout
    assert running_vm.admin("cat ~/.ssh/authorized_keys").stdout == before


def test_an_expired_attach_lease_is_released_by_the_keeper(
        vm_cli: VMCli, running_vm: RunningVM) -> None:
    pid = _attach_profile(vm_cli, "vm-attach-short", running_vm,
                          extra="ttl: {default: 3s, max: 1m}\n")
    sid = vm_cli.json("create", pid, timeout=120)["id"]
    deadline = time.monotonic() + 30
    # Read the store without the CLI (every CLI call would reap on its own).
    import sqlite3

    db = vm_cli.home / "state.db"
    while True:
        conn = sqlite3.connect(db)
        state = conn.execute("SELECT state FROM sandboxes WHERE id = ?", (sid,)).fetchone()[0]
        conn.close()
        if state == "destroyed":
            break
        assert time.monotonic() < deadline, f"the lease keeper did not reap {sid} ({state})"
        time.sleep(0.5)
    assert f"sandboxer.id={sid}" not in running_vm.admin("cat ~/.ssh/authorized_keys").stdout


def test_a_refused_attach_reports_its_cause_and_leaves_nothing(
        vm_cli: VMCli, running_vm: RunningVM, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    before = running_vm.admin("cat ~/.ssh/authorized_keys").stdout
    pid = _attach_profile(vm_cli, "vm-attach-refused", running_vm, identity=stranger)
    done = vm_cli.run("create", pid, "--json", timeout=120)
    assert done.returncode == 5, done.stderr
    err = json.loads(done.stdout)
    assert "installing the sandbox key on ops@127.0.0.1" in err["message"], err
    assert "Permission denied" in err["message"], err
    assert "removing the key" not in err["message"], err
    vm_root, keys = vm_cli.home / "vm", vm_cli.home / "keys"
    assert not vm_root.exists() or not any(vm_root.iterdir()), list(vm_root.iterdir())
    assert not keys.exists() or not any(keys.iterdir()), list(keys.iterdir())
    assert "Nothing was left behind" in err["message"]  # and now it is true
    sid = err["message"].split()[1]
    assert vm_cli.json("get", sid)["state"] == "failed"
    for _ in range(2):
        again = vm_cli.run("reconcile")
        assert again.returncode == 0, again.stderr
    assert running_vm.admin("cat ~/.ssh/authorized_keys").stdout == before
