"""ext.vm-packer boundaries (issue 12): no caller secret in the environment of QEMU or the
lease keeper, no route from the guest to the host's loopback, and a destroy while the VM
boots ends its create promptly with a conflict."""

from __future__ import annotations

import json
import os
import re
import secrets as random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandboxer.extensions.vm_packer import qemu

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli

pytestmark = [pytest.mark.integration, pytest.mark.vm]
SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"

PROFILE = """\
id: profile.{name}
extension: ext.vm-packer
spec:
  packer: {{template: base.json}}
  vm: {{cpus: 1, memory: 384M, accel: tcg, boot_timeout: {timeout}}}
reachability: {{user: agent}}
"""


def _pids(*marks: str) -> list[int]:
    """Processes with each of ``marks`` somewhere in their command line."""
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and all(
        any(m in arg for arg in qemu.cmdline(int(e.name))) for m in marks)]


def _environ(pid: int) -> list[bytes]:
    return [e for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e]


class _Listener:
    """A TCP server on the host's 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def test_no_secret_in_qemu_or_keeper_and_no_route_to_host_loopback(vm_cli: VMCli) -> None:
    canaries = {name: f"cnryvm{random.token_hex(10)}"
                for name in ("SBX_VM_ENV_CANARY", "SANDBOXER_TOKEN", "AWS_SECRET_ACCESS_KEY")}
    vm_cli.env.update(canaries)
    vm_cli.env["SANDBOXER_VM_KEEPER_INTERVAL"] = "1.5"
    profile = vm_cli.profile("vm-env", PROFILE.format(name="vm-env", timeout=240) + (
        "setup:\n  secret_refs: [{name: API_TOKEN, ref: 'env:SBX_VM_ENV_CANARY'}]\n"))
    server = _Listener()
    try:
        created = vm_cli.run("create", profile, "--json", timeout=400)
        assert created.returncode == 0, created.stderr
        sid = json.loads(created.stdout)["id"]

        # From the guest, 10.0.2.2 is not the host's loopback.
        probe = (f"timeout 8 bash -c 'echo > /dev/tcp/10.0.2.2/{server.port}' "
                 "&& echo reached || echo blocked")
        ran = json.loads(vm_cli.run("ssh", sid, "--json", "--", probe, timeout=60).stdout)
        assert ran["stdout"].strip() == "blocked", ran
        assert server.accepted == 0

        [qemu_pid] = _pids(f"guest=sandboxer.id={sid}")
        [keeper_pid] = _pids("sandboxer.service.daemon", "ext.vm-packer", str(vm_cli.home))
        for pid in (qemu_pid, keeper_pid):
            environ = _environ(pid)
            held = [v for v in canaries.values() if any(v.encode() in e for e in environ)]
            assert held == [], f"pid {pid} holds caller secrets"
            assert not {e.split(b"=", 1)[0].decode() for e in environ} & set(canaries)
        keeper_env = _environ(keeper_pid)
        # What the keeper reads still arrives.
        assert f"SANDBOXER_HOME={vm_cli.home}".encode() in keeper_env
        assert b"SANDBOXER_VM_KEEPER_INTERVAL=1.5" in keeper_env
        assert any(e.startswith(b"PATH=") for e in keeper_env)

        # The secret itself still reached the guest, over the SSH forward.
        ran = json.loads(vm_cli.run("ssh", sid, "--json", "--", "printenv API_TOKEN").stdout)
        assert ran["stdout"].strip() == canaries["SBX_VM_ENV_CANARY"]
        assert vm_cli.run("destroy", sid).returncode == 0
    finally:
        server.close()


def test_destroy_while_booting_ends_the_create_with_a_conflict(vm_cli: VMCli) -> None:
    profile = vm_cli.profile("vm-boot", PROFILE.format(name="vm-boot", timeout=300))
    create = subprocess.Popen([SANDBOXER, "create", profile], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=vm_cli.env)
    try:
        sid = None
        deadline = time.monotonic() + 120
        while sid is None or not _pids(f"guest=sandboxer.id={sid}"):
            assert time.monotonic() < deadline, "the VM never started"
            assert create.poll() is None, create.communicate()
            if sid is None:
                got = vm_cli.run("list", "--json")
                items = json.loads(got.stdout)["items"] if got.returncode == 0 else []
                sid = items[0]["id"] if items else None
            time.sleep(0.3)
        assert re.fullmatch(r"sbx-[a-z2-7]{10}", sid)
        destroyed = vm_cli.run("destroy", sid, timeout=60)
        assert destroyed.returncode == 0, destroyed.stderr
        ended = time.monotonic()
        _, err = create.communicate(timeout=30)
        waited = time.monotonic() - ended
        assert create.returncode == 8, err
        assert waited < 5, f"the create noticed the destroy only after {waited:.1f}s"
        assert "destroyed while it was provisioning" in err
        assert vm_cli.json("get", sid)["state"] == "destroyed"
    finally:
        if create.poll() is None:
            create.kill()
            create.communicate()
