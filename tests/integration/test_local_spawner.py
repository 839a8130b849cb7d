"""A jailed process started by the spawner ends up exactly as one the endpoint forks itself.

A real jail (bwrap, the sandbox's cgroup when the host offers one); the same plan
(holder.Jail.plan) spawned both ways (spawnerclient.spawn_jailed, with and without the
spawner), then read from /proc: credentials, capabilities, no_new_privs, seccomp,
namespaces, cgroup, oom_score_adj, rlimits, fds and environment.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from tests.integration.test_local_extension import (  # noqa: F401 - fixtures
    box,
    create,
    ext,
    run,
    settings,
    wait_for,
)

from sandboxer.extensions.base import Endpoint, Handle
from sandboxer.extensions.local import LocalExtension, cgroups, control, jail, spawnerclient
from sandboxer.extensions.local.holder import Jail
from sandboxer.extensions.local.spawnerclient import DEVNULL, SpawnedChild, spawn_jailed
from sandboxer.extensions.local.spec import LocalSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0,
                       reason="needs bwrap and root"),
]
STATUS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
          "NoNewPrivs", "Seccomp")
NS = ("user", "mnt", "net", "ipc", "uts", "cgroup", "pid_for_children")


def _read(pid: int) -> dict[str, object]:
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in proc.joinpath("status").read_text()
                  .splitlines())
    return {
        "status": {k: status[k].split() for k in STATUS},
        "ns": {n: os.readlink(proc / "ns" / n) for n in NS},
        "cgroup": proc.joinpath("cgroup").read_text(),
        "oom": proc.joinpath("oom_score_adj").read_text().strip(),
        "limits": proc.joinpath("limits").read_text(),
        "fds": sorted(os.listdir(proc / "fd")),
        "environ": sorted(proc.joinpath("environ").read_bytes().split(b"\0")[:-1]),
        "root": os.readlink(proc / "root"),
        "cwd": os.readlink(proc / "cwd"),
    }



def _jail(tmp_path: Path, sid: str) -> Jail:
    """An unstarted jail of ``sid`` over a workspace in ``tmp_path``, as this uid."""
    hierarchy = cgroups.detect()
    ws = tmp_path / sid / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    return Jail(sandbox_id=sid, user="sandbox", workspace=ws, host_uid=os.getuid(),
                spec=LocalSpec(hostname=sid), bwrap=shutil.which("bwrap") or "bwrap",
                root=False, cgroup=hierarchy.sandbox(sid) if hierarchy else None)


async def _stop(j: Jail) -> None:
    """Stop ``j`` and remove its cgroup."""
    await j.stop()
    if j.cgroup is not None:
        j.cgroup.remove()


def _close_spawner() -> None:
    """End this process's spawner client (and so its spawner)."""
    if spawnerclient._client is not None:
        spawnerclient._client.close()
        spawnerclient._client = None

def test_both_ways_in_make_the_same_jailed_process(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    j = _jail(tmp_path, "sbx-spawnertest")
    env = {"PATH": jail.JAIL_PATH, "HOME": jail.JAIL_HOME, "SECRET_Y": "value-y"}

    async def one(via_spawner: bool) -> tuple[str, dict[str, object], dict[str, object]]:
        monkeypatch.setattr(spawnerclient, "enabled", via_spawner)
        plan = j.plan(pty=False)
        try:
            child = await spawn_jailed(["/usr/bin/sleep", "30"], env=env,
                                       stdio=(DEVNULL, DEVNULL, DEVNULL), plan=plan)
        finally:
            jail.close_fds(plan.ns.values())
        try:
            seen = _read(child.pid)
            parent = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1]
                         .split()[1])
        finally:
            child.kill_group()
            await child.wait()
        holder = Path(f"/proc/{j.holder_pid}/ns")
        expect = {"ns": {n: os.readlink(holder / n.replace("pid_for_children", "pid"))
                         for n in NS},
                  "cgroup": Path(f"/proc/{j.holder_pid}/cgroup").read_text()}
        who = "spawner" if isinstance(child, SpawnedChild) else (
            "endpoint" if parent == os.getpid() else f"pid {parent}")
        if who == "spawner":
            assert spawnerclient._client is not None
            assert parent == spawnerclient._client.proc.pid
        return who, seen, expect

    async def main() -> list[tuple[str, dict[str, object], dict[str, object]]]:
        assert await spawnerclient.started() is not None
        await j.start()
        try:
            return [await one(True), await one(False)]
        finally:
            await _stop(j)
            _close_spawner()

    (w1, spawned, expect), (w2, forked, _) = asyncio.run(main())
    assert (w1, w2) == ("spawner", "endpoint")
    assert spawned == forked
    status = spawned["status"]
    assert isinstance(status, dict)
    assert status["CapBnd"] == status["CapEff"] == status["CapPrm"] == ["0000000000000000"]
    assert status["NoNewPrivs"] == ["1"]
    assert status["Seccomp"] == ["2"]
    assert status["Uid"] == [str(os.getuid())] * 4  # JAIL_UID inside maps to it
    assert spawned["ns"] == expect["ns"]
    assert spawned["cgroup"] == expect["cgroup"]
    assert spawned["oom"] == "500"
    assert spawned["fds"] == ["0", "1", "2"]
    assert spawned["environ"] == sorted(f"{k}={v}".encode() for k, v in env.items())
    assert spawned["cwd"] == jail.JAIL_HOME


