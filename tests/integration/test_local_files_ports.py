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
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.conftest import private_local, provision_local

from sandboxer import openssh
from sandboxer.config import Settings
from sandboxer.extensions._ssh import ssh_argv, ssh_run
from sandboxer.extensions.base import Endpoint, Handle
from sandboxer.extensions.local import LocalExtension

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
