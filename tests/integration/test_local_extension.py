"""ext.local against the real bwrap, the real endpoint daemon and the system ``ssh``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.integration.conftest import private_local, provision_local

from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed
from sandboxer.extensions import _keys
from sandboxer.extensions._ssh import ssh_argv, ssh_run
from sandboxer.extensions.base import Endpoint, Handle, ProvisionRequest, key_paths
from sandboxer.extensions.local import LocalExtension, control
from sandboxer.extensions.local.extension import _proc_uids
from sandboxer.extensions.local.spec import LocalSpec
from sandboxer.models.profile import Profile

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="openssh-client is not installed"),
]


def wait_for(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    with private_local() as s:
        yield s


@pytest.fixture(scope="module")
def ext(settings: Settings) -> LocalExtension:
    return LocalExtension(settings)


_counter = iter(range(1, 1000))


def create(ext: LocalExtension, spec: LocalSpec | None = None) -> tuple[Handle, Endpoint]:
    sid = f"sbx-t{os.getpid()}-{next(_counter)}"
    h, ep = provision_local(ext, sid, spec=spec, env={"GREETING": "hello"})
    return h, ep


@pytest.fixture(scope="module")
def box(ext: LocalExtension) -> Iterator[tuple[Handle, Endpoint]]:
    h, ep = create(ext)
    yield h, ep
    asyncio.run(ext.destroy(h))


def run(ep: Endpoint, cmd: str, timeout: float = 30) -> tuple[int, str]:
    return asyncio.run(ssh_run(ep, cmd, timeout=timeout))


def test_runs_as_unprivileged_user(box: tuple[Handle, Endpoint]) -> None:
    rc, out = run(box[1], "id -u; grep CapEff /proc/self/status; echo $HOME $USER $GREETING")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "1000"
    assert int(lines[1].split()[1], 16) == 0
    assert lines[2] == "/workspace dev hello"


def test_own_pid_namespace(box: tuple[Handle, Endpoint]) -> None:
    rc, out = run(box[1], "ls /proc")
    assert rc == 0, out
    pids = [int(p) for p in out.split() if p.isdigit()]
    assert 0 < len(pids) < 10
    assert os.getpid() not in pids or os.getpid() < 10


def test_loopback_only(box: tuple[Handle, Endpoint]) -> None:
    rc, out = run(box[1], "cat /proc/net/dev")
    assert rc == 0, out
    ifaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert ifaces == ["lo"]


def test_system_is_read_only(box: tuple[Handle, Endpoint]) -> None:
    rc, out = run(box[1], "touch /usr/x")
    assert rc != 0
    assert "Read-only" in out


def test_workspace_persists(box: tuple[Handle, Endpoint]) -> None:
    assert run(box[1], "echo kept > /workspace/f")[0] == 0
    assert run(box[1], "cat /workspace/f") == (0, "kept\n")


def test_exit_status_propagates(box: tuple[Handle, Endpoint]) -> None:
    assert run(box[1], "exit 7")[0] == 7
    rc, out = run(box[1], "seq 1 20000; exit 3")
    assert rc == 3
    assert out.splitlines()[-1] == "20000"


def test_fork_bomb_is_contained(ext: LocalExtension) -> None:
    # The bomb fills the sandbox's pids bound, never the host's; its session's process
    # group ends with its connection (the client gives up here), and the sandbox recovers.
    h, ep = create(ext, LocalSpec.model_validate({"limits": {"processes": 64}}))
    try:
        # exec: the session's shell needs no fork to wait, however full the pids bound is.
        rc, _ = run(ep, "f(){ f|f& }; f; exec sleep 60", timeout=4)
        assert rc == 255
        assert subprocess.run(["true"], check=False).returncode == 0
        wait_for(lambda: run(ep, "echo alive", timeout=5) == (0, "alive\n"),
                 "the sandbox to answer again", timeout=20)
    finally:
        asyncio.run(ext.destroy(h))


def test_pty_session(box: tuple[Handle, Endpoint]) -> None:
    argv = ssh_argv(box[1], "tty; test -t 0 && echo interactive")
    out = subprocess.run([argv[0], "-tt", *argv[1:]], capture_output=True, timeout=30,
                         check=False, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out
    lines = out.stdout.decode().split()
    # The PTY comes from the jail's own devpts (jail.open_pty), so it has a name inside.
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "interactive"


def test_wrong_key_and_user_refused(box: tuple[Handle, Endpoint], tmp_path: Path) -> None:
    private, _ = _keys._keypair("intruder")
    wrong = tmp_path / "wrong"
    wrong.write_bytes(private)
    wrong.chmod(0o600)
    rc, out = run(box[1].model_copy(update={"identity_file": str(wrong)}), "true")
    assert rc == 255
    assert "Permission denied" in out
    rc, out = run(box[1].model_copy(update={"user": "root"}), "true")
    assert rc == 255


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_destroy_removes_everything(ext: LocalExtension) -> None:
    h, ep = create(ext)
    run(ep, "sleep 1000 >/dev/null 2>&1 & echo started")
    uid = h.data["host_uid"]
    asyncio.run(ext.destroy(h))
    assert not port_open(ep.port)
    assert run(ep, "true")[0] == 255
    if os.geteuid() == 0:
        assert uid not in _proc_uids()
    assert not Path(h.data["dir"]).exists()
    assert not any(p.exists() for p in key_paths(ext.settings, h.sandbox_id).values())
    asyncio.run(ext.destroy(h))
    asyncio.run(ext.destroy(Handle(sandbox_id=h.sandbox_id, extension="ext.local")))


def test_destroy_with_minimal_handle(ext: LocalExtension) -> None:
    h, ep = create(ext)
    asyncio.run(ext.destroy(Handle(sandbox_id=h.sandbox_id, extension="ext.local")))
    assert not port_open(ep.port)
    assert not Path(h.data["dir"]).exists()
    assert asyncio.run(ext.inspect(h)).live is False


def test_inspect_and_owned(ext: LocalExtension, box: tuple[Handle, Endpoint]) -> None:
    assert asyncio.run(ext.inspect(box[0])).live is True
    owned = asyncio.run(ext.owned(ext.targets(ext.settings)[0]))
    assert box[0].sandbox_id in {h.sandbox_id for h in owned}


def test_provision_failure_cleans_up(ext: LocalExtension, box: tuple[Handle, Endpoint]) -> None:
    # Reusing an existing id must fail without touching the existing sandbox.
    req = ProvisionRequest(
        sandbox_id=box[0].sandbox_id, profile=Profile(id="profile.t", extension="ext.local"),
        spec=LocalSpec(), target=ext.targets(ext.settings)[0], settings=ext.settings,
        user="dev", labels={}, env={}, expires_at=datetime.now(UTC),
    )
    with pytest.raises(ProvisionFailed, match="already exists"):
        asyncio.run(ext.provision(req, {}))
    assert run(box[1], "echo still") == (0, "still\n")


def test_daemon_restart_keeps_ports(ext: LocalExtension, box: tuple[Handle, Endpoint]) -> None:
    s = ext.settings
    pid = control.daemon_pid(s)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not port_open(box[1].port), "the listener to go away")
    asyncio.run(control.ensure_running(s))
    assert control.daemon_pid(s) not in (None, pid)
    assert port_open(box[1].port)
    assert run(box[1], "cat /workspace/f; echo ok")[1].endswith("ok\n")


def test_daemon_exits_after_last_sandbox(ext: LocalExtension) -> None:
    s = ext.settings
    for h in asyncio.run(ext.owned(ext.targets(s)[0])):
        asyncio.run(ext.destroy(h))
    h, _ = create(ext)
    pid = control.daemon_pid(s)
    assert pid is not None
    asyncio.run(ext.destroy(h))
    wait_for(lambda: control.daemon_pid(s) is None, "the endpoint to exit")
    assert not control.socket_path(s).exists()
