"""Several docker hosts on one machine, each in its own network namespace, for placement.

``fleet(n)`` is a plain context manager (tests/integration/fleet/conftest.py puts a pytest
fixture on top; bench/ may use it directly). Each host ``h1..hN`` gets

- a network namespace ``sbxf<tag>-h<i>`` with a veth pair: the root end is on a bridge
  ``sbxf<tag>`` created for the fleet with its own /24 (10.77.x.0/24, the first x with no
  route or address here yet), the namespace end is ``eth0`` with ``10.77.x.(10+i)``;
- its own ``dockerd`` in that namespace (own socket, data root, exec root, pidfile,
  ``--iptables=false`` as .ci/run runs it): ports it publishes listen on the host's
  address, reachable from the root namespace;
- its own ``sshd`` on ``<address>:22`` for the user ``sbxtest`` (one client key for the
  fleet, a host key per host), whose sessions get ``DOCKER_HOST`` = that dockerd and a home
  of their own (a bind mount private to that sshd's mount namespace), so no host sees
  another's ``~/.sandboxer``;
- the sandbox image ``sandboxer/base:<VERSION>`` from the image recipe (the rootfs tar is
  cached, so this is a ``docker import``).

``FleetHost.stop_sshd/start_sshd`` and ``link_down/link_up`` take a host down and back;
``targets_add_args`` is the ``sandboxer targets add`` command line for it, ``docker`` runs
the docker CLI against its engine, ``labelled`` lists the containers carrying a label.
Setup of three hosts takes 6-12 s here (``Fleet.setup_seconds``), teardown 7-12 s.
A machine that cannot run them is reported with ``pytest.fail`` (pytest's ``Failed``, a
``BaseException``), also when this module is used outside pytest (from the repository
root, so that ``tests`` imports). Everything started is stopped by its pid and everything
created (namespaces, links, the bridge, directories) is deleted on exit, also when the body
raises.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.docker_support import (
    DOCKER_GROUP,
    IMAGE_RECIPE,
    TEST_USER,
    alive,
    docker_group,
    ensure_test_user,
    host_public_key,
    make_keys,
    require,
    require_root,
    sshd_config,
    stop_child,
    stop_pid,
    tail,
    unmount_under,
)

log = logging.getLogger(__name__)
SUBNET_PREFIX = "10.77"  # 10.77.x.0/24: the first x free on this machine
SSH_PORT = 22


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          stdin=subprocess.DEVNULL)


def _free_subnet() -> str:
    """``10.77.x`` with no route or address on this machine yet."""
    used = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
    for x in range(256):
        if f"{SUBNET_PREFIX}.{x}." not in used:
            return f"{SUBNET_PREFIX}.{x}"
    pytest.fail(f"no free {SUBNET_PREFIX}.x.0/24 for the fleet's bridge", pytrace=False)


@dataclass
class FleetHost:
    """One docker host of the fleet: dockerd + sshd in network namespace ``netns``."""

    name: str
    address: str
    netns: str
    veth: str  # the root namespace's end, on the fleet's bridge
    root: Path  # socket, data root, exec root, sshd files, logs, the sessions' home
    identity_file: Path
    image: str = ""
    dockerd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def url(self) -> str:
        """As given to ``sandboxer targets add NAME URL``."""
        return f"ssh://{TEST_USER}@{self.address}:{SSH_PORT}"

    @property
    def known_hosts(self) -> str:
        """This host's pinned key as a known_hosts line."""
        return f"{self.address} {host_public_key(self.root / 'ssh_host_ed25519_key')}"

    def targets_add_args(self, *, name: str | None = None, capacity: int | None = None,
                         labels: Sequence[str] = ()) -> list[str]:
        """``sandboxer`` arguments that add this host as a target (host key accepted)."""
        args = ["targets", "add", name or self.name, self.url,
                "--identity", str(self.identity_file), "--yes"]
        if capacity is not None:
            args += ["--capacity", str(capacity)]
        for label in labels:
            args += ["--label", label]
        return args

    def docker(self, *args: str, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this host's engine (through its socket, not SSH)."""
        return subprocess.run(["docker", "--host", self.docker_host, *args],
                              capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL)

    def labelled(self, key: str, value: str) -> list[str]:
        """Ids of the containers on this host carrying the label ``key=value``."""
        return self.docker("ps", "-a", "-q", "--filter", f"label={key}={value}").stdout.split()

    def answers(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", timeout=10,
                               check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ssh_argv(self, command: Sequence[str]) -> list[str]:
        """System OpenSSH argv for a command on this host as ``sbxtest``, key pinned."""
        import shlex

        return ["ssh", "-p", str(SSH_PORT), "-i", str(self.identity_file),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.root / 'known_hosts'}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                "-o", "LogLevel=ERROR", f"{TEST_USER}@{self.address}", "--",
                shlex.join(command)]

    def logged_in(self) -> bool:
        try:
            return subprocess.run(self.ssh_argv(["true"]), capture_output=True, timeout=15,
                                  check=False, stdin=subprocess.DEVNULL).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    # -- taking it down and back ----------------------------------------------------

    def start_sshd(self) -> None:
        """Start (again) this host's sshd; return once a key login works."""
        if self.sshd is not None and self.sshd.poll() is None:
            return
        sshd = require("sshd")["sshd"]
        home = self.root / "home"
        log_file = self.root / "sshd.log"
        # The sessions' home: a bind mount over the test user's, private to the mount
        # namespace `ip netns exec` gives this sshd (it makes / a slave, so nothing leaks).
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        with log_file.open("ab") as out:
            self.sshd = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "sh", "-c", script, "sh", str(home),
                 _home_of_test_user(), sshd, "-D", "-e", "-f", str(self.root / "sshd_config")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        _wait(f"sshd of {self.name} ({self.address})", self.logged_in, 30,
              lambda: self.sshd is not None and self.sshd.poll() is not None, log_file)

    def stop_sshd(self) -> None:
        """Stop this host's sshd (new SSH connections are refused; its engine runs on)."""
        if self.sshd is not None:
            stop_child(self.sshd, f"sshd of {self.name}", grace=10)

    def link_down(self) -> None:
        """Take the host's link down: nothing reaches its address any more."""
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.veth, "up")


