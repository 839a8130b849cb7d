"""ext.local's sftp subsystem and forwarded ports, through OpenSSH's own clients.

One real sandbox (bwrap, the endpoint, the pinned key) serves every check: ``sftp``,
``scp`` (sftp protocol), ``rsync`` over ssh, each file landing as the jail's uid in
/workspace; the sftp server confined like any session (its uid, its jail's namespaces,
cgroup and seccomp filter); ``ssh -L`` reaching a listener on the sandbox's own loopback at
a forwarded port, and refused for another port, another host, the host's own listener at
the same port and another sandbox's.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tests.integration.conftest import private_local, provision_local

from sandboxer import openssh
from sandboxer.config import Settings
from sandboxer.extensions._ssh import ssh_argv, ssh_run
from sandboxer.extensions.base import Endpoint, Handle
from sandboxer.extensions.local import LocalExtension, control
from sandboxer.extensions.local.spec import LocalSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(shutil.which("sftp") is None, reason="openssh-client is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = free_port()  # forwarded; the host listens on it too (test_forward_...)


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    with private_local() as s:
        yield s


def create(ext: LocalExtension, name: str,
           forward: tuple[int, ...] = ()) -> tuple[Handle, Endpoint]:
    h, ep = provision_local(ext, f"sbx-f{os.getpid()}-{name}", forward=forward)
    return h, ep


@pytest.fixture(scope="module")
def box(settings: Settings) -> tuple[Handle, Endpoint]:
    return create(LocalExtension(settings), "a", forward=(PORT,))


def run(ep: Endpoint, cmd: str, timeout: float = 30) -> tuple[int, str]:
    return asyncio.run(ssh_run(ep, cmd, timeout=timeout))


def pinned(ep: Endpoint) -> list[str]:
    """The endpoint's pinned options without ssh's ``-p`` (scp and sftp spell it -P)."""
    args = openssh.endpoint_args(ep)
    assert args[-2] == "-p"
    return args[:-2]


def dest(ep: Endpoint) -> str:
    return openssh.destination(ep.user, ep.host)


def test_sftp_scp_and_rsync_copy_files_as_the_jail_user(box: tuple[Handle, Endpoint],
                                                         tmp_path: Path) -> None:
    h, ep = box
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(300_000))
    # sftp: a batch of put, mkdir, get.
    batch = tmp_path / "batch"
    back = tmp_path / "back.bin"
    batch.write_text(f"put {src} sftp.bin\nmkdir d\nget sftp.bin {back}\n")
    done = subprocess.run(["sftp", *pinned(ep), "-P", str(ep.port), "-b", str(batch), "--",
                           dest(ep)], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == src.read_bytes()
    # scp: OpenSSH's default is the sftp protocol; -p keeps the mode.
    src.chmod(0o640)
    done = subprocess.run(["scp", *pinned(ep), "-P", str(ep.port), "-p", "--", str(src),
                           f"{dest(ep)}:d/scp.bin"], capture_output=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out.bin"
    done = subprocess.run(["scp", *pinned(ep), "-P", str(ep.port), "--",
                           f"{dest(ep)}:d/scp.bin", str(out)], capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == src.read_bytes()
    # rsync over the same pinned ssh (rsync runs as an ordinary command in the jail).
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f.txt").write_text("synced\n")
    rsh = shlex.join(["ssh", *openssh.endpoint_args(ep)])
    done = subprocess.run(["rsync", "-a", "-e", rsh, "--", f"{tree}/", f"{dest(ep)}:r/"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rc, listing = run(ep, "stat -c '%u %a %n' sftp.bin d/scp.bin r/sub/f.txt; cat r/sub/f.txt")
    assert rc == 0, listing
    lines = listing.splitlines()
    assert lines[:3] == ["1000 644 sftp.bin", "1000 640 d/scp.bin", "1000 644 r/sub/f.txt"]
    assert lines[3] == "synced"
    # On the host the files belong to the sandbox's own host uid, inside its workspace.
    ws = Path(h.data["workspace"])
    assert (ws / "sftp.bin").stat().st_uid == h.data["host_uid"]


def test_sftp_server_is_confined_like_a_session(box: tuple[Handle, Endpoint],
                                                tmp_path: Path) -> None:
    """While an sftp session is open, its sftp-server process runs as the jail's uid,
    in the jail's namespaces and cgroup, under the seccomp filter, no capability."""
    h, ep = box
    proc = subprocess.Popen(["sftp", *pinned(ep), "-P", str(ep.port), "-b", "-", "--",
                             dest(ep)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"pwd\n")
        proc.stdin.flush()
        assert b"/workspace" in proc.stdout.readline() + proc.stdout.readline()
        rc, out = run(ep, "for p in /proc/[0-9]*; do "
                          "[ \"$(cat $p/comm)\" = sftp-server ] && cat $p/status; done; true")
        assert rc == 0, out
        status = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        assert status["Uid"].split()[:2] == ["1000", "1000"]
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapBnd"], 16) == 0
        assert status["Seccomp"].strip() == "2"
        assert status["NoNewPrivs"].strip() == "1"
        host_pids = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                     and _comm(p) == "sftp-server" and _ns(p, "net") == _jail_ns(h, "net")]
        assert len(host_pids) == 1, "its sftp-server is in the jail's network namespace"
        pid = host_pids[0]
        for ns in ("mnt", "pid", "ipc", "uts", "user"):
            assert _ns(pid, ns) == _jail_ns(h, ns), ns
        assert (pid / "status").read_text().count(f"Uid:\t{h.data['host_uid']}") == 1
        cgroup = (pid / "cgroup").read_text()
        assert cgroup == (_holder(h) / "cgroup").read_text()
        assert h.sandbox_id in cgroup, cgroup
    finally:
        proc.communicate(b"bye\n", timeout=10)


