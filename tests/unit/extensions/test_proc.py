"""A timeout's kill may find the child already gone: that is a timeout, never a crash."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer.extensions import _proc, _ssh
from sandboxer.extensions.base import Endpoint
from sandboxer.extensions.compose_ssh.remote import LocalRunner
from sandboxer.extensions.vm_packer import remote as vm_remote


@pytest.fixture
def racing_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child exits just before the kill: asyncio then raises ProcessLookupError."""
    original = asyncio.subprocess.Process.kill

    def kill(self: asyncio.subprocess.Process) -> None:
        original(self)
        raise ProcessLookupError

    monkeypatch.setattr(asyncio.subprocess.Process, "kill", kill)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (an SSH server that hangs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def _endpoint(tmp_path: Path, port: int) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=port, user="u", host_key="ssh-ed25519 AAAA",
                    identity_file=str(tmp_path / "key"),
                    known_hosts_file=str(tmp_path / "known_hosts"))


@pytest.mark.usefixtures("racing_kill")
def test_the_helper_reports_a_timeout() -> None:
    async def go() -> tuple[bytes, bytes] | None:
        proc = await asyncio.create_subprocess_exec("sleep", "10")
        return await _proc.communicate(proc, None, 0.1)

    assert asyncio.run(go()) is None


@pytest.mark.usefixtures("racing_kill")
def test_compose_runner_times_out_cleanly() -> None:
    done = asyncio.run(LocalRunner("/tmp", {}).run(["sleep", "10"], timeout=0.2))
    assert done.rc == 124


@pytest.mark.usefixtures("racing_kill")
@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_runs_time_out_cleanly(tmp_path: Path, silent_port: int) -> None:
    ep = _endpoint(tmp_path, silent_port)
    assert asyncio.run(_ssh.ssh_run(ep, "true", timeout=0.3))[0] == 255
    assert asyncio.run(vm_remote.run(ep, "true", timeout=0.3))[0] == 255


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_paths_reach_openssh_intact(tmp_path: Path) -> None:
    """ssh -G prints the options as OpenSSH parsed them (after %-expansion)."""
    odd = tmp_path / "my home 100%a \"x\""
    ep = _endpoint(odd, 2222)
    argv = ["ssh", "-G", *_ssh.ssh_options(ep), "u@127.0.0.1"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert f"userknownhostsfile {odd / 'known_hosts'}\n" in out
    key = str(odd / "key").replace("%", "%%").replace('"', '\\"')
    assert f'IdentityFile="{key}"' in argv  # expanded at load time (-G shows it raw)


def test_a_cancelled_wait_leaves_no_child_running() -> None:
    async def main() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        task = asyncio.ensure_future(_proc.communicate(proc, None, 60))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return proc

    proc = asyncio.run(main())
    assert proc.returncode is not None, "the child outlived the cancelled wait"


def _group(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["sleep", "30"]) for _ in range(n)]


def test_kill_all_waits_for_the_exits_themselves() -> None:
    procs = _group(5)
    pids = {p.pid for p in procs}

    def live() -> set[int]:
        # Our children stay zombies until reaped: "live" is what has not exited.
        return {p.pid for p in procs if p.poll() is None}

    assert _proc.kill_all(live, timeout=5) == set()
    assert all(p.returncode == -9 for p in procs)
    assert {p.pid for p in procs} == pids


def test_kill_all_outlasts_a_respawning_set() -> None:
    # A fork bomb's shape: each of the first three passes finds two new processes.
    made: list[subprocess.Popen[bytes]] = []

    def find() -> set[int]:
        if len(made) < 6:
            made.extend(_group(2))
        return {p.pid for p in made if p.poll() is None}

    assert _proc.kill_all(find, timeout=5) == set()
    assert len(made) == 6
    assert all(p.returncode == -9 for p in made)


def test_a_listed_exited_process_ends_in_backoff_not_a_spin() -> None:
    # A zombie (exited, not yet reaped) stays listed, as a killed task may stay a moment in
    # cgroup.procs: its pidfd is readable at once, so kill_all must back off, not spin,
    # and give up at its deadline with what is still listed.
    zombie = subprocess.Popen(["true"])
    while not Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1].startswith("Z"):
        time.sleep(0.005)
    calls = 0

    def find() -> set[int]:
        nonlocal calls
        calls += 1
        return {zombie.pid}

    try:
        assert _proc.kill_all(find, timeout=0.3) == {zombie.pid}
        assert 3 <= calls < 30, calls
    finally:
        zombie.wait()
