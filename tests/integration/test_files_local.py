"""Files in and out of a real ext.local sandbox through every face: the installed CLI's
`sandboxer cp` (OpenSSH scp, sftp protocol, the pinned key), the service's cp (asyncssh
sftp, ``LocalClient.upload/download/cp``), and `sandboxer port-forward` (refusals here; a
forwarded connection once the endpoint forwards). One sandbox serves every check."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
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


def test_cp_both_ways_through_the_cli_and_the_service(local_home: Settings,
                                                      tmp_path: Path) -> None:
    sid = cli_json("create", "profile.local", "--ttl", "10m", "-q")["id"]
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

    # Ports: this profile forwards none.
    done = cli("port-forward", sid, "8080")
    assert done.returncode == 4, done.stderr
    assert "lists no port" in done.stderr

    # Not ready: refused with the way back, by every face.
    assert cli("stop", sid).returncode == 0
    done = cli("cp", str(src), f"{sid}:again")
    assert (done.returncode, "is stopped" in done.stderr) == (8, True)
    with pytest.raises(Conflict, match="is stopped"):
        client.upload(sid, src, "again")