def _comm(p: Path) -> str:
    try:
        return (p / "comm").read_text().strip()
    except OSError:
        return ""


def _ns(p: Path, name: str) -> str:
    try:
        return os.readlink(p / "ns" / name)
    except OSError:
        return ""


def _holder(h: Handle) -> Path:
    """The sandbox's jail holder process (found by its workspace's host uid)."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and _comm(p) == "sandboxer-jail" and \
                f"Uid:\t{h.data['host_uid']}" in (p / "status").read_text():
            return p
    raise AssertionError(f"no jail holder of {h.sandbox_id}")


def _jail_ns(h: Handle, name: str) -> str:
    return _ns(_holder(h), name)


def test_other_subsystems_are_refused(box: tuple[Handle, Endpoint]) -> None:
    _, ep = box
    argv = ssh_argv(ep)
    done = subprocess.run([*argv[:-2], "-s", *argv[-2:], "netconf"], capture_output=True,
                          timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert b"subsystem request failed" in done.stderr


# -- forwarded ports ---------------------------------------------------------------------

LISTENER = (
    "import os, socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "open('/tmp/listening', 'w').write(str(os.getpid()))\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(sys.argv[2].encode())\n"
    "    c.settimeout(10)\n"
    "    try:\n"
    "        c.recv(1)\n"  # held until the client is done
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)


def listen_inside(ep: Endpoint, port: int, answer: str) -> None:
    """A listener on the sandbox's own 127.0.0.1:port that answers ``answer``."""
    rc, out = run(ep, f"rm -f /tmp/listening; setsid python3 -c {shlex.quote(LISTENER)} "
                      f"{port} {answer} </dev/null >/dev/null 2>&1 & "
                      "for i in $(seq 200); do [ -s /tmp/listening ] && exit 0; sleep 0.05; "
                      "done; exit 1")
    assert rc == 0, out


class HostListener:
    """A listener on the host's own 127.0.0.1 at the forwarded port: never reached."""

    def __init__(self, port: int) -> None:
        import threading

        self.accepted = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.sendall(b"host")
            c.close()

    def close(self) -> None:
        self.sock.close()


async def through(ep: Endpoint, host: str, port: int,
                  during: Callable[[], Awaitable[None]] | None = None) -> bytes:
    """What a direct-tcpip channel to ``host:port`` reads first (asyncssh's client, the
    endpoint's pinned host key); ``during``: awaited while the channel is open."""
    import asyncssh

    async with asyncssh.connect(ep.host, port=ep.port, username=ep.user,
                                client_keys=[ep.identity_file],
                                known_hosts=ep.known_hosts_file) as conn:
        reader, writer = await conn.open_connection(host, port)
        try:
            data = await asyncio.wait_for(reader.read(64), 10)
            if during is not None:
                await during()
            return data
        finally:
            writer.close()


def refused(ep: Endpoint, host: str, port: int) -> str:
    import asyncssh

    with pytest.raises(asyncssh.ChannelOpenError) as e:
        asyncio.run(through(ep, host, port))
    return str(e.value.reason)


