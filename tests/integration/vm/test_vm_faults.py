"""ext.vm-packer faults: tools missing, Packer failing, a VM that never answers SSH, a full
disk while building. Each fails cleanly and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli


REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.integration, pytest.mark.vm]

PROFILE = """\
id: profile.{name}
extension: ext.vm-packer
spec:
  packer: {{template: {template}}}
  vm: {{memory: 384M, accel: tcg, boot_timeout: {timeout}}}
"""


def _bin_with(tmp_path: Path, *names: str) -> str:
    """A PATH holding only these tools (plus ssh, for the SSH probe)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name in (*names, "ssh"):
        exe = shutil.which(name, path=os.environ["PATH"] + ":/usr/sbin:/sbin")
        assert exe is not None
        (d / name).symlink_to(exe)
    return str(d)


def qemu_pids(sandbox_id: str) -> list[int]:
    mark = f"guest=sandboxer.id={sandbox_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _assert_clean(cli: VMCli) -> None:
    vm_root = cli.home / "vm"
    assert not vm_root.exists() or not any(vm_root.iterdir()), list(vm_root.iterdir())
    keys = cli.home / "keys"
    assert not keys.exists() or not any(keys.iterdir()), list(keys.iterdir())


def test_qemu_missing(vm_cli: VMCli, tmp_path: Path) -> None:
    pid = vm_cli.profile("vm-noqemu", PROFILE.format(name="vm-noqemu", template="base.json",
                                                     timeout=60))
    done = vm_cli.run("create", pid, env={"PATH": _bin_with(tmp_path, "qemu-img")})
    assert done.returncode == 5, done.stderr
    assert "qemu-system-x86_64 is not installed" in done.stderr
    assert "install qemu-system-x86" in done.stderr
    _assert_clean(vm_cli)


def test_packer_missing_and_nothing_cached(vm_cli: VMCli, tmp_path: Path) -> None:
    pid = vm_cli.profile("vm-nopacker", PROFILE.format(name="vm-nopacker",
                                                       template="base.json", timeout=60))
    done = vm_cli.run("create", pid, env={
        "PATH": _bin_with(tmp_path, "qemu-system-x86_64", "qemu-img"),
        "SANDBOXER_VM_IMAGES": str(tmp_path / "empty-cache")})
    assert done.returncode == 5, done.stderr
    assert "Packer is not installed" in done.stderr
    _assert_clean(vm_cli)


def test_packer_failing_shows_its_last_lines_and_caches_nothing(vm_cli: VMCli,
                                                                tmp_path: Path) -> None:
    template = tmp_path / "broken.json"
    template.write_text(json.dumps({
        "variables": {"output_dir": ""},
        "builders": [{"type": "qemu", "disk_image": True, "iso_checksum": "none",
                      "iso_url": str(tmp_path / "no-such-disk.qcow2"),
                      "output_directory": "{{user `output_dir`}}", "ssh_username": "root",
                      "accelerator": "tcg", "headless": True}]}))
    cache = tmp_path / "cache"
    done = vm_cli.run("images", "build", str(template), env={"SANDBOXER_VM_IMAGES": str(cache)})
    assert done.returncode == 5, done.stderr
    assert "packer build broken.json failed" in done.stderr
    assert "no-such-disk.qcow2" in done.stderr  # Packer's own words, from its last lines
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_vm_never_answering_ssh_is_torn_down(vm_cli: VMCli) -> None:
    pid = vm_cli.profile("vm-slow", PROFILE.format(name="vm-slow", template="base.json",
                                                   timeout=5))
    done = vm_cli.run("create", pid, "--json")
    assert done.returncode == 5, done.stderr
    err = json.loads(done.stdout)
    assert "did not succeed within 5s" in err["message"]
    sid = err["message"].split()[1]
    assert sid.startswith("sbx-")
    assert qemu_pids(sid) == []
    _assert_clean(vm_cli)
    got = vm_cli.json("get", sid)
    assert got["state"] == "failed"


def test_disk_full_while_building_leaves_no_cache_entry(vm_cli: VMCli, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "sbx-vm-test", str(small)],
                   check=True)
    try:
        done = vm_cli.run("images", "build", str(REPO / "packer" / "base.json"),
                          env={"SANDBOXER_VM_IMAGES": str(small)}, timeout=600)
        assert done.returncode == 5, done.stderr
        assert "failed" in done.stderr
        left = [p.name for p in small.iterdir() if not p.name.endswith(".lock")]
        assert left == [], f"a half-written build stayed behind: {left}"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