@dataclass
class Fleet:
    """The hosts, the bridge they hang off, and how long setup took."""

    hosts: list[FleetHost]
    bridge: str
    subnet: str  # "10.77.x": hosts are .11, .12, …; the bridge is .1
    identity_file: Path
    image: str
    setup_seconds: float = 0.0

    def __getitem__(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)


def _home_of_test_user() -> str:
    import pwd

    return pwd.getpwnam(TEST_USER).pw_dir


def _wait(what: str, ok: Callable[[], bool], timeout: float, died: Callable[[], bool],
          log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if died():
            pytest.fail(f"{what} exited:\n{tail(log_file)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready within {timeout:.0f}s:\n{tail(log_file)}",
                        pytrace=False)
        time.sleep(0.2)


def _start_dockerd(h: FleetHost, tag: str) -> None:
    dockerd = require("dockerd")["dockerd"]
    argv = [
        # nsenter, not `ip netns exec`: that remounts /sys for the namespace, and the
        # cgroup v1 hierarchies under /sys/fs/cgroup that dockerd needs would be gone.
        "nsenter", f"--net=/run/netns/{h.netns}", "--", dockerd,
        "--host", h.docker_host, "--group", DOCKER_GROUP,
        "--data-root", str(h.root / "data"), "--exec-root", str(h.root / "exec"),
        "--pidfile", str(h.root / "docker.pid"),
        # Its own namespace: docker0 and the compose networks are the namespace's alone.
        # No iptables rules (as .ci/run): published ports go through docker-proxy, which
        # listens on the namespace's address.
        "--iptables=false", "--ip-masq=false", "--ip-forward=false",
        "--containerd-namespace", f"sbxfleet-{tag}-{h.name}",
        "--containerd-plugins-namespace", f"sbxfleet-{tag}-{h.name}-plugins",
        "--shutdown-timeout", "5",
    ]
    log_file = h.root / "dockerd.log"
    with log_file.open("wb") as out:
        h.dockerd = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)


def _stop_dockerd(h: FleetHost) -> None:
    if h.dockerd is None:
        return
    containerd = None
    with contextlib.suppress(OSError, ValueError):
        containerd = int((h.root / "exec/containerd/containerd.pid").read_text())
    stop_child(h.dockerd, f"dockerd of {h.name}")
    if containerd is not None and alive(containerd):  # orphaned after a SIGKILL of dockerd
        stop_pid(containerd, f"containerd of {h.name}", grace=10)


def _stop_leftovers(netns: str) -> None:
    """Whatever still runs in our namespace (a shim, a proxy) was started by us: by pid."""
    found = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in found:
        with contextlib.suppress(ValueError):
            stop_pid(int(pid), f"leftover process in {netns}", grace=5)


