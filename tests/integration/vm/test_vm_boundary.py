"""ext.vm-packer boundaries (issue 12): a destroy while the VM boots ends its create
promptly with a conflict. (No caller secret in the environment of QEMU or the lease keeper
and no route from the guest to the host's loopback are checked on the VM of
test_vm_lifecycle.py: one boot for both.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from .conftest import pids_with

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


def test_destroy_while_booting_ends_the_create_with_a_conflict(vm_cli: VMCli) -> None:
    profile = vm_cli.profile("vm-boot", PROFILE.format(name="vm-boot", timeout=300))
    create = subprocess.Popen([SANDBOXER, "create", profile], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=vm_cli.env)
    try:
        sid = None
        deadline = time.monotonic() + 120
        while sid is None or not pids_with(f"guest=sandboxer.id={sid}"):
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
