"""CopiesFiles of every SSH extension (``extensions/_ssh.py``) against a real OpenSSH sshd
serving OpenSSH's sftp-server: one file in and out, host key pinned, the errors a user
sees for a missing path, a directory, a size cap, and a host key that does not match.

The sshd runs for this module only, on 127.0.0.1, as this user, with a fresh host key and
client key; the sandbox-shaped tests (ext.local, compose) are in their own files."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer.errors import InvalidInput, NotFound, RequestTooLarge, SandboxerError
from sandboxer.extensions._ssh import sftp_get, sftp_put
from sandboxer.models.extension import Endpoint

SID = "sbx-abcdefghij"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Endpoint, Path]]:
    """(endpoint, the login's home) of a private sshd with sftp-server as its subsystem."""
    for tool in ("/usr/sbin/sshd", "ssh-keygen", SFTP_SERVER):
        if shutil.which(tool) is None and not Path(tool).exists():
            pytest.fail(f"{tool} is required (apt-get install openssh-server)", pytrace=False)
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    work = d / "work"
    work.mkdir()
    port = _free_port()
    user = getpass.getuser()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host'}",
        f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        f"AllowUsers {user}", f"Subsystem sftp {SFTP_SERVER} -d {work}", "LogLevel ERROR",
        ""]))
    with (d / "sshd.log").open("wb") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                stderr=log)
    host_key = " ".join((d / "host.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    ep = Endpoint(host="127.0.0.1", port=port, user=user, host_key=host_key,
                  identity_file=str(d / "client"), known_hosts_file=str(d / "known_hosts"))
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
        time.sleep(0.02)
    try:
        yield ep, work
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_one_file_in_and_out_with_the_errors_users_see(
        sshd: tuple[Endpoint, Path], tmp_path: Path) -> None:
    ep, work = sshd
    data = os.urandom(3 * (1 << 20) + 12345)  # several chunks, not a multiple of one
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    # In: relative to the login directory (sftp-server -d), bytes counted.
    assert asyncio.run(sftp_put(ep, SID, src, "copy.bin")) == len(data)
    assert (work / "copy.bin").read_bytes() == data
    # Out: 0600, replaced whole, nothing left beside it.
    out = tmp_path / "out.bin"
    out.write_text("old")
    assert asyncio.run(sftp_get(ep, SID, str(work / "copy.bin"), out)) == len(data)
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin"]
    # The cap: refused before anything is written here.
    with pytest.raises(RequestTooLarge, match="larger than 1000 bytes"):
        asyncio.run(sftp_get(ep, SID, "copy.bin", tmp_path / "capped", max_bytes=1000))
    assert not (tmp_path / "capped").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin"]
    # Paths that are not there, directories, non-regular local files.
    with pytest.raises(NotFound, match=f"'missing' in sandbox {SID}: no such file"):
        asyncio.run(sftp_get(ep, SID, "missing", tmp_path / "x"))
    with pytest.raises(NotFound, match="no such file"):
        asyncio.run(sftp_put(ep, SID, src, "no/such/dir/f"))
    (work / "sub").mkdir()
    with pytest.raises(InvalidInput, match="not a regular file"):
        asyncio.run(sftp_get(ep, SID, "sub", tmp_path / "x"))
    with pytest.raises(InvalidInput, match="it is a directory"):
        asyncio.run(sftp_put(ep, SID, src, "sub"))
    with pytest.raises(InvalidInput, match="not a regular file"):
        asyncio.run(sftp_put(ep, SID, tmp_path, "x"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidInput, match="not a regular file"):  # and it did not block
        asyncio.run(sftp_put(ep, SID, tmp_path / "fifo", "x"))


def test_a_host_key_that_does_not_match_is_refused(
        sshd: tuple[Endpoint, Path], tmp_path: Path) -> None:
    ep, _work = sshd
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    (tmp_path / "known").write_text(f"[127.0.0.1]:{ep.port} {other}\n")
    wrong = ep.model_copy(update={"known_hosts_file": str(tmp_path / "known")})
    src = tmp_path / "f"
    src.write_text("never sent")
    with pytest.raises(SandboxerError, match=f"cannot reach sandbox {SID} over SSH"):
        asyncio.run(sftp_put(wrong, SID, src, "f"))


def _descriptor(ep: Endpoint) -> dict[str, object]:
    return {"sandbox_id": SID, "host": ep.host, "port": ep.port, "user": ep.user,
            "identity_file": ep.identity_file, "tunnel": None, "forward": [1]}


def test_the_cli_scp_and_port_forward_argv_work_with_openssh(
        sshd: tuple[Endpoint, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `sandboxer cp` and `port-forward` run (cli/files.py), against real OpenSSH:
    scp -s both ways (a directory with -r -p, a local name with a colon), and ssh -N -L
    carrying a TCP connection to a listener on the server's loopback."""
    from sandboxer.cli.files import scp_argv
    from sandboxer.cli.reach import ssh_argv
    from sandboxer.openssh import option_args

    ep, work = sshd
    reach = _descriptor(ep)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha")
    os.utime(tree / "sub" / "a.txt", (1_000_000_000, 1_000_000_000))
    run = subprocess.run(scp_argv(reach, ep.known_hosts_file, str(tree), "tree-in", into=True,
                                  recursive=True, preserve=True),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert (work / "tree-in" / "sub" / "a.txt").read_text() == "alpha"
    assert (work / "tree-in" / "sub" / "a.txt").stat().st_mtime == 1_000_000_000
    monkeypatch.chdir(tmp_path)  # a local name with a colon is a path here, not a host
    run = subprocess.run(scp_argv(reach, ep.known_hosts_file, "tree-in/sub/a.txt", "x:y",
                                  into=False),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "x:y").read_text() == "alpha"
    run = subprocess.run(scp_argv(reach, ep.known_hosts_file, "missing", "m", into=False),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert "No such file" in run.stderr

    # A listener on the server's loopback answers through the forward.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        target, local = srv.getsockname()[1], _free_port()
        argv = ssh_argv(reach, ep.known_hosts_file, [], extra=[
            "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{target}",
            *option_args([("ExitOnForwardFailure", "yes")])])
        fwd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", local)) == 0:
                        break
                assert fwd.poll() is None, fwd.stderr.read() if fwd.stderr else ""
                assert time.monotonic() < deadline, "the forward never listened"
                time.sleep(0.05)
            with socket.create_connection(("127.0.0.1", local), timeout=10) as c:
                c.sendall(b"ping")
                srv.settimeout(10)
                while True:  # the probes above came through too; take the one that talks
                    conn, _ = srv.accept()
                    with conn:
                        conn.settimeout(10)
                        got = conn.recv(4)
                        if got:
                            conn.sendall(got.upper())
                            break
                assert c.recv(4) == b"PING"
        finally:
            fwd.terminate()
            fwd.communicate(timeout=10)