def _jail_processes(j: Jail) -> dict[str, dict[str, object]]:
    """bwrap, its init and the holder: what the way a jail starts could change."""
    assert j.proc is not None
    init = int(Path(f"/proc/{j.proc.pid}/task/{j.proc.pid}/children").read_text().split()[0])
    out = {}
    for name, pid in (("bwrap", j.proc.pid), ("init", init), ("holder", j.holder_pid)):
        seen = _read(pid)
        del seen["environ"]  # bwrap clears its children's; its own is {"PATH"} either way
        # bwrap's own fds (an eventfd, a pipe) take whatever numbers are free: their kinds.
        fd = Path(f"/proc/{pid}/fd")
        seen["fds"] = sorted(re.sub(r"\[\d+\]", "", os.readlink(fd / n)) for n in seen["fds"])
        out[name] = seen
    # The spawner runs in /, the endpoint wherever it was started; bwrap chdirs inside.
    del out["bwrap"]["cwd"]
    out["bwrap"]["environ"] = sorted(Path(f"/proc/{j.proc.pid}/environ").read_bytes()
                                     .split(b"\0")[:-1])
    return out


_LAUNCHER = Jail._launcher


def test_a_jail_the_spawner_starts_is_the_one_the_launcher_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    async def one(via_spawner: bool) -> tuple[bool, dict[str, dict[str, object]]]:
        monkeypatch.setattr(spawnerclient, "enabled", via_spawner)
        # The spawner starts a jail where setpriv or prlimit is missing.
        monkeypatch.setattr(Jail, "_launcher", lambda self: None if via_spawner
                            else _LAUNCHER(self))
        j = _jail(tmp_path, "sbx-spawnerjail")
        await j.start()
        try:
            return isinstance(j.proc, SpawnedChild), _jail_processes(j)
        finally:
            await _stop(j)

    async def main() -> list[tuple[bool, dict[str, dict[str, object]]]]:
        assert await spawnerclient.started() is not None
        try:
            return [await one(True), await one(False)]
        finally:
            _close_spawner()

    (by_spawner, spawned), (by_launcher, launched) = asyncio.run(main())
    assert (by_spawner, by_launcher) == (True, False)
    for seen in (spawned, launched):  # namespaces are new each start: compared apart
        for part in seen.values():
            ns = part.pop("ns")
            assert isinstance(ns, dict)
        assert seen["holder"]["fds"] == ["/dev/null", "/dev/null", "pipe:"]  # 0, 1, 2
    assert spawned == launched


def _spawners(endpoint: int) -> list[int]:
    kids = Path(f"/proc/{endpoint}/task/{endpoint}/children").read_text().split()
    return [int(p) for p in kids
            if b"sandboxer.extensions.local.spawner" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_sessions_go_on_after_the_spawner_is_killed(
        ext: LocalExtension, box: tuple[Handle, Endpoint]) -> None:  # noqa: F811
    """The jail dies with the spawner (bwrap --die-with-parent), as with the endpoint:
    the next session starts it again, and a new spawner."""
    endpoint = control.daemon_pid(ext.settings)
    assert endpoint is not None
    assert run(box[1], "echo ok") == (0, "ok\n")
    first = _spawners(endpoint)
    assert len(first) == 1
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: run(box[1], "echo again") == (0, "again\n"), "a session to work again")
    wait_for(lambda: len(_spawners(endpoint)) == 1 and _spawners(endpoint) != first,
             "a new spawner")
    assert control.daemon_pid(ext.settings) == endpoint


def _in_pid_ns(ns: str) -> list[tuple[int, str]]:
    """Every process whose pid namespace is ``ns``, with its command line."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
                out.append((int(entry.name), cmd.decode(errors="replace").strip()))
        except OSError:
            continue
    return out


def test_a_killed_spawner_leaves_no_process_of_its_sessions_in_a_jail_that_lives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A jail the endpoint started itself (the spawner was booting: the first jail of
    every endpoint) outlives a killed spawner; a session the spawner forked into it dies
    by its PDEATHSIG, and so must what it started in its process group (a pipeline, a
    background job): the client saw the session end (137), nothing of it runs on."""
    j = _jail(tmp_path, "sbx-spawnerorphans")
    env = {"PATH": jail.JAIL_PATH, "HOME": jail.JAIL_HOME}

    async def main() -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
        monkeypatch.setattr(spawnerclient, "enabled", False)
        await j.start()  # by this process: it outlives the spawner
        monkeypatch.setattr(spawnerclient, "enabled", True)
        try:
            spawner = await spawnerclient.started()
            assert spawner is not None
            plan = j.plan(pty=False)
            try:
                child = await spawn_jailed(
                    ["/bin/sh", "-c", "sleep 101 & sleep 102 | sleep 103"], env=env,
                    stdio=(DEVNULL, DEVNULL, DEVNULL), plan=plan)
            finally:
                jail.close_fds(plan.ns.values())
            assert isinstance(child, SpawnedChild)
            ns = os.readlink(f"/proc/{j.holder_pid}/ns/pid")
            wait_for(lambda: len(_in_pid_ns(ns)) >= 5, "the session's processes")
            before = _in_pid_ns(ns)
            os.kill(spawner.proc.pid, signal.SIGKILL)
            rc = await asyncio.wait_for(child.wait(), 10)
            assert j.alive
            deadline = asyncio.get_running_loop().time() + 5
            while (any("sleep 10" in c for _p, c in _in_pid_ns(ns))
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.05)
            return rc, before, _in_pid_ns(ns)
        finally:
            await _stop(j)
            _close_spawner()

    rc, before, after = asyncio.run(main())
    assert rc == -signal.SIGKILL
    assert [c for _p, c in before if c.startswith("sleep 10")], before
    assert not [c for _p, c in after if "sleep 10" in c], after
