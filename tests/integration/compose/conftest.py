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
import logging
import os
import pwd
import random
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from tests.docker_support import (
    DOCKER_GROUP,
    EXTERNAL_DOCKER_ENV,
    IMAGE_RECIPE,
    SANDBOX_CAP_ADD,
    TEST_USER,
    DockerDaemon,
    alive,
    docker_group,
    ensure_test_user,
    free_port,
    host_public_key,
    make_keys,
    port_open,
    require,
    require_root,
    sshd_config,
    stop_child,
    stop_pid,
    tail,
    unmount_under,
    wait_until,
)

log = logging.getLogger(__name__)

# --- dockerd ---------------------------------------------------------------------------------


def start_dockerd() -> tuple[DockerDaemon, subprocess.Popen[bytes]]:
    """Start a dockerd that coexists with any other engine here; wait until it answers."""
    tools = require("dockerd", "ip")
    require_root("starting dockerd")
    docker_group()
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
                pytest.fail(f"dockerd exited with {proc.returncode}:\n{tail(logfile)}",
                            pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer within 60s:\n{tail(logfile)}",
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
    if containerd_pid is not None and alive(containerd_pid):
        stop_pid(containerd_pid, "containerd", grace=10)
    unmount_under(daemon.root)
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


@pytest.fixture(scope="session")
def ssh_target(docker_daemon: DockerDaemon, base_image: str) -> Iterator[SshTarget]:
    """sshd on 127.0.0.1:<free port>; user sbxtest (docker group) with a fresh ed25519 key."""
    tools = require("sshd", "ssh", "ssh-keygen", "useradd", "usermod")
    require_root("starting sshd for a test user")
    docker_group()
    user = ensure_test_user()
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
    _host_key, identity = make_keys(d, tools["ssh-keygen"])
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir

    for _attempt in range(3):  # another process may grab the free port first
        port = free_port()
        (d / "sshd_config").write_text(sshd_config(d, port, daemon.host))
        logfile = d / "sshd.log"
        # -D -e: foreground, log to stderr; it stays our child until teardown.
        with logfile.open("wb") as out:
            proc = subprocess.Popen([tools["sshd"], "-D", "-e", "-f", str(d / "sshd_config")],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 20
        while proc.poll() is None and not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and port_open(port):
            break
        stop_child(proc, "sshd", grace=5)
    else:
        pytest.fail(f"sshd did not start:\n{tail(d / 'sshd.log')}", pytrace=False)

    host_pub = host_public_key(d / "ssh_host_ed25519_key")
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
