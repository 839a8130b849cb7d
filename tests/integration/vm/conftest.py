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
import socket
import subprocess
import sys
import threading
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


def pinned(known_hosts: Path, reach: dict[str, Any]) -> list[str]:
    """OpenSSH options (ssh, scp, sftp) for a descriptor's key, pinned host key and port."""
    return ["-i", reach["identity_file"], "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=20",
            "-o", f"Port={reach['port']}"]


def ssh_argv(known_hosts: Path, reach: dict[str, Any], command: str) -> list[str]:
    """The system OpenSSH client's argv for ``command`` through a descriptor's endpoint."""
    return ["ssh", *pinned(known_hosts, reach), f"{reach['user']}@127.0.0.1", "--", command]


def ssh_stdio(known_hosts: Path, reach: dict[str, Any], dest: str,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ssh -W dest``: a direct-tcpip channel (what ``ssh -L`` opens) to ``dest``."""
    return subprocess.run(["ssh", *pinned(known_hosts, reach), "-W", dest,
                           f"{reach['user']}@127.0.0.1"], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def ssh(known_hosts: Path, reach: dict[str, Any], command: str,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ssh_argv(known_hosts, reach, command), capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def must(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def phase(what: str, since: float) -> None:
    sys.stderr.write(f"{time.monotonic() - since:7.1f}s {what}\n")


def pids_with(*marks: str) -> list[int]:
    """Processes with each of ``marks`` somewhere in their command line."""
    from sandboxer.extensions.vm_packer import qemu

    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and all(
        any(m in arg for arg in qemu.cmdline(int(e.name))) for m in marks)]


def environ_of(pid: int) -> list[bytes]:
    return [e for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e]


class HostListener:
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