def _network(h: FleetHost, bridge: str, peer: str) -> None:
    _ip("netns", "add", h.netns)
    _ip("link", "add", h.veth, "type", "veth", "peer", "name", peer)
    _ip("link", "set", h.veth, "master", bridge)
    _ip("link", "set", h.veth, "up")
    _ip("link", "set", peer, "netns", h.netns)
    ns = ("-n", h.netns)
    _ip(*ns, "link", "set", peer, "name", "eth0")
    _ip(*ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
    _ip(*ns, "link", "set", "eth0", "up")
    _ip(*ns, "link", "set", "lo", "up")
    _ip(*ns, "route", "add", "default", "via", h.address.rsplit(".", 1)[0] + ".1")


def _load_image(h: FleetHost) -> str:
    """sandboxer/base:<VERSION> into this host's engine from the recipe (cached rootfs)."""
    done = subprocess.run(["bash", str(IMAGE_RECIPE / "build.sh"), "--docker-host",
                           h.docker_host], capture_output=True, text=True, timeout=900,
                          check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"images/sandbox-base/build.sh into {h.name} failed "
                    f"({done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def _prepare_host(h: FleetHost, tag: str, identity: Path) -> None:
    """Files, dockerd (waited for), the image, then sshd (waited for)."""
    import os
    import pwd

    user = pwd.getpwnam(TEST_USER)
    make_keys(h.root, require("ssh-keygen")["ssh-keygen"])
    # One client identity for the whole fleet; each host keeps its own host key.
    (h.root / "authorized_keys").write_text(identity.with_suffix(".pub").read_text())
    (h.root / "id_ed25519").unlink()
    (h.root / "id_ed25519.pub").unlink()
    home = h.root / "home"
    home.mkdir(mode=0o750)
    os.chown(home, user.pw_uid, user.pw_gid)
    (h.root / "sshd_config").write_text(
        sshd_config(h.root, SSH_PORT, h.docker_host, listen=h.address))
    (h.root / "known_hosts").write_text(h.known_hosts + "\n")
    _start_dockerd(h, tag)
    _wait(f"dockerd of {h.name}", h.answers, 60,
          lambda: h.dockerd is not None and h.dockerd.poll() is not None,
          h.root / "dockerd.log")
    h.image = _load_image(h)
    h.start_sshd()


@contextlib.contextmanager
def fleet(count: int = 3) -> Iterator[Fleet]:
    """``count`` docker hosts h1..hN, ready (engine, image, sshd with a key login)."""
    require("ip", "nsenter", "dockerd", "docker", "sshd", "ssh", "ssh-keygen", "useradd",
            "usermod")
    require_root("a fleet of docker hosts in network namespaces")
    started = time.monotonic()
    docker_group()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    tag = secrets.token_hex(2)
    bridge = f"sbxf{tag}"  # interface names stay under 16 bytes
    base = Path(tempfile.mkdtemp(prefix=f"sbxf{tag}-", dir="/var/tmp"))
    base.chmod(0o755)  # the test user reaches the sockets and keys through it
    hosts: list[FleetHost] = []
    bridge_made = False
    try:
        ensure_test_user()
        _, identity = make_keys(base, require("ssh-keygen")["ssh-keygen"])
        subnet = _free_subnet()
        _ip("link", "add", bridge, "type", "bridge")
        bridge_made = True
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(1, count + 1):
            root = base / f"h{i}"
            root.mkdir(mode=0o755)
            h = FleetHost(name=f"h{i}", address=f"{subnet}.{10 + i}",
                          netns=f"sbxf{tag}-h{i}", veth=f"sbxf{tag}h{i}", root=root,
                          identity_file=identity)
            hosts.append(h)
            _network(h, bridge, f"sbxf{tag}p{i}")
        with ThreadPoolExecutor(max_workers=count) as pool:
            for f in [pool.submit(_prepare_host, h, tag, identity) for h in hosts]:
                f.result()
        found = Fleet(hosts=hosts, bridge=bridge, subnet=subnet, identity_file=identity,
                      image=hosts[0].image, setup_seconds=time.monotonic() - started)
        log.info("fleet of %d docker hosts ready in %.1fs", count, found.setup_seconds)
        yield found
    finally:
        _teardown(hosts, bridge if bridge_made else None, base)


def _teardown(hosts: list[FleetHost], bridge: str | None, base: Path) -> None:
    started = time.monotonic()
    for h in hosts:
        with contextlib.suppress(Exception):
            h.stop_sshd()
    # In parallel, each host's steps on their own: one failure must not leave the rest.
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        list(pool.map(_teardown_host, hosts))
    if bridge is not None:
        _ip("link", "delete", bridge, check=False)
    unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)
    log.info("fleet of %d docker hosts removed in %.1fs", len(hosts), time.monotonic() - started)


def _teardown_host(h: FleetHost) -> None:
    if h.dockerd is not None and h.dockerd.poll() is None:
        with contextlib.suppress(Exception):  # faster than dockerd stopping them one by one
            left = h.docker("ps", "-a", "-q", timeout=30, check=False).stdout.split()
            if left:
                h.docker("rm", "-f", "-v", *left, timeout=60, check=False)
    with contextlib.suppress(Exception):
        _stop_dockerd(h)
    with contextlib.suppress(Exception):
        _stop_leftovers(h.netns)
    _ip("netns", "delete", h.netns, check=False)  # takes eth0 and so the veth pair
    _ip("link", "delete", h.veth, check=False)  # if the namespace never got its end
    unmount_under(h.root)
    shutil.rmtree(h.root, ignore_errors=True)  # the image layers: in parallel, per host
