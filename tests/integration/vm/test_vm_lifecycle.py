"""ext.vm-packer end to end: create from the cached image through the CLI, reach the VM
with the system OpenSSH client (host key pinned), secrets, destroy, leftovers. On the same
VM, the boundaries of issue 12: no caller secret in the environment of QEMU or the lease
keeper (a shell holding canaries ran the create), no route from the guest to the host's
loopback."""

from __future__ import annotations

import secrets as random
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import HostListener, environ_of, pids_with

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli


pytestmark = [pytest.mark.integration, pytest.mark.vm]

PROFILE = """\
id: profile.{name}
extension: ext.vm-packer
spec:
  packer: {{template: base.json}}
  vm: {{cpus: 1, memory: 384M, disk: 3G, accel: {accel}, boot_timeout: {timeout}}}
reachability: {{user: agent}}
setup:
  secret_refs: [{{name: API_TOKEN, ref: "env:SBX_VM_TEST_TOKEN"}}]
"""


def ssh(reach: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10", "--", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def qemu_pids(sandbox_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"guest=sandboxer.id={sandbox_id}".encode() in argv:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie (this machine's init may reap daemonized QEMU late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(1500)  # the session's image build may come first (minutes)
def test_create_reach_run_destroy_from_the_cached_image(vm_cli: VMCli, vm_images: Path
                                                        ) -> None:
    token = f"cnryvm{random.token_hex(12)}"
    canaries = {"SBX_VM_TEST_TOKEN": token, "SANDBOXER_TOKEN": f"cnryvm{random.token_hex(10)}",
                "AWS_SECRET_ACCESS_KEY": f"cnryvm{random.token_hex(10)}"}
    vm_cli.env.update(canaries)
    vm_cli.env["SANDBOXER_VM_KEEPER_INTERVAL"] = "1.5"
    pid = vm_cli.profile("vm-test", PROFILE.format(name="vm-test", accel="auto",
                                                   timeout=900))
    entries = sorted(p.name for p in vm_images.iterdir() if not p.name.endswith(".lock"))
    disk = vm_images / entries[0] / "disk.qcow2"
    before = disk.stat().st_mtime_ns

    done = vm_cli.run("create", pid, "--json", timeout=1000)
    assert done.returncode == 0, done.stderr
    import json

    doc = json.loads(done.stdout)
    sid, reach = doc["id"], doc["reachability"]
    assert "packer: " not in done.stderr, "the second create ran Packer again"
    assert "(cached)" in done.stderr
    assert sorted(p.name for p in vm_images.iterdir() if not p.name.endswith(".lock")) \
        == entries
    assert disk.stat().st_mtime_ns == before

    out = ssh(reach, 'id -un; cat /etc/sandboxer-image; printf "%s\\n" "$API_TOKEN"; '
              'df --output=size -B1M / | tail -n 1')
    assert out.returncode == 0, out.stderr
    user, image, value, size = out.stdout.split("\n")[:4]
    assert (user, image) == ("agent", "sandboxer-base")
    assert value == token, "the secret did not reach the session"
    assert int(size) > 2500, "the root file system did not grow to vm.disk"
    # Values never sit on the host's disk: not in the home, not in the config drive.
    for f in vm_cli.home.rglob("*"):
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f"the secret is in {f}"

    _boundaries(vm_cli, sid, reach, canaries)
    [qemu] = qemu_pids(sid)
    vm_dir = vm_cli.home / "vm" / sid
    assert (vm_dir / "overlay.qcow2").is_file()
    port = reach["port"]
    assert port_open(port)

    gone = vm_cli.json("destroy", sid)
    assert gone["items"][0]["state"] == "destroyed"
    assert qemu_pids(sid) == []
    assert not alive(qemu)
    assert not vm_dir.exists()
    assert not port_open(port)
    assert not (vm_cli.home / "keys" / sid).exists()


def _boundaries(vm_cli: VMCli, sid: str, reach: dict[str, Any],
                canaries: dict[str, str]) -> None:
    """From the guest, 10.0.2.2 is not the host's loopback; QEMU and the keeper hold none
    of the caller's secrets in their environment, yet get what they read."""
    server = HostListener()
    try:
        probe = (f"timeout 8 bash -c 'echo > /dev/tcp/10.0.2.2/{server.port}' "
                 "&& echo reached || echo blocked")
        ran = ssh(reach, probe)
        assert ran.stdout.strip() == "blocked", ran
        assert server.accepted == 0
    finally:
        server.close()
    [qemu_pid] = pids_with(f"guest=sandboxer.id={sid}")
    [keeper_pid] = pids_with("sandboxer.service.daemon", "ext.vm-packer", str(vm_cli.home))
    for pid in (qemu_pid, keeper_pid):
        environ = environ_of(pid)
        held = [v for v in canaries.values() if any(v.encode() in e for e in environ)]
        assert held == [], f"pid {pid} holds caller secrets"
        assert not {e.split(b"=", 1)[0].decode() for e in environ} & set(canaries)
    keeper_env = environ_of(keeper_pid)
    assert f"SANDBOXER_HOME={vm_cli.home}".encode() in keeper_env
    assert b"SANDBOXER_VM_KEEPER_INTERVAL=1.5" in keeper_env
    assert any(e.startswith(b"PATH=") for e in keeper_env)
