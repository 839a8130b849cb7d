"""Real components for ext.compose-ssh: dockerd, the sandbox-base image and an OpenSSH target.

Session-scoped and torn down. A missing binary fails the run with the package to install:
these tests are the proof that ext.compose-ssh works, so they never skip silently.

- ``docker_daemon``: dockerd on its own socket, data root and exec root under /var/tmp
  (or the daemon named by ``SANDBOXER_TEST_DOCKER_HOST``, which CI starts once).
- ``base_image``: ``images/sandbox-base/build.sh`` run against it (rootfs tar cached).
- ``ssh_target``: sshd on 127.0.0.1:<free port> for the user ``sbxtest`` (in the docker
  group), ``SetEnv DOCKER_HOST`` pointing at that daemon, host key pinned.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
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
            pytest.fail(f"{name} is required by the ext.compose-ssh integration tests "
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
        if not _alive(pid):
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", name, pid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- dockerd ---------------------------------------------------------------------------------


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


def _docker_group() -> int:
    try:
        return grp.getgrnam(DOCKER_GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", DOCKER_GROUP], check=True)
        return grp.getgrnam(DOCKER_GROUP).gr_gid


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever a killed dockerd left mounted below ``root``."""
    prefix = str(root) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[4] for line in lines if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def start_dockerd() -> tuple[DockerDaemon, subprocess.Popen[bytes]]:
    """Start a dockerd that coexists with any other engine here; wait until it answers."""
    tools = require("dockerd", "ip")
    require_root("starting dockerd")
    _docker_group()
    # Short path: the socket and containerd's sockets under exec-root must stay < 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="sbxd-", dir="/var/tmp"))
    root.chmod(0o755)  # the test user reaches the socket through this directory
    sock = root / "docker.sock"
    logfile = root / "dockerd.log"
    suffix = secrets.token_hex(4)
    bridge = f"sbx{suffix}"  # interface names stay under 16 bytes
    subprocess.run([tools["ip"], "link", "add", bridge, "type", "bridge"], check=True,
                   capture_output=True)
    argv = [
        tools["dockerd"],
        "--host", f"unix://{sock}",
        "--group", DOCKER_GROUP,
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"),
        # Coexist with any other engine on this machine: a bridge of its own (never
        # "--bridge none": dockerd then deletes docker0, under the other engine's feet),
        # no iptables rules or forwarding sysctl (published ports go through docker-proxy),
        # an address pool not routed yet, and a containerd namespace of its own.
        "--bridge", bridge,
        "--iptables=false", "--ip-masq=false", "--ip-forward=false",
        "--default-address-pool", f"base={_free_pool()},size=24",
        "--containerd-namespace", f"sbxtest-{suffix}",
        "--containerd-plugins-namespace", f"sbxtest-{suffix}-plugins",
        "--shutdown-timeout", "5",
    ]
    with logfile.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    daemon = DockerDaemon(host=f"unix://{sock}", pid=proc.pid, root=root, bridge=bridge)
    try:
        deadline = time.monotonic() + 60
        while not daemon.answers():
            if proc.poll() is not None:
                pytest.fail(f"dockerd exited with {proc.returncode}:\n{_tail(logfile)}",
                            pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer within 60s:\n{_tail(logfile)}",
                            pytrace=False)
            time.sleep(0.2)
    except BaseException:
        _stop_dockerd(daemon, proc)
        raise
    return daemon, proc


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """dockerd on its own socket/data root, or the one in SANDBOXER_TEST_DOCKER_HOST."""
    require("docker")
    external = os.environ.get(EXTERNAL_DOCKER_ENV)
    if external:
        daemon = DockerDaemon(host=external)
        if not daemon.answers():
            pytest.fail(f"{EXTERNAL_DOCKER_ENV}={external}: no docker engine answers there",
                        pytrace=False)
        yield daemon
        return

    daemon, proc = start_dockerd()
    try:
        yield daemon
    finally:
        _stop_dockerd(daemon, proc)


def _stop_dockerd(daemon: DockerDaemon, proc: subprocess.Popen[bytes]) -> None:
    assert daemon.root is not None
    containerd_pid = None
    with contextlib.suppress(OSError, ValueError):
        containerd_pid = int((daemon.root / "exec/containerd/containerd.pid").read_text())
    stop_child(proc, "dockerd")
    # dockerd stops its containerd; after a SIGKILL of dockerd it would be orphaned.
    if containerd_pid is not None and _alive(containerd_pid):
        stop_pid(containerd_pid, "containerd", grace=10)
    _unmount_under(daemon.root)
    shutil.rmtree(daemon.root, ignore_errors=True)
    if daemon.bridge:
        subprocess.run(["ip", "link", "delete", daemon.bridge], capture_output=True,
                       check=False)


