"""ext.local's lifecycle capabilities on real sandboxes: pause/resume through the freezer
cgroup, stop/start over the same workspace and host key, activity, bind — each called on
the extension of a sandbox created through the manager, over the endpoint's control
socket (the caller is not the endpoint's process)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from tests.canary_support import leaks

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.extensions.base import Handle
from sandboxer.extensions.local import cgroups, control
from sandboxer.extensions.local.extension import LocalExtension
from sandboxer.manager import Manager

from .conftest import port_open, ssh

pytestmark = pytest.mark.integration

WORKSPACE_HASH = ("find /workspace -type f -print0 | sort -z | xargs -0 sha256sum "
                  "| sha256sum")
COUNTER = ("nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c; sleep 0.02; done' "
           ">/dev/null 2>&1 & echo started")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def out(reach: dict[str, Any], command: str) -> str:
    done = ssh(reach, command)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def setup(settings: Settings) -> tuple[dict[str, Any], LocalExtension, Handle]:
    doc = LocalClient(settings).create("profile.local", ttl="10m").document()
    ext = Manager(settings).extension("ext.local")
    assert isinstance(ext, LocalExtension)
    return doc, ext, Handle(sandbox_id=doc["id"], extension="ext.local", target="local")


def sandbox_cgroup(sid: str) -> cgroups.SandboxCgroup:
    hierarchy = cgroups.detect()
    if hierarchy is None:
        pytest.fail("these tests run as root on a host with cgroups (the jail's freezer)")
    return hierarchy.sandbox(sid)


def counter(cg: cgroups.SandboxCgroup) -> int:
    """The counter's last value, read from the host through a jail process's root."""
    value = counter_if_any(cg)
    if value is None:
        raise AssertionError("no jail process shows /tmp/c")
    return value


def counter_if_any(cg: cgroups.SandboxCgroup) -> int | None:
    """As ``counter``; None before its first write (``COUNTER`` answers ``started`` when
    it has started the loop, not when the loop has written)."""
    for pid in sorted(cg.pids()):
        try:
            return int(Path(f"/proc/{pid}/root/tmp/c").read_text())
        except (OSError, ValueError):
            continue
    return None


def test_ten_pause_resume_cycles_lose_nothing(local_home: Settings) -> None:
    doc, ext, h = setup(local_home)
    reach, sid = doc["reachability"], doc["id"]
    assert out(reach, COUNTER) == "started\n"
    cg = sandbox_cgroup(sid)
    assert cg.freezer is not None
    assert cg.freezer.exists()  # the jail is in the freezer hierarchy too
    wait_for(lambda: (counter_if_any(cg) or 0) > 0, "the counter to run")
    for cycle in range(10):
        out(reach, f"head -c 65536 /dev/urandom > /workspace/f{cycle}; sync")
        before = out(reach, WORKSPACE_HASH)
        asyncio.run(ext.pause(h))
        assert cg.frozen()
        frozen_at = counter(cg)
        refused = ssh(reach, "true")
        assert refused.returncode == 255
        assert f"sandbox {sid} is paused; run `sandboxer resume {sid}`" in refused.stderr.decode()
        time.sleep(0.2)  # nothing may advance while frozen (not a wait for a condition)
        assert counter(cg) == frozen_at
        asyncio.run(ext.resume(h))
        assert not cg.frozen()
        assert out(reach, WORKSPACE_HASH) == before, f"cycle {cycle}"
        # The same process, its memory kept: it counts on from where it was frozen.
        wait_for(lambda at=frozen_at: counter(cg) > at, "the counter to go on")
        assert counter(cg) < frozen_at + 1000
    assert out(reach, "ls /workspace/f* | wc -l").strip() == "10"
    asyncio.run(ext.pause(h))
    asyncio.run(ext.pause(h))  # idempotent
    assert control.read_record(local_home, sid)["paused"] is True  # type: ignore[index]
    asyncio.run(ext.resume(h))
    asyncio.run(ext.resume(h))
    assert "paused" not in (control.read_record(local_home, sid) or {})
    asyncio.run(ext.pause(h))  # a paused sandbox is destroyed like any other
    assert LocalClient(local_home).destroy(sid).state == "destroyed"
    assert not cg.pids()
    assert not any(d.exists() for d in cg.unique_dirs)


def test_stop_start_keeps_workspace_host_key_and_binds_again(local_home: Settings) -> None:
    doc, ext, h = setup(local_home)
    reach, sid = doc["reachability"], doc["id"]
    canary = f"cnrystop{secrets.token_hex(12)}"
    out(reach, "echo kept > /workspace/data; " + COUNTER)
    cg = sandbox_cgroup(sid)
    wait_for(lambda: bool(cg.pids()), "the jail's processes")
    ws = control.sandbox_dir(local_home, sid) / "workspace"
    assert os.path.ismount(ws)

    stopped = asyncio.run(ext.stop(h))
    assert stopped.data.get("stopped") is True
    # Every process of the jail ended; its cgroup is gone as a destroy leaves it.
    assert not cg.pids()
    assert not any(d.exists() for d in cg.unique_dirs)
    assert not os.path.ismount(ws)  # unmounted, the image kept
    assert (control.sandbox_dir(local_home, sid) / "workspace.img").exists()
    assert not port_open(reach["port"])
    assert asyncio.run(ext.inspect(h)).live
    asyncio.run(ext.stop(stopped))  # idempotent
    # Only a stopped sandbox: the endpoint is idle and exits; the sandbox survives it.
    wait_for(lambda: control.daemon_pid(local_home) is None, "the idle endpoint to exit")

    started = asyncio.run(ext.start(stopped, {"PLAIN": "plain"},
                                    {"TOKEN": SecretStr(canary)}))
    assert started.data["port"] == reach["port"]  # free: kept
    asyncio.run(ext.wait_ready(started, 30))
    # The first descriptor's known_hosts still pins the key: the same host key.
    assert out(reach, "cat /workspace/data; echo $PLAIN; cat /run/secrets/TOKEN; "
                      'echo; echo "$TOKEN" "[$SANDBOXER_SECRETS_MISSING]"; '
                      "test -e /tmp/c || echo fresh") == (
        f"kept\nplain\n{canary}\n{canary} []\nfresh\n")
    asyncio.run(ext.bind(started, {"PLAIN": "second"}, {}))
    assert out(reach, 'echo "$PLAIN" "[$TOKEN]"') == "second []\n"
    asyncio.run(ext.destroy(started))
    LocalClient(local_home).destroy(sid)
    found = leaks([canary], [local_home.home])
    assert not found, found


def test_start_moves_to_a_new_port_when_the_old_one_is_taken(local_home: Settings) -> None:
    import socket

    doc, ext, h = setup(local_home)
    port = doc["reachability"]["port"]
    stopped = asyncio.run(ext.stop(h))
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = asyncio.run(ext.start(stopped, {}, {}))
        assert started.data["port"] != port
        ep = asyncio.run(ext.endpoint(started))
        assert ep.port == started.data["port"]
        asyncio.run(ext.wait_ready(started, 30))
        known = Path(ep.known_hosts_file).read_text()
        assert f"[127.0.0.1]:{ep.port} " in known  # the same key, pinned for the new port


def test_activity_sees_a_session_and_cpu(local_home: Settings) -> None:
    doc, ext, h = setup(local_home)
    reach = doc["reachability"]
    first = asyncio.run(ext.activity(h))
    assert first.sessions == 0
    import shlex
    import subprocess

    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30"]
    session = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: asyncio.run(ext.activity(h)).sessions == 1, "the session")
        wait_for(lambda: asyncio.run(ext.activity(h)).cpu_seconds > first.cpu_seconds + 0.1,
                 "the session's CPU use", timeout=60)
    finally:
        session.kill()
        session.wait()
    wait_for(lambda: asyncio.run(ext.activity(h)).sessions == 0, "the session to end")
    stopped = asyncio.run(ext.stop(h))
    seen = asyncio.run(ext.activity(stopped))
    assert (seen.sessions, seen.cpu_seconds) == (0, 0.0)
    assert LocalClient(local_home).destroy(h.sandbox_id).state == "destroyed"
    assert not control.sandbox_dir(local_home, h.sandbox_id).exists()


def test_keeper_restart_brings_secrets_back_from_a_file_ref(local_home: Settings,
                                                           tmp_path: Path) -> None:
    import signal

    value = f"cnryrebind{secrets.token_hex(12)}"
    (tmp_path / "token.txt").write_text(value + "\n")
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "rebind.yaml").write_text(
        "id: profile.rebind\nextends: profile.local\nsetup:\n  env: {PLAIN: plain}\n"
        f"  secret_refs: [{{name: TOKEN, ref: 'file:{tmp_path / 'token.txt'}'}}]\n")
    client = LocalClient(local_home)
    doc = client.create("profile.rebind", ttl="10m").document()
    reach, sid = doc["reachability"], doc["id"]
    probe = 'echo "$TOKEN" "$PLAIN" "[$SANDBOXER_SECRETS_MISSING]"; cat /run/secrets/TOKEN; echo'
    assert out(reach, probe) == f"{value} plain []\n{value}\n"
    pid = control.daemon_pid(local_home)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the keeper dies; its jails die with it
    wait_for(lambda: not port_open(reach["port"]), "the listener to go away")
    asyncio.run(control.ensure_running(local_home))  # a new keeper restores the sandbox
    # Core resolved the file: ref again in the keeper and bound it: a new session has it,
    # and so does the jail's /run/secrets (it ran nothing yet: started again with them).
    wait_for(lambda: ssh(reach, probe).stdout.decode() == f"{value} plain []\n{value}\n",
             "the secrets to be bound again")
    events = [e["type"] for e in client.event_documents(sandbox_id=sid)]
    assert "sandbox.restored" in events
    # Paused when the keeper dies: restored, bound again, then frozen again.
    m = Manager(local_home)
    assert asyncio.run(m.pause(sid)).state == "paused"
    pid = control.daemon_pid(local_home)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not port_open(reach["port"]), "the listener to go away")
    asyncio.run(control.ensure_running(local_home))
    cg = sandbox_cgroup(sid)
    wait_for(cg.frozen, "the restored sandbox to be frozen again")
    assert events.count("sandbox.restored") == 1
    wait_for(lambda: [e["type"] for e in client.event_documents(sandbox_id=sid)].count(
        "sandbox.restored") == 2, "the second rebind")
    assert asyncio.run(m.resume(sid)).state == "ready"
    assert out(reach, probe) == f"{value} plain []\n{value}\n"
    found = leaks([value], [local_home.home])
    assert not found, found


def test_through_the_manager_states_and_descriptor(local_home: Settings) -> None:
    doc, _ext, _h = setup(local_home)
    reach, sid = doc["reachability"], doc["id"]
    out(reach, "echo kept > /workspace/data")
    m = Manager(local_home)
    assert asyncio.run(m.pause(sid)).state == "paused"
    assert ssh(reach, "true").returncode == 255
    assert asyncio.run(m.resume(sid)).state == "ready"
    assert asyncio.run(m.stop(sid)).state == "stopped"
    assert not port_open(reach["port"])
    started = asyncio.run(Manager(local_home).start(sid))
    assert started.state == "ready"
    again = LocalClient(local_home).get_document(sid)["reachability"]
    assert again["port"] == reach["port"]
    assert out(reach, "cat /workspace/data") == "kept\n"
    events = [e["type"] for e in LocalClient(local_home).event_documents(sandbox_id=sid)]
    assert events[-4:] == ["sandbox.paused", "sandbox.resumed", "sandbox.stopped",
                           "sandbox.started"]


def test_through_the_cli(local_home: Settings) -> None:
    import json
    import subprocess

    from .conftest import SANDBOXER

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOXER, *args], capture_output=True, text=True,
                              timeout=120, check=False, stdin=subprocess.DEVNULL)

    made = cli("create", "profile.local", "--ttl", "10m", "--json", "-q")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    sid, reach = doc["id"], doc["reachability"]
    out(reach, "echo kept > /workspace/data; " + COUNTER)
    cg = sandbox_cgroup(sid)
    for command, state in (("pause", "paused"), ("resume", "ready"), ("pause", "paused"),
                           ("stop", "stopped")):
        done = cli(command, sid, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == state
        if state == "paused":
            assert cg.frozen()
            assert ssh(reach, "true").returncode == 255
    # stop from paused: the frozen processes ended too
    assert not cg.pids()
    assert not port_open(reach["port"])
    wrong = cli("pause", sid, "--json")
    assert wrong.returncode == 8, wrong.stderr  # conflict: a stopped sandbox
    done = cli("start", sid, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reachability"]["port"] == reach["port"]
    assert out(reach, "cat /workspace/data; test -e /tmp/c || echo fresh") == "kept\nfresh\n"
