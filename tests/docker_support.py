"""Shared by the fixtures that run real docker engines and OpenSSH servers for the tests:
the compose-ssh fixtures (tests/integration/compose/conftest.py) and the fleet of docker
hosts in network namespaces (tests/fleet_support.py).

A missing binary fails the run with the package to install (``require``); every process
is stopped by its pid (``stop_child``, ``stop_pid``), never by name.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
IMAGE_RECIPE = REPO / "images" / "sandbox-base"
EXTERNAL_DOCKER_ENV = "SANDBOXER_TEST_DOCKER_HOST"
TEST_USER = "sbxtest"
DOCKER_GROUP = "docker"
# What sshd in sandboxer/base needs under cap_drop ALL + no-new-privileges (measured; see
# images/sandbox-base/README.md). DAC_READ_SEARCH lets root in the container read the key
# files, which on an SSH target belong to the (non-root) SSH user and are 0600 in a 0700 dir.
SANDBOX_CAP_ADD = ("CHOWN", "SETUID", "SETGID", "SYS_CHROOT", "AUDIT_WRITE", "DAC_READ_SEARCH")

# Package to install for each binary the fixtures use.
_PACKAGES = {
    "dockerd": "docker.io",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "docker": "docker.io",
    "debootstrap": "debootstrap",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "useradd": "passwd",
    "usermod": "passwd",
}


def require(*names: str) -> dict[str, str]:
    """Absolute paths of the binaries, or pytest.fail naming the package to install."""
    found: dict[str, str] = {}
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for name in names:
        exe = shutil.which(name, path=path)
        if exe is None:
            pytest.fail(f"{name} is required by the docker and sshd integration tests "
                        f"(apt-get install {_PACKAGES.get(name, name)})", pytrace=False)
        found[name] = exe
    return found


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (run the integration tests as root, as .ci/run does)",
                    pytrace=False)


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               interval: float = 0.1) -> None:
    """Poll ``check()`` until it returns true; pytest.fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def stop_child(proc: subprocess.Popen[bytes], name: str, grace: float = 30.0) -> None:
    """SIGTERM our child, wait up to ``grace`` seconds, then SIGKILL; always reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL",
                    name, proc.pid, grace)
        proc.kill()
        proc.wait(timeout=10)


def stop_pid(pid: int, name: str, grace: float = 30.0) -> None:
    """SIGTERM a process that is not our child, then SIGKILL — this pid only."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", name, pid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class DockerDaemon:
    """A docker engine for the tests; ``pid`` is None when it was provided externally."""

    host: str
    pid: int | None = None
    root: Path | None = None
    bridge: str | None = None

    def docker(self, *args: str, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI locally against this engine."""
        return subprocess.run(["docker", "--host", self.host, *args], capture_output=True,
                              text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL)

    def answers(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}",
                               timeout=10, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def docker_group() -> int:
    try:
        return grp.getgrnam(DOCKER_GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", DOCKER_GROUP], check=True)
        return grp.getgrnam(DOCKER_GROUP).gr_gid


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever a killed dockerd left mounted below ``root``."""
    prefix = str(root) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[4] for line in lines if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def ensure_test_user() -> pwd.struct_passwd:
    if not exists_user(TEST_USER):
        made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash",
                               "--groups", DOCKER_GROUP, TEST_USER],
                              capture_output=True, text=True, check=False)
        # A concurrent test session may have created it in the meantime.
        if made.returncode != 0 and not exists_user(TEST_USER):
            pytest.fail(f"useradd {TEST_USER} failed: {made.stderr.strip()}", pytrace=False)
    else:
        subprocess.run(["usermod", "--append", "--groups", DOCKER_GROUP, TEST_USER],
                       check=True, capture_output=True)
    # sshd without PAM refuses a locked account ("!" password): '*' = no password, unlocked.
    subprocess.run(["usermod", "--password", "*", TEST_USER], check=True, capture_output=True)
    entry = pwd.getpwnam(TEST_USER)
    Path(entry.pw_dir).mkdir(mode=0o750, exist_ok=True)
    os.chown(entry.pw_dir, entry.pw_uid, entry.pw_gid)
    return entry


def exists_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def sshd_config(d: Path, port: int, docker_host: str, listen: str = "127.0.0.1") -> str:
    """An sshd_config for the test user only, keys in ``d``, DOCKER_HOST set for sessions."""
    return "\n".join([
        f"Port {port}",
        f"ListenAddress {listen}",
        f"HostKey {d / 'ssh_host_ed25519_key'}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        # The key files live under /var/tmp (world-writable), which StrictModes rejects.
        "StrictModes no",
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        f"AllowUsers {TEST_USER}",
        f"SetEnv DOCKER_HOST={docker_host}",
        "Subsystem sftp internal-sftp",
        # Concurrent creates open several sessions each.
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "LogLevel VERBOSE",
        "",
    ])




def make_keys(d: Path, keygen: str) -> tuple[Path, Path]:
    """A fresh host key and client identity (ed25519) in ``d``, the identity authorized
    (``d/authorized_keys``): (host key, identity)."""
    host_key = d / "ssh_host_ed25519_key"
    identity = d / "id_ed25519"
    for path, comment in ((host_key, "sbx-test-sshd"), (identity, "sbx-test-client")):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True)
    identity.chmod(0o600)
    authorized = d / "authorized_keys"
    authorized.write_text((d / "id_ed25519.pub").read_text())
    authorized.chmod(0o644)
    return host_key, identity


def host_public_key(host_key: Path) -> str:
    """"ssh-ed25519 AAAA…" of a host key, as a known_hosts line carries it."""
    return " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
