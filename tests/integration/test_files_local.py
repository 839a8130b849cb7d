"""Files in and out of a real ext.local sandbox through every face: the installed CLI's
`sandboxer cp` (OpenSSH scp, sftp protocol, the pinned key), the service's cp (asyncssh
sftp, ``LocalClient.upload/download/cp``), and `sandboxer port-forward` reaching a
listener on the sandbox's own loopback at a port its profile forwards (and refusing
another). One sandbox serves every check."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import Conflict, NotFound

from .conftest import SANDBOXER

pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOXER, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False, cwd=cwd)


def cli_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def in_sandbox(sid: str, command: str) -> str:
    done = cli("ssh", sid, "--json", "--", command)
    assert done.returncode == 0, done.stdout
    return str(json.loads(done.stdout)["stdout"])


LISTENER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
open("/tmp/listening", "w").write("1")
while True:
    c, _ = s.accept()
    c.sendall(b"inside")
    c.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_forward(sid: str, port: int, local: int) -> bytes:
    """Run `sandboxer port-forward SID PORT:LOCAL --json` until 127.0.0.1:LOCAL answers;
    what it answered."""
    proc = subprocess.Popen([SANDBOXER, "port-forward", sid, f"{port}:{local}", "--json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert doc == {"schema": "sandboxer.port-forward/v1", "sandbox_id": sid,
                       "port": port, "local_host": "127.0.0.1", "local_port": local}
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=5) as c:
                    got = c.recv(6)
                    if got:
                        return got
            except OSError:
                pass
            assert time.monotonic() < deadline, "the forward never answered"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_cp_and_port_forward_through_the_cli_and_the_service(local_home: Settings,
                                                             tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "profiles" / "fwd.yaml").write_text(
        f"id: profile.fwd\nextends: profile.local\nreachability: {{forward: [{port}]}}\n")
    sid = cli_json("create", "profile.fwd", "--ttl", "10m", "-q")["id"]
    data = os.urandom(2 * (1 << 20) + 7)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha\n")

    # The CLI: scp into the login directory, a tree with -r, then back out.
    done = cli("cp", str(src), f"{sid}:in.bin")
    assert done.returncode == 0, done.stderr
    assert in_sandbox(sid, "sha256sum in.bin").split()[0] == hashlib.sha256(data).hexdigest()
    owner = in_sandbox(sid, "stat -c %u in.bin").strip()
    assert owner == in_sandbox(sid, "id -u").strip()  # the jail's uid, not ours
    done = cli("cp", "-r", "-p", str(tree), f"{sid}:tree")
    assert done.returncode == 0, done.stderr
    assert in_sandbox(sid, "cat tree/sub/a.txt") == "alpha\n"
    done = cli("cp", f"{sid}:tree/sub/a.txt", "out.txt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == "alpha\n"
    done = cli("cp", f"{sid}:missing", str(tmp_path / "m"), "--json")
    result = json.loads(done.stdout)
    assert done.returncode == result["exit_status"] != 0
    assert "No such file" in result["stderr"]
    assert not (tmp_path / "m").exists()

    # The service's cp (what the SDK, the API and MCP use): no key needed by the caller.
    client = LocalClient(local_home)
    assert client.upload(sid, src, "svc.bin") == len(data)
    out = tmp_path / "svc.out"
    assert client.cp(f"{sid}:svc.bin", str(out)) == len(data)
    assert out.read_bytes() == data
    assert client.download(sid, "/workspace/in.bin", tmp_path / "abs") == len(data)
    with pytest.raises(NotFound, match="no such file"):
        client.download(sid, "nope", tmp_path / "nope")

    # Ports: the one the profile forwards reaches the sandbox's own listener; another is
    # refused before ssh runs.
    script = shlex.quote(LISTENER)
    in_sandbox(sid, f"setsid python3 -c {script} {port} </dev/null >/dev/null 2>&1 & "
                    "for i in $(seq 200); do [ -s /tmp/listening ] && exit 0; sleep 0.05; "
                    "done; exit 1")
    assert port_forward(sid, port, free_port()) == b"inside"
    other = port + 1 if port < 65535 else port - 1
    done = cli("port-forward", sid, str(other))
    assert done.returncode == 4, done.stderr
    assert f"lists {port}" in done.stderr

    # Not ready: refused with the way back, by every face.
    assert cli("stop", sid).returncode == 0
    done = cli("cp", str(src), f"{sid}:again")
    assert (done.returncode, "is stopped" in done.stderr) == (8, True)
    with pytest.raises(Conflict, match="is stopped"):
        client.upload(sid, src, "again")
