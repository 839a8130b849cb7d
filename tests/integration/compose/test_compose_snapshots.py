"""ext.compose-ssh snapshots, forks, sftp and forwarded ports on a real dockerd, compose v2
and the image's sshd, through the SSH target (the docker CLI over one SSH connection), as
core's Manager drives them (create, snapshot, fork, delete_snapshot, pause, stop).

One sandbox A of a profile with a named volume at its home directory, a side service, a
secret (``env:`` ref) and ``reachability.forward: [8080]`` shows: OpenSSH ``ssh -L`` and
``-W`` reach 127.0.0.1/localhost:8080 and nothing else (not a port not listed, not the
side container the sandbox itself reaches, not the docker host); ``sftp`` and ``scp``
work with the pinned key, and so do the manager's put_file/get_file. A fork B of the
running A (which keeps running, its processes alive) has A's files (layer and volume),
its own keys and volume (A's later writes do not reach it), its secret resolved again
and its forwarding; neither the secret nor A's host key is in the snapshot's image
(``docker save``, ``docker image inspect``) nor anywhere in dockerd's data root. Deleting
the snapshot leaves B whole, and B's destroy takes the untagged image with it. Snapshots
of the paused and of the stopped A leave it so; the extension's delete is idempotent and
``owned_snapshots`` finds what is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.canary_support import leaks
from tests.docker_support import free_port, port_open, wait_until
from tests.integration.compose.test_compose_ssh import make_env

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.extensions.base import Endpoint, Handle
from sandboxer.extensions.compose_ssh import snapshots
from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension
from sandboxer.openssh import endpoint_args

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sandboxer.manager import Manager

    from .conftest import DockerDaemon, SshTarget

    Run = Callable[[Awaitable[Any]], Any]

pytestmark = pytest.mark.integration

LISTEN = ("perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => $ARGV[0], "
          "LocalPort => $ARGV[1], Listen => 5, ReuseAddr => 1) or die; "
          "while ($c = $s->accept) { print $c \"fwd-$ARGV[1]\\n\"; close $c }' ")
SIDE = ["perl", "-MIO::Socket::INET", "-e",
        "$$s = IO::Socket::INET->new(LocalPort => 9090, Listen => 5, ReuseAddr => 1) or die; "
        "while ($$c = $$s->accept) { print $$c \"side\\n\"; close $$c }"]
CONNECT = ("perl -MIO::Socket::INET -e '$c = IO::Socket::INET->new(PeerAddr => $ARGV[0], "
           "PeerPort => $ARGV[1]) or die \"no: $!\"; print <$c>' ")
HASH = ("find /tmp/work /home/agent/data -type f -print0 | sort -z "
        "| xargs -0 sha256sum | sha256sum")


def _profile(image: str) -> dict[str, Any]:
    return {
        "id": "profile.snap", "extension": "ext.compose-ssh", "route": "self-hosted-only",
        "reachability": {"user": "agent", "forward": [8080]},
        "setup": {"env": {"PLAIN": "plainvalue"},
                  "secret_refs": [{"name": "TOKEN", "ref": "env:SBX_SNAP_CANARY"}]},
        "spec": {"service": "main", "pull": "never", "compose": {
            "services": {"main": {"image": image, "volumes": ["data:/home/agent"]},
                         "side": {"image": image, "entrypoint": SIDE}},
            "volumes": {"data": {}}}}}


class Box:
    """A sandbox the manager made, reached with OpenSSH and its endpoint's pinned key."""

    def __init__(self, ext: ComposeSSHExtension, handle: Handle, ep: Endpoint) -> None:
        self.ext, self.handle, self.ep = ext, handle, ep

    @classmethod
    def of(cls, manager: Manager, run: Run, sid: str) -> Box:
        ext = manager.extension("ext.compose-ssh")
        assert isinstance(ext, ComposeSSHExtension)
        (handle,) = [h for h in manager.store.live_handles(ext.name) if h.sandbox_id == sid]
        return cls(ext, handle, run(ext.endpoint(handle)))

    def args(self) -> list[str]:
        return [*endpoint_args(self.ep), "-o", "ConnectTimeout=10"]

    def ssh(self, command: str, *extra: str, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *self.args(), *extra, "--",
                               f"{self.ep.user}@{self.ep.host}", command],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)

    def out(self, command: str) -> str:
        done = self.ssh(command)
        assert done.returncode == 0, (command, done.stderr)
        return done.stdout.strip()

    def stdio(self, dest: str) -> subprocess.CompletedProcess[str]:
        """``ssh -W dest``: a direct-tcpip channel, as ``-L`` opens for each connection."""
        # LogLevel INFO (the first value wins): the server's reason for a refusal.
        return subprocess.run(["ssh", "-o", "LogLevel=INFO", *self.args(), "-W", dest, "--",
                               f"{self.ep.user}@{self.ep.host}"], capture_output=True,
                              text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)