def test_forward_reaches_only_the_sandbox_own_loopback(settings: Settings,
                                                       box: tuple[Handle, Endpoint]) -> None:

    h, ep = box
    host = HostListener(PORT)
    other_h, other = create(LocalExtension(settings), "b")  # no forward ports
    try:
        listen_inside(ep, PORT, "inside-a")
        listen_inside(other, PORT, "inside-b")
        assert asyncio.run(through(ep, "127.0.0.1", PORT)) == b"inside-a"
        assert asyncio.run(through(ep, "localhost", PORT)) == b"inside-a"
        # An open forwarded connection counts as a session (idle handling sees it).
        local_ext = LocalExtension(settings)

        async def counted() -> None:
            assert (await local_ext.activity(h)).sessions == 1

        assert asyncio.run(through(ep, "127.0.0.1", PORT, counted)) == b"inside-a"
        _wait_for_no_session(local_ext, h)
        # OpenSSH's ssh -L, as `sandboxer port-forward` runs it.
        local = free_port()
        tunnel = subprocess.Popen(
            [*ssh_argv(ep)[:-2], "-N", "-o", "ExitOnForwardFailure=yes",
             "-L", f"127.0.0.1:{local}:127.0.0.1:{PORT}", *ssh_argv(ep)[-2:]],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert _read_when_open(local, tunnel) == b"inside-a"
        finally:
            tunnel.terminate()
            tunnel.communicate(timeout=10)
        # Not listed, not loopback, or the other sandbox's SSH port on the host: refused
        # before anything is connected.
        assert "is not forwarded" in refused(ep, "127.0.0.1", PORT + 1 if PORT < 65535 else 1)
        assert "is not forwarded" in refused(ep, "127.0.0.1", other.port)
        for name in ("127.0.0.2", "0.0.0.0", socket.gethostname(), "sbx-b"):  # noqa: S104
            assert "own loopback" in refused(ep, name, PORT)
        # A sandbox whose profile lists no port forwards nothing.
        assert "forwarding is off" in refused(other, "127.0.0.1", PORT)
        # With its own listener gone, the forwarded port reaches neither the host's
        # listener nor the other sandbox's, both still listening on that port.
        assert run(ep, "kill $(cat /tmp/listening)")[0] == 0
        assert "refused" in _refused_once_gone(ep).lower()
        rc, out = run(other, "python3 -c \"import socket; s=socket.create_connection("
                             f"('127.0.0.1', {PORT})); print(s.recv(9).decode())\"")
        assert (rc, out) == (0, "inside-b\n")
        assert host.accepted == 0
        with socket.create_connection(("127.0.0.1", PORT), timeout=5) as c:
            assert c.recv(9) == b"host"  # it was listening all along
    finally:
        host.close()
        asyncio.run(LocalExtension(settings).destroy(other_h))


def _wait_for_no_session(ext: LocalExtension, h: Handle) -> None:
    import time

    deadline = time.monotonic() + 10
    while asyncio.run(ext.activity(h)).sessions:
        assert time.monotonic() < deadline, "the closed forward still counts"
        time.sleep(0.05)


def _refused_once_gone(ep: Endpoint) -> str:
    """The reason of the first refusal once the sandbox's listener went away."""
    import asyncssh

    for _ in range(50):
        try:
            asyncio.run(through(ep, "127.0.0.1", PORT))
        except asyncssh.ChannelOpenError as e:
            return str(e.reason)
    raise AssertionError("the sandbox's listener did not go away")


def _read_when_open(port: int, tunnel: subprocess.Popen[bytes]) -> bytes:
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert tunnel.poll() is None, tunnel.stderr.read() if tunnel.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                return c.recv(64)
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise AssertionError("ssh -L did not listen")


def test_forward_ports_survive_an_endpoint_restart(settings: Settings,
                                                   box: tuple[Handle, Endpoint]) -> None:
    """The ports live in the record (and the handle): a restarted endpoint keeps them."""
    import signal
    import time

    h, ep = box
    assert h.data["forward"] == [PORT]
    assert control.read_record(settings, h.sandbox_id)["forward"] == [PORT]  # type: ignore[index]
    pid = control.daemon_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while control.daemon_pid(settings) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    ep = asyncio.run(LocalExtension(settings).endpoint(h))  # serves it again
    listen_inside(ep, PORT, "after")
    assert asyncio.run(through(ep, "127.0.0.1", PORT)) == b"after"
    assert "is not forwarded" in refused(ep, "127.0.0.1", PORT + 1 if PORT < 65535 else 1)


def test_forward_with_the_host_network_is_refused(settings: Settings) -> None:
    from sandboxer.errors import InvalidInput

    with pytest.raises(InvalidInput, match="no loopback of its own"):
        provision_local(LocalExtension(settings), f"sbx-f{os.getpid()}-net",
                        spec=LocalSpec(network=True), forward=(PORT,))
    assert not (settings.local_root / f"sbx-f{os.getpid()}-net").exists()
