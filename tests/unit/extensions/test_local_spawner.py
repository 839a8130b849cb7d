"""ext.local's spawner (spawner.py, spawnerclient.py): real processes, no jail.

What a jailed child ends up as (uid, capabilities, namespaces, seccomp) is checked with a
real jail in tests/integration/test_local_spawner.py; here: the helper stays small, and
children start, fail, exit and die as Popen's would, with nothing of the endpoint's or
the spawner's leaking into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer.extensions.local import enter, spawnerclient
from sandboxer.extensions.local.spawnerclient import DEVNULL, SpawnedChild, spawn_jailed

SRC = str(Path(spawnerclient.__file__).resolve().parents[3])
ENV = {"PATH": "/usr/bin:/bin"}
NULL = (DEVNULL, DEVNULL, DEVNULL)
# What the spawner must never load: it would grow, and its forks would cost what the
# endpoint's do.
FORBIDDEN = ("asyncio", "asyncssh", "pydantic", "subprocess", "threading", "pyseccomp",
             "yaml", "sandboxer.models", "sandboxer.config", "sandboxer.childenv")
ALLOWED_OWN = {"sandboxer", "sandboxer.extensions", "sandboxer.extensions.local",
               "sandboxer.extensions.local.enter", "sandboxer.extensions.local.spawner"}


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    """Each test gets a spawner of its own (each asyncio.run is a new loop anyway)."""
    yield
    if spawnerclient._client is not None:
        proc = spawnerclient._client.proc
        spawnerclient._client.close()
        spawnerclient._client = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _spawner_pid() -> int:
    assert spawnerclient._client is not None
    return spawnerclient._client.proc.pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def test_the_spawner_imports_the_standard_library_only() -> None:
    code = ("import sys, runpy; import sandboxer.extensions.local.spawner; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": SRC},
                         capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in out if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN
                or m.startswith(FORBIDDEN)]
    assert {m for m in out if m.startswith("sandboxer")} <= ALLOWED_OWN


def test_children_exit_as_popen_reports_them() -> None:
    async def main() -> list[int | None]:
        assert await spawnerclient.started() is not None
        out: list[int | None] = []
        for argv in (["true"], ["sh", "-c", "exit 3"], ["sh", "-c", "kill -TERM $$"]):
            child = await spawn_jailed(argv, env=ENV, stdio=NULL, plan=None)
            assert isinstance(child, SpawnedChild)
            out += [await child.wait(), child.returncode]
        return out

    assert asyncio.run(main()) == [0, 0, 3, 3, -15, -15]


def test_a_killed_session_leader_takes_its_group_along() -> None:
    async def main() -> tuple[int, bool]:
        assert await spawnerclient.started() is not None
        r, w = os.pipe()
        child = await spawn_jailed(["sh", "-c", "sleep 30 & echo $!; wait"], env=ENV,
                                   stdio=(DEVNULL, w, DEVNULL), plan=None)
        os.close(w)
        with os.fdopen(r) as f:
            background = int(await asyncio.to_thread(f.readline))
        assert os.getpgid(background) == child.pid  # it leads its own process group
        child.kill_group()
        rc = await asyncio.wait_for(child.wait(), 10)
        for _ in range(100):
            if not _alive(background):
                break
            await asyncio.sleep(0.02)
        child.kill_group()  # its exit is known: nothing is signalled again
        return rc, _alive(background)

    assert asyncio.run(main()) == (-signal.SIGKILL, False)


def test_an_exec_that_fails_is_an_oserror_with_its_errno() -> None:
    async def main() -> None:
        assert await spawnerclient.started() is not None
        with pytest.raises(FileNotFoundError, match="exec /nonexistent/cmd"):
            await spawn_jailed(["/nonexistent/cmd"], env=ENV, stdio=NULL, plan=None)
        with pytest.raises(FileNotFoundError, match="exec no-such-command"):
            await spawn_jailed(["no-such-command"], env=ENV, stdio=NULL, plan=None)

    asyncio.run(main())


def _plan(procs: str, null: int) -> enter.Plan:
    return enter.Plan(cgroup_join=(procs,), oom_score_adj=500, pty=False, uid=1000,
                      home="/workspace", last_cap=40, rlimits=(), seccomp=b"",
                      ns=dict.fromkeys(enter.NS_NAMES, null))


def test_a_step_that_fails_is_named_in_the_error(tmp_path: Path) -> None:
    async def main() -> None:
        assert await spawnerclient.started() is not None
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            with pytest.raises(FileNotFoundError, match="joining the sandbox's cgroup"):
                await spawn_jailed(["true"], env=ENV, stdio=NULL,
                                   plan=_plan(str(tmp_path / "none" / "cgroup.procs"), null))
        finally:
            os.close(null)
        assert (await (await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)).wait()
                == 0)  # the spawner goes on

    asyncio.run(main())


def test_only_the_stdio_reach_the_child_and_its_env_is_exactly_the_given_one() -> None:
    secret = "s3cr3t-" + os.urandom(4).hex()

    async def main() -> tuple[list[str], bytes, bytes]:
        assert await spawnerclient.started() is not None
        keep = os.open(os.devnull, os.O_RDONLY)  # an fd of the endpoint's: not passed
        try:
            child = await spawn_jailed(["sleep", "30"], env={**ENV, "SECRET_X": secret},
                                       stdio=NULL, plan=None)
            try:
                # The answer comes once the exec closed the child's CLOEXEC pipe, which
                # the kernel does before it lays out the new environment: until then
                # /proc/PID/environ reads empty.
                deadline = time.monotonic() + 5
                environ = b""
                while not environ and time.monotonic() < deadline:
                    environ = Path(f"/proc/{child.pid}/environ").read_bytes()
                    await asyncio.sleep(0.001)
                fds = sorted(os.listdir(f"/proc/{child.pid}/fd"))
                spawner = Path(f"/proc/{_spawner_pid()}/environ").read_bytes()
            finally:
                child.kill_group()
                await child.wait()
            return fds, environ, spawner
        finally:
            os.close(keep)

    fds, environ, spawner = asyncio.run(main())
    assert fds == ["0", "1", "2"]
    assert sorted(environ.split(b"\0")[:-1]) == [b"PATH=/usr/bin:/bin",
                                                 f"SECRET_X={secret}".encode()]
    assert secret.encode() not in spawner


def test_the_spawner_stays_small() -> None:
    async def main() -> int:
        assert await spawnerclient.started() is not None
        for _ in range(20):
            await (await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)).wait()
        status = Path(f"/proc/{_spawner_pid()}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0])

    assert asyncio.run(main()) < 15 * 1024  # KiB


def test_a_closed_socket_ends_the_spawner_and_a_new_one_starts() -> None:
    async def main() -> tuple[int, int]:
        assert await spawnerclient.started() is not None
        await (await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)).wait()
        client = spawnerclient._client
        assert client is not None
        first = client.proc.pid
        client.close()
        assert await asyncio.wait_for(client.reaped, 10) == 0  # it exited at the EOF
        assert await spawnerclient.started() is not None
        await (await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)).wait()
        return first, _spawner_pid()

    first, second = asyncio.run(main())
    assert first != second


def test_a_killed_spawner_is_started_again_and_its_running_children_die_with_it() -> None:
    async def main() -> tuple[int | None, bool, int]:
        assert await spawnerclient.started() is not None
        child = await spawn_jailed(["sleep", "30"], env=ENV, stdio=NULL, plan=None)
        first = _spawner_pid()
        os.kill(first, signal.SIGKILL)
        rc = await asyncio.wait_for(child.wait(), 10)
        assert await spawnerclient.started() is not None
        again = await spawn_jailed(["sh", "-c", "exit 4"], env=ENV, stdio=NULL, plan=None)
        assert isinstance(again, SpawnedChild)
        return rc, _spawner_pid() != first, await again.wait()

    assert asyncio.run(main()) == (-signal.SIGKILL, True, 4)


def test_a_request_the_dead_spawner_left_unanswered_runs_in_process(tmp_path: Path) -> None:
    """The spawner's child blocks in its first step (a FIFO stands for cgroup.procs);
    the spawner is killed: that child dies with it, and the request starts in the
    endpoint's process instead, whose child then reaches the FIFO."""
    fifo = tmp_path / "cgroup.procs"
    os.mkfifo(fifo)

    async def main() -> tuple[list[int], int]:
        assert await spawnerclient.started() is not None
        await (await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)).wait()
        spawner = _spawner_pid()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            task = asyncio.create_task(spawn_jailed(["true"], env=ENV, stdio=NULL,
                                                    plan=_plan(str(fifo), null)))
            deadline = time.monotonic() + 10
            while not (stuck := _children(spawner)) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            os.kill(spawner, signal.SIGKILL)
            # The fallback's child opens the FIFO too, once the spawner was reaped.
            await asyncio.sleep(0.2)
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                with pytest.raises(subprocess.SubprocessError):  # it fails at setns
                    await asyncio.wait_for(task, 10)
                written = os.read(reader, 64)
            finally:
                os.close(reader)
        finally:
            os.close(null)
        return stuck, int(written)

    stuck, fallback_child = asyncio.run(main())
    assert len(stuck) == 1
    assert not _alive(stuck[0])
    assert fallback_child not in stuck