def _refused(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode != 0 and "administratively prohibited" in done.stderr


def _forward_once(box: Box, remote: str) -> str:
    """``ssh -N -L LOCAL:remote`` and one connection through it: what it read."""
    local = free_port()
    proc = subprocess.Popen(
        ["ssh", *box.args(), "-N", "-o", "ExitOnForwardFailure=yes",
         "-L", f"127.0.0.1:{local}:{remote}", "--", f"{box.ep.user}@{box.ep.host}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until("ssh -L to listen", lambda: port_open(local) or proc.poll() is not None,
                   timeout=30, interval=0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
            data = b""
            while chunk := s.recv(100):
                data += chunk
        return data.decode()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _sftp_and_scp(box: Box, tmp: Path) -> None:
    src = tmp / "in.txt"
    src.write_text("over sftp\n")
    opts = [a for a in box.args() if a not in ("-p", str(box.ep.port))]
    dest = f"{box.ep.user}@{box.ep.host}"
    batch = f"put {src} /tmp/sftp-in.txt\nget /tmp/sftp-in.txt {tmp / 'back.txt'}\n"
    done = subprocess.run(["sftp", *opts, "-P", str(box.ep.port), "-b", "-", dest],
                          input=batch, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp / "back.txt").read_text() == "over sftp\n"
    done = subprocess.run(["scp", *opts, "-P", str(box.ep.port), str(src),
                           f"{dest}:/tmp/scp-in.txt"], capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert box.out("cat /tmp/scp-in.txt /tmp/sftp-in.txt") == "over sftp\nover sftp"


def _docker_json(docker_daemon: DockerDaemon, *args: str) -> Any:
    return json.loads(docker_daemon.docker(*args).stdout)


def test_snapshot_fork_forward_and_sftp_on_compose(
    ssh_target: SshTarget, docker_daemon: DockerDaemon, tmp_path: Path,
) -> None:
    canary = f"cnrysnap{secrets.token_hex(12)}"
    for ctx in make_env(ssh_target, tmp_path):
        ctx.env["SBX_SNAP_CANARY"] = canary
        (ctx.profiles / "snap.yaml").write_text(json.dumps(_profile(ssh_target.image)))
        manager = LocalClient(Settings.from_env(ctx.env)).manager
        loop = asyncio.new_event_loop()  # one loop, as a long-lived process has
        try:
            _scenario(manager, loop.run_until_complete, canary, ctx, docker_daemon, tmp_path)
        finally:
            loop.close()


def _scenario(manager: Manager, run: Run, canary: str, ctx: Any,
              docker_daemon: DockerDaemon, tmp_path: Path) -> None:
    made = run(manager.create("profile.snap", target="t1"))
    a = Box.of(manager, run, made.id)
    assert a.out('printf "%s|%s" "$TOKEN" "$PLAIN"') == f"{canary}|plainvalue"
    a.out("mkdir -p /tmp/work ~/data && head -c 65536 /dev/urandom > /tmp/work/layer "
          "&& head -c 65536 /dev/urandom > ~/data/blob")
    for port in (8080, 8081):
        a.out(f"setsid nohup {LISTEN} 127.0.0.1 {port} >/dev/null 2>&1 &")
    wait_until("the listeners", lambda: a.ssh(f"{CONNECT} 127.0.0.1 8081").returncode == 0,
               timeout=30, interval=0.2)

    # Forwarding: exactly 8080 of the sandbox's own loopback, as the descriptor says.
    assert made.reachability is not None
    assert made.reachability.forward == [8080]
    assert _forward_once(a, "127.0.0.1:8080") == "fwd-8080\n"
    assert a.stdio("localhost:8080").stdout == "fwd-8080\n"
    assert _refused(a.stdio("127.0.0.1:8081"))  # listening, not listed
    assert a.out(f"{CONNECT} side 9090") == "side"  # the sandbox reaches its side service
    assert _refused(a.stdio("side:9090"))  # ssh does not
    net = _docker_json(docker_daemon, "network", "inspect", f"{made.id}_default")
    gateway = net[0]["IPAM"]["Config"][0]["Gateway"]
    assert _refused(a.stdio(f"{gateway}:{ctx.target.ssh_port}"))  # the docker host
    _sftp_and_scp(a, tmp_path)
    # The service's cp (CopiesFiles: asyncssh sftp on the pinned endpoint), both ways.
    payload = tmp_path / "service.bin"
    payload.write_bytes(os.urandom(300_000))
    assert run(manager.put_file(made.id, payload, "service.bin")) == 300_000
    assert a.out("wc -c < service.bin") == "300000"
    back = tmp_path / "service.back"
    assert run(manager.get_file(made.id, "service.bin", back)) == 300_000
    assert back.read_bytes() == payload.read_bytes()
    a.out("rm service.bin")
    before = a.out(HASH)

    # A fork of the running sandbox: A keeps running, processes and all.
    forked = run(manager.fork(made.id))
    assert a.stdio("127.0.0.1:8080").stdout == "fwd-8080\n"
    assert forked.snapshot is not None
    snap = manager.get_snapshot(forked.snapshot)
    assert (snap.state, snap.target, snap.sandbox_id) == ("ready", "t1", made.id)
    assert (snap.size_bytes or 0) >= 2 * 65536
    assert (snap.content_hash or "").startswith("sha256:")
    b = Box.of(manager, run, forked.id)
    assert b.out(HASH) == before
    assert b.ep.host_key != a.ep.host_key
    assert b.out('printf "%s" "$TOKEN"') == canary  # resolved again, not from the snapshot
    assert _refused(b.stdio("127.0.0.1:8081"))  # its own forwarding drop-in
    a.out("echo later > ~/data/after")
    assert b.ssh("test -e ~/data/after").returncode == 1

    # The snapshot holds neither the secret nor A's host key.
    tag = snapshots.image_tag(snap.id)
    image = _docker_json(docker_daemon, "image", "inspect", tag)[0]
    labels = image["Config"]["Labels"]
    assert labels["sandboxer.snapshot"] == snap.id
    assert (labels["sandboxer.id"], labels["com.docker.compose.project"]) == ("", "")
    assert "PLAIN=" in image["Config"]["Env"]  # provision's environment blanked
    assert canary not in json.dumps(image)
    saved = tmp_path / "saved"
    saved.mkdir()
    with subprocess.Popen(["docker", "save", tag], env=ctx.env,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(saved, filter="data")
    assert any(p.stat().st_size > 1 << 20 for p in saved.rglob("*") if p.is_file())
    found = _in_layers(saved, [canary.encode(), *_key_lines(a)])
    assert not found, found
    data_root = docker_daemon.root or Path(docker_daemon.docker(
        "info", "--format", "{{.DockerRootDir}}").stdout.strip())
    # While the snapshot exists: its layers and its volume copy are under the data root.
    assert not leaks([canary], [ctx.home, ctx.target.home, data_root])

    # Deleting the snapshot leaves B whole; B's destroy then takes the untagged image.
    run(manager.delete_snapshot(snap.id))
    assert manager.get_snapshot(snap.id).state == "deleted"
    assert b.out("cat ~/data/blob | wc -c") == "65536"
    image_id = b.handle.data["snapshot_image"]
    assert image_id == image["Id"]
    run(manager.destroy(forked.id))
    assert docker_daemon.docker("image", "inspect", image_id, check=False).returncode != 0

    # Snapshots of the paused and of the stopped sandbox leave it so.
    main = a.handle.data["container"]
    run(manager.pause(made.id))
    paused = run(manager.snapshot(made.id))
    assert _docker_json(docker_daemon, "inspect", main)[0]["State"]["Paused"] is True
    assert manager.get(made.id).state == "paused"
    run(manager.stop(made.id))
    stopped = run(manager.snapshot(made.id))
    assert _docker_json(docker_daemon, "inspect", main)[0]["State"]["Running"] is False
    assert manager.get(made.id).state == "stopped"

    # The extension's side: what is on the target by its labels; a delete again is fine.
    (t1,) = [t for t in a.ext.targets(a.ext.settings) if t.name == "t1"]
    left = run(a.ext.owned_snapshots(t1))
    assert sorted(x.snapshot_id for x in left) == sorted([paused.id, stopped.id])
    for art in left:
        run(manager.delete_snapshot(art.snapshot_id))
        run(a.ext.delete_snapshot(art))
    assert run(a.ext.owned_snapshots(t1)) == []
    assert not docker_daemon.docker("volume", "ls", "-q", "--filter",
                                    f"label=sandboxer.snapshot={paused.id}").stdout


def _key_lines(box: Box) -> list[bytes]:
    """Lines of the sandbox's host private key's base64 body (long enough to be unique)."""
    from sandboxer.openssh import key_paths

    text = key_paths(box.ext.settings, box.handle.sandbox_id)["host_key"].read_text()
    return [line.encode() for line in text.splitlines() if len(line) >= 40
            and "PRIVATE KEY" not in line]


def _in_layers(root: Path, needles: list[bytes]) -> list[str]:
    """'layer member: needle' for every file of each saved layer holding one."""
    found = []
    for layer in root.rglob("*"):
        if not layer.is_file():
            continue
        if not tarfile.is_tarfile(layer):
            data = layer.read_bytes()
            found += [f"{layer}: {n[:8]!r}" for n in needles if n in data]
            continue
        with tarfile.open(layer) as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m) if m.isfile() else None
                if f is not None:
                    data = f.read()
                    found += [f"{layer}:{m.name}: {n[:8]!r}" for n in needles if n in data]
    return found

