"""Real Packer and real QEMU (TCG) for ext.vm-packer.

- ``vm_images``: one real ``sandboxer images build packer/base.json`` per session into a
  session directory (the debootstrap tar of the seed is cached across runs under
  /var/cache/sandboxer/images, so a rerun costs the seed disk and the Packer run, ~1.5 min).
- ``vm_cli``: a private SANDBOXER_HOME and profile folder per test, sharing those images,
  running the installed ``sandboxer`` CLI in a subprocess.

Missing tools fail the run with the package to install: these tests are the proof that
ext.vm-packer works, so they never skip silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
_PACKAGES = {"packer": "packer", "qemu-system-x86_64": "qemu-system-x86",
             "qemu-img": "qemu-utils", "debootstrap": "debootstrap", "ssh": "openssh-client",
             "mkfs.ext4": "e2fsprogs"}


def require_vm_tools() -> None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for name, package in _PACKAGES.items():
        if shutil.which(name, path=path) is None:
            pytest.fail(f"{name} is required by the ext.vm-packer integration tests "
                        f"(apt-get install {package})", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the ext.vm-packer tests need root (debootstrap chroots)", pytrace=False)


@dataclass
class VMCli:
    """The sandboxer CLI with a private home; ``env`` may be changed per test."""

    home: Path
    profiles: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 400,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOXER, *args], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                              env={**self.env, **(env or {})})

    def json(self, *args: str, **kw: Any) -> dict[str, Any]:
        done = self.run(*args, "--json", **kw)
        assert done.returncode == 0, f"sandboxer {' '.join(args)}: {done.stderr}"
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def profile(self, name: str, text: str) -> str:
        (self.profiles / f"{name}.yaml").write_text(text)
        return f"profile.{name}"


def ssh_argv(known_hosts: Path, reach: dict[str, Any], command: str) -> list[str]:
    """The system OpenSSH client's argv for ``command`` through a descriptor's endpoint."""
    return ["ssh", "-i", reach["identity_file"], "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=20",
            "-p", str(reach["port"]), f"{reach['user']}@127.0.0.1", "--", command]


def ssh(known_hosts: Path, reach: dict[str, Any], command: str,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ssh_argv(known_hosts, reach, command), capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def must(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def phase(what: str, since: float) -> None:
    sys.stderr.write(f"{time.monotonic() - since:7.1f}s {what}\n")


@pytest.fixture(scope="session")
def vm_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_vm_tools()
    root = tmp_path_factory.mktemp("vm-images")
    env = {**os.environ, "SANDBOXER_HOME": str(root / "home"),
           "SANDBOXER_VM_IMAGES": str(root / "images")}
    done = subprocess.run([SANDBOXER, "images", "build", str(REPO / "packer" / "base.json"),
                           "--json"], capture_output=True, text=True, timeout=900,
                          check=False, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 0, f"the test image did not build:\n{done.stderr[-4000:]}"
    doc = json.loads(done.stdout)
    assert doc["built"] is True
    assert "packer: " in done.stderr, "no Packer output was streamed as progress"
    yield root / "images"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def vm_cli(vm_images: Path, tmp_path: Path) -> Iterator[VMCli]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    cli = VMCli(home=tmp_path / "home", profiles=profiles, env={
        **os.environ, "SANDBOXER_HOME": str(tmp_path / "home"), "HOME": str(tmp_path),
        "SANDBOXER_PROFILES": str(profiles), "SANDBOXER_VM_IMAGES": str(vm_images)})
    yield cli
    listed = cli.run("list", "--json")
    if listed.returncode == 0:
        for doc in json.loads(listed.stdout)["items"]:
            cli.run("destroy", doc["id"])
    keeper = cli.home / "run" / "keeper-ext.vm-packer.lock"
    if keeper.exists():  # the keeper exits ~30 s after its last VM; don't leave it behind
        _stop_keeper(cli.home)
    from sandboxer.extensions.vm_packer import qemu

    left = qemu.vm_processes(str(cli.home) + "/")
    for pid in left.values():
        os.kill(pid, 9)
    assert not left, f"QEMU processes outlived their sandboxes: {left}"


def _stop_keeper(home: Path) -> None:
    """SIGTERM core's lease keeper for ext.vm-packer of this home only (found by its
    --home and --extension arguments)."""
    import signal

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"sandboxer.service.daemon" in argv and b"ext.vm-packer" in argv
                and str(home).encode() in argv):
            os.kill(int(entry.name), signal.SIGTERM)