def test_a_booting_spawner_is_not_waited_for() -> None:
    async def main() -> tuple[str, bool]:
        child = await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)
        await child.wait()
        return type(child).__name__, await spawnerclient.started() is not None

    assert asyncio.run(main()) == ("Child", True)


def test_without_the_spawner_children_start_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawnerclient, "enabled", False)

    async def main() -> tuple[str, int]:
        child = await spawn_jailed(["sh", "-c", "exit 5"], env=ENV, stdio=NULL, plan=None)
        return type(child).__name__, await child.wait()

    assert asyncio.run(main()) == ("Child", 5)


def test_a_cancelled_request_leaves_no_child() -> None:
    async def main() -> list[int]:
        assert await spawnerclient.started() is not None
        await (await spawn_jailed(["true"], env=ENV, stdio=NULL, plan=None)).wait()
        task = asyncio.create_task(spawn_jailed(["sleep", "30"], env=ENV, stdio=NULL,
                                                plan=None))
        await asyncio.sleep(0)  # sent, not answered yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while (left := _children(_spawner_pid())) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return left

    assert asyncio.run(main()) == []


def test_a_request_too_big_for_one_message_starts_in_process() -> None:
    async def main() -> tuple[str, int]:
        assert await spawnerclient.started() is not None
        # Over a message's socket buffer (~208 KiB), each under exec's 128 KiB a string.
        big = {**ENV, **{f"BIG{i}": "x" * 100_000 for i in range(4)}}
        child = await spawn_jailed(["true"], env=big, stdio=NULL, plan=None)
        return type(child).__name__, await child.wait()

    assert asyncio.run(main()) == ("Child", 0)


