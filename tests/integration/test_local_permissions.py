"""The squatter attack on ext.local's control socket, played for real by ``nobody``.

As root, with a world-writable ``$SANDBOXER_HOME/run``, a process running as uid 65534
binds the endpoint's socket path first and answers like an endpoint would. sand-boxer must
refuse to use it — the permission scan (``sandboxer.perms``) in every command, and the
``SO_PEERCRED`` check of both ends of the socket on its own — and no secret value, indeed
no byte, may reach the squatter.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.canary_support import Cli

from sandboxer.config import Settings
from sandboxer.errors import UnsafePermissions
from sandboxer.extensions.local import control, wire

NOBODY = 65534
# The system interpreter: nobody cannot reach one under /root.
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="playing the attacker as nobody needs root"),
    pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="no /usr/bin/python3"),
]

# Binds the path it is given, then records every byte each client sends (hex, one line per
# connection) and answers like a willing endpoint.
SQUATTER = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777); s.listen(8); s.settimeout(0.2)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    try:
        c, _ = s.accept()
    except TimeoutError:
        continue
    c.settimeout(2)
    data = b""
    try:
        while b"\n" not in data and (chunk := c.recv(65536)):
            data += chunk
    except TimeoutError:
        pass
    print(data.hex(), flush=True)
    try:
        c.sendall(b'{"ok": true, "pid": 1, "port": 2222, "sandboxes": []}\n')
    except OSError:
        pass
    c.close()
"""


class Squatter:
    def __init__(self, path: Path) -> None:
        self.stop = Path(tempfile.mkdtemp(prefix="sbx-squat-")) / "stop"
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", SQUATTER, str(path), str(self.stop)], user=NOBODY,
            group=NOBODY, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd="/")
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n"
        assert path.lstat().st_uid == NOBODY

    def received(self) -> list[bytes]:
        """Everything each client sent, once the squatter has stopped."""
        self.stop.parent.chmod(0o755)
        self.stop.touch()
        out, _ = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0  # it listened the whole time
        shutil.rmtree(self.stop.parent)
        return [bytes.fromhex(line) for line in out.decode().split()]


@pytest.fixture
def open_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A root home nobody can pass through, with the world-writable run/ of the attack."""
    base = Path(tempfile.mkdtemp(prefix="sbx-squat-home-"))
    base.chmod(0o711)
    home = base / "home"
    home.mkdir(mode=0o711)
    (home / "run").mkdir()
    (home / "run").chmod(0o777)
    (base / "profiles").mkdir()
    monkeypatch.setenv("SANDBOXER_HOME", str(home))
    monkeypatch.setenv("HOME", str(base / "user"))
    monkeypatch.setenv("SANDBOXER_PROFILES", str(base / "profiles"))
    yield Settings.from_env()
    shutil.rmtree(base, ignore_errors=True)


def test_create_refuses_a_squatted_socket(
    open_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = f"cnrysquat{secrets.token_hex(12)}"
    monkeypatch.setenv("SBX_SQUAT_CANARY", value)
    (open_home.profile_dirs[-1] / "sec.yaml").write_text(
        "id: profile.sec\nextends: profile.local\nsetup:\n"
        "  secret_refs: [{name: TOKEN, ref: 'env:SBX_SQUAT_CANARY'}]\n")
    sock = control.socket_path(open_home)
    squatter = Squatter(sock)
    try:
        cli = Cli()
        done = cli("create", "profile.sec", "--json")
        assert done.returncode == 1, done.stderr
        doc = json.loads(done.stdout)
        assert doc["code"] == "unsafe_permissions"
        assert f"refuses to use {sock}" in doc["message"]
        assert "uid 65534 (nobody)" in doc["message"]
        # run/ was ours and only too loose: repaired; the squatter's socket is left for the
        # operator to look at, and refused on every later command too.
        assert stat.S_IMODE(open_home.run_dir.stat().st_mode) == 0o700
        assert cli("list").returncode == 1
        doctor = json.loads(cli("doctor", "--json").stdout)
        perm = next(c for c in doctor["checks"] if c["name"] == "home permissions")
        assert not perm["ok"]
        assert str(sock) in perm["detail"]
    finally:
        received = squatter.received()
    assert received == []
    assert value not in "".join(cli.outputs)


def test_clients_check_the_peer_before_sending(open_home: Settings) -> None:
    """Without the scan (it has not run): both clients refuse a server that is not us."""
    sock = control.socket_path(open_home)
    squatter = Squatter(sock)
    try:
        # refused before it connects: the socket is not ours (sandboxer.peer.unsafe)
        with pytest.raises(UnsafePermissions, match="owned by uid 65534"):
            asyncio.run(control.request(open_home, "add", sandbox_id="sbx-x",
                                        secrets={"TOKEN": "cnrypeer"}))
        with pytest.raises(UnsafePermissions, match="owned by uid 65534"):
            asyncio.run(control.ensure_running(open_home))
        with pytest.raises(UnsafePermissions, match=re.escape(str(sock))):
            wire.request_if_running(open_home, "destroy", sandbox_id="sbx-x")
    finally:
        received = squatter.received()
    assert received == []


CLIENT = r"""
import socket, sys
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1])
c.sendall(b'{"op": "list"}\n'); print(c.makefile("rb").readline().decode(), end="")
"""


def test_endpoint_answers_only_its_own_uid(open_home: Settings) -> None:
    from sandboxer.extensions.local.endpoint import Daemon
    from sandboxer.manager import Manager

    path = open_home.home / "ctl.sock"

    async def go() -> tuple[str, dict[str, object]]:
        daemon = Daemon(open_home, Manager(open_home).extension("ext.local").host)
        server = await asyncio.start_unix_server(daemon._control, str(path))
        path.chmod(0o777)
        try:
            proc = await asyncio.create_subprocess_exec(
                SYSTEM_PYTHON, "-c", CLIENT, str(path), user=NOBODY, cwd="/",
                stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b'{"op": "list"}\n')
            mine = json.loads(await reader.readline())
            writer.close()
        finally:
            server.close()
        return out.decode(), mine

    theirs, mine = asyncio.run(go())
    assert json.loads(theirs) == {"ok": False, "error": "refused: not your uid"}
    assert mine == {"ok": True, "sandboxes": []}


def test_squatter_can_be_cleared_and_the_endpoint_serves_again(open_home: Settings) -> None:
    """The fix the error names works: remove the socket, and the next call starts ours."""
    sock = control.socket_path(open_home)
    squatter = Squatter(sock)
    assert squatter.received() == []
    with pytest.raises(UnsafePermissions):
        open_home.ensure()
    sock.unlink()
    open_home.ensure()
    assert asyncio.run(control.ping(open_home)) is False
    asyncio.run(control.ensure_running(open_home))
    assert asyncio.run(control.ping(open_home))
    assert sock.lstat().st_uid == 0