def _free_pool() -> str:
    """A 10.x.0.0/16 with no route on this machine yet, for the test engine's networks."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                            check=False).stdout
    for second in random.sample(range(200, 255), 55):
        if f"10.{second}." not in routes:
            return f"10.{second}.0.0/16"
    pytest.fail("no free 10.200-254.0.0/16 address range for the test docker engine",
                pytrace=False)


# --- the sandbox image -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def base_image(docker_daemon: DockerDaemon) -> str:
    """sandboxer/base:<VERSION> built by images/sandbox-base/build.sh into the test engine."""
    require("debootstrap")
    cmd = ["bash", str(IMAGE_RECIPE / "build.sh"), "--docker-host", docker_daemon.host]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("images/sandbox-base/build.sh took more than 900s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"images/sandbox-base/build.sh failed ({done.returncode}):\n"
                    f"{done.stderr[-3000:]}", pytrace=False)
    tag = done.stdout.strip().splitlines()[-1]
    log.info("base image %s ready in %.1fs", tag, time.monotonic() - started)
    return tag


# --- the SSH target --------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """An OpenSSH server on loopback whose user drives ``docker_host`` (via SetEnv)."""

    docker_host: str
    ssh_host: str
    ssh_port: int
    ssh_user: str
    identity_file: Path
    known_hosts: str  # "[127.0.0.1]:PORT ssh-ed25519 AAAA…", the pinned host key
    known_hosts_file: Path
    image: str
    home: Path
    sshd_pid: int = field(repr=False)
    #: cap_add for a sandbox from ``image`` under cap_drop ALL (see SANDBOX_CAP_ADD).
    cap_add: ClassVar[tuple[str, ...]] = SANDBOX_CAP_ADD

    @property
    def url(self) -> str:
        """As given to ``sandboxer targets add NAME URL``."""
        return f"ssh://{self.ssh_user}@{self.ssh_host}:{self.ssh_port}"

    def ssh_argv(self, command: Sequence[str]) -> list[str]:
        """System OpenSSH client argv, host key pinned; ``command`` quoted with shlex.join."""
        return ["ssh", "-p", str(self.ssh_port), "-i", str(self.identity_file),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts_file}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR",
                f"{self.ssh_user}@{self.ssh_host}", "--", shlex.join(command)]

    def run(self, command: Sequence[str], *, input_data: bytes | None = None,
            timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run an argument array on the target over SSH (stdin: ``input_data`` or none)."""
        if input_data is None:
            done = subprocess.run(self.ssh_argv(command), capture_output=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        else:
            done = subprocess.run(self.ssh_argv(command), input=input_data,
                                  capture_output=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(
                f"on target: {shlex.join(command)} exited {done.returncode}:\n"
                f"{done.stderr.decode(errors='replace')[-3000:]}")
        return done


def _ensure_test_user() -> pwd.struct_passwd:
    if not _exists_user(TEST_USER):
        made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash",
                               "--groups", DOCKER_GROUP, TEST_USER],
                              capture_output=True, text=True, check=False)
        # A concurrent test session may have created it in the meantime.
        if made.returncode != 0 and not _exists_user(TEST_USER):
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


def _exists_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _sshd_config(d: Path, port: int, docker_host: str) -> str:
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
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


@pytest.fixture(scope="session")
def ssh_target(docker_daemon: DockerDaemon, base_image: str) -> Iterator[SshTarget]:
    """sshd on 127.0.0.1:<free port>; user sbxtest (docker group) with a fresh ed25519 key."""
    tools = require("sshd", "ssh", "ssh-keygen", "useradd", "usermod")
    require_root("starting sshd for a test user")
    _docker_group()
    user = _ensure_test_user()
    d = Path(tempfile.mkdtemp(prefix="sbxs-", dir="/var/tmp"))
    d.chmod(0o755)  # sshd reads authorized_keys as the test user
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield _start_sshd(d, tools, user, docker_daemon, base_image, procs)
    finally:
        for proc in procs:
            stop_child(proc, "sshd", grace=10)
        shutil.rmtree(d, ignore_errors=True)


def _start_sshd(d: Path, tools: dict[str, str], user: pwd.struct_passwd,
                daemon: DockerDaemon, image: str,
                procs: list[subprocess.Popen[bytes]]) -> SshTarget:
    keygen = tools["ssh-keygen"]
    host_key = d / "ssh_host_ed25519_key"
    identity = d / "id_ed25519"
    for path, comment in ((host_key, "sbx-test-sshd"), (identity, "sbx-test-client")):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True)
    identity.chmod(0o600)
    authorized = d / "authorized_keys"
    authorized.write_text((d / "id_ed25519.pub").read_text())
    authorized.chmod(0o644)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir

    for _attempt in range(3):  # another process may grab the free port first
        port = _free_port()
        (d / "sshd_config").write_text(_sshd_config(d, port, daemon.host))
        logfile = d / "sshd.log"
        # -D -e: foreground, log to stderr; it stays our child until teardown.
        with logfile.open("wb") as out:
            proc = subprocess.Popen([tools["sshd"], "-D", "-e", "-f", str(d / "sshd_config")],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 20
        while proc.poll() is None and not _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and _port_open(port):
            break
        stop_child(proc, "sshd", grace=5)
    else:
        pytest.fail(f"sshd did not start:\n{_tail(d / 'sshd.log')}", pytrace=False)

    host_pub = " ".join((d / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    known_hosts = f"[127.0.0.1]:{port} {host_pub}"
    known_hosts_file = d / "known_hosts"
    known_hosts_file.write_text(known_hosts + "\n")
    target = SshTarget(docker_host=daemon.host, ssh_host="127.0.0.1", ssh_port=port,
                       ssh_user=TEST_USER, identity_file=identity, known_hosts=known_hosts,
                       known_hosts_file=known_hosts_file, image=image,
                       home=Path(user.pw_dir), sshd_pid=proc.pid)

    def logged_in() -> bool:
        return target.run(["true"], timeout=15, check=False).returncode == 0

    wait_until(f"a key login to {target.url}", logged_in, timeout=20, interval=0.2)
    return target