def test_a_request_over_the_spawners_message_size_starts_in_process() -> None:
    """A socket buffer raised past the spawner's MAX_MESSAGE (a host's wmem_default, or
    SO_SNDBUF) lets a request longer than the spawner reads leave: cut short, its id
    unreadable, it was answered with no id and its session waited for ever."""
    async def main() -> tuple[str, int]:
        c = await spawnerclient.started()
        assert c is not None
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        big = {**ENV, **{f"BIG{i}": "x" * 100_000 for i in range(12)}}  # > 1 MiB
        child = await asyncio.wait_for(
            spawn_jailed(["true"], env=big, stdio=NULL, plan=None), 10)
        return type(child).__name__, await child.wait()

    assert asyncio.run(main()) == ("Child", 0)


def test_a_stuck_spawner_is_killed_and_the_request_runs_in_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawner that takes a request and never answers (here: stopped) holds no create
    forever: after SPAWN_TIMEOUT it is killed, the request starts in this process, and
    the next request gets a new spawner."""
    monkeypatch.setattr(spawnerclient, "SPAWN_TIMEOUT", 0.5)

    async def main() -> tuple[int, int, bool, int, bool]:
        assert await spawnerclient.started() is not None
        stuck = _spawner_pid()
        os.kill(stuck, signal.SIGSTOP)
        t = time.monotonic()
        child = await asyncio.wait_for(
            spawn_jailed(["sh", "-c", "exit 3"], env=ENV, stdio=NULL, plan=None), 10)
        waited = time.monotonic() - t
        rc = await child.wait()
        assert await spawnerclient.started() is not None
        again = await spawn_jailed(["sh", "-c", "exit 4"], env=ENV, stdio=NULL, plan=None)
        return (stuck, rc, isinstance(child, SpawnedChild), await again.wait(),
                0.4 < waited < 5)

    stuck, rc, via_spawner, again, timely = asyncio.run(main())
    assert (rc, via_spawner, again, timely) == (3, False, 4, True)
    assert not _alive(stuck)
    assert _spawner_pid() != stuck
