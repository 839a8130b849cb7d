"""A long-lived ext.vm-packer sandbox on one real TCG VM (boots are minutes here, so one
combined test): a warm pool of one VM, unclaimed without the profile's env and secret, a
create that claims it and binds both; idle handling that a session open keeps away and
that pauses it once idle (``sandboxer.idling``); ``ttl.retain``: the lease's end stops it
and keeps it, ``extend`` + ``start`` bring it back with its work; destroy leaves nothing.
The pool is filled, the watcher and the reaper driven here, in this process.

Snapshots on the same VM (``Manager.snapshot``): one while it runs (synced and paused for
the copy, running after), one while paused (still paused after); neither holds the secret
or the host's private key. After the destroy, a third boot — besides the pool's and the
start's — creates another profile from the first snapshot, with its own binding and
``forward: [8080]``: its work is there, its keys are its own, sftp and scp work,
``ssh -W``/``-L`` reach 127.0.0.1:8080 and nothing else, the snapshot's deletion leaves it
whole; the pooled VM, without ``forward``, refused every forward."""

from __future__ import annotations

import asyncio
import secrets as random
import shlex
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.canary_support import leaks

from sandboxer import idling
from sandboxer.config import Settings
from sandboxer.extensions.base import key_paths
from sandboxer.extensions.vm_packer import qemu, qmp
from sandboxer.models.common import iso, utcnow
from sandboxer.models.requests import CreateRequest
from sandboxer.service.app import Service

from .conftest import HostListener, must, phase, pinned, ssh, ssh_argv, ssh_stdio

if TYPE_CHECKING:
    from tests.integration.vm.conftest import VMCli

    from sandboxer.manager import Manager

pytestmark = [pytest.mark.integration, pytest.mark.vm]

AFTER = timedelta(seconds=15)
RETAIN = timedelta(minutes=10)
PROFILE = """\
id: profile.vm-long
extension: ext.vm-packer
spec:
  packer: {template: base.json}
  vm: {cpus: 1, memory: 384M, accel: auto, boot_timeout: 900}
reachability: {user: agent}
ttl: {default: 30m, max: 2h, retain: 10m}
idle: {after: 15s, action: pause}
pool: {size: 1, max_age: 1h}
setup:
  env: {GREETING: "hello there"}
  secret_refs: [{name: API_TOKEN, ref: "file:TOKEN_FILE"}]
"""
FORK_PROFILE = """\
id: profile.vm-fork
extension: ext.vm-packer
spec:
  packer: {template: base.json}
  vm: {cpus: 1, memory: 384M, accel: auto, boot_timeout: 900}
reachability: {user: agent, forward: [8080]}
ttl: {default: 30m, max: 2h}
setup:
  env: {GREETING: forked}
  secret_refs: [{name: API_TOKEN, ref: "file:TOKEN_FILE"}]
"""
SHOW = 'printf "%s|%s\\n" "$API_TOKEN" "$GREETING"'
UNBOUND = "test -e /run/secrets/API_TOKEN || test -e /run/secrets/.env/GREETING || echo unbound"
LIVE = ["provisioning", "ready", "paused", "stopped", "unreachable", "destroying"]


def _last_event(manager: Manager, sid: str) -> tuple[str, Any]:
    event = manager.store.events(sandbox_id=sid)[-1]
    return event.type, event.payload["reason"]


@pytest.mark.timeout(1800)  # TCG VMs booted three times, stopped cleanly once
def test_a_pooled_vm_is_claimed_paused_when_idle_and_retained_at_its_lease_end(
        vm_cli: VMCli) -> None:
    token = f"cnryvm{random.token_hex(12)}"
    token_file = vm_cli.home.parent / "token"  # a file ref: start resolves it again
    token_file.write_text(token)
    token_file.chmod(0o600)
    pid = vm_cli.profile("vm-long", PROFILE.replace("TOKEN_FILE", str(token_file)))
    fork_token = f"cnryfork{random.token_hex(12)}"  # resolved again for the fork
    fork_file = vm_cli.home.parent / "fork-token"
    fork_file.write_text(fork_token)
    fork_file.chmod(0o600)
    vm_cli.profile("vm-fork", FORK_PROFILE.replace("TOKEN_FILE", str(fork_file)))
    # The keeper a create starts watches for idleness too; it samples once and then waits
    # an hour, so that the rounds of this test's own watcher are the ones that count.
    vm_cli.env["SANDBOXER_IDLE_INTERVAL"] = "3600"
    settings = Settings.from_env(vm_cli.env)
    service = Service(settings, upkeep=False)
    manager = service.manager
    try:
        asyncio.run(_long_lived(vm_cli, service, pid, token, fork_token))
    finally:  # a pooled VM is in no `list`: the fixture's cleanup would not see it
        for doc in manager.store.query_documents(states=LIVE):
            asyncio.run(manager.destroy(doc["id"]))
    assert manager.store.query_documents(states=LIVE) == []
    assert qemu.vm_processes(str(vm_cli.home) + "/") == {}
    found = leaks([token, fork_token], [vm_cli.home])
    assert not found, found


async def _long_lived(vm_cli: VMCli, service: Service, pid: str, token: str,
                      fork_token: str) -> None:
    manager, t0 = service.manager, time.monotonic()
    ext: Any = manager.extension("ext.vm-packer")

    # -- the warm pool: one VM, ready, nobody's, with neither the env nor the secret -----
    assert await service.refill_pools(extension="ext.vm-packer") == 1
    [pooled] = manager.store.query_documents(profile=pid, pooled=True, states=["ready"])
    sid, d = pooled["id"], ext.sandbox_dir(pooled["id"])
    assert pooled["actor"] is None
    known = key_paths(manager.settings, sid)["known_hosts"]
    assert must(ssh(known, pooled["reachability"], f"{SHOW}; {UNBOUND}")) == "|\nunbound\n"
    watcher = idling.Watcher(manager, extension="ext.vm-packer")
    assert await watcher.round() == []
    assert watcher.samples == {}  # an unclaimed pooled VM is not watched
    phase("pool filled", t0)

    # -- the claim: the same VM, its new sessions see the env and the secret -------------
    box = await service.create(CreateRequest(profile=pid, actor="agt"))
    assert (box.id, box.state, box.actor) == (sid, "ready", "agt")
    assert [e.type for e in manager.store.events(sandbox_id=sid)][-2:] == [
        "sandbox.claimed", "sandbox.ready"]
    assert box.reachability is not None
    reach = box.reachability.model_dump(mode="json", by_alias=True)
    assert must(ssh(known, reach, f"{SHOW}; echo kept-work > ~/note.txt; sync")) == \
        f"{token}|hello there\n"
    assert service.store.query_documents(pooled=True, states=LIVE) == []  # not refilled
    [handle] = [h for h in ext.host.live_handles() if h.sandbox_id == sid]
    phase("claimed", t0)

    # -- a snapshot while it runs: the guest synced (no sync of ours) and paused for the
    # copy, running again afterwards; the default endpoint forwards nothing ----------
    must(ssh(known, reach, "echo fork-work > ~/fork.txt"))
    snap = await manager.snapshot(sid, name="work")
    assert (snap.state, snap.sandbox_id, snap.actor, snap.name) == ("ready", sid, "agt",
                                                                    "work")
    assert manager.get(sid).state == "ready"
    assert await qmp.status(d) == "running"
    assert (snap.size_bytes or 0) > 0
    assert (snap.content_hash or "").startswith("sha256:")
    assert "snapshot.created" in [e.type for e in manager.store.events(sandbox_id=sid)]
    refused = ssh_stdio(known, reach, "127.0.0.1:22")
    assert refused.returncode == 255
    assert "administratively prohibited" in refused.stderr, refused.stderr
    phase("snapshot while running", t0)

    # -- idle: a session held open keeps it ready past `after`; once closed, paused ------
    holder = subprocess.Popen(ssh_argv(known, reach, "sleep 600"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (seen := await ext.activity(handle)).sessions < 1:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.5)
        ready_at = manager.store.get_record(sid).updated_at  # type: ignore[union-attr]
        deadline = time.monotonic() + 240
        while True:
            assert await watcher.round() == []
            rec = manager.store.get_record(sid)
            assert rec is not None
            assert rec.status.state == "ready", rec.status.reason
            last = rec.status.last_active_at
            if last is not None and last > ready_at + AFTER + timedelta(seconds=2):
                break
            assert time.monotonic() < deadline, f"the open session was not seen ({last})"
            await asyncio.sleep(0.5)
    finally:
        holder.kill()
        holder.wait()
    phase("kept ready by a session", t0)
    deadline = time.monotonic() + 240
    while await watcher.round() != [sid]:
        rec = manager.store.get_record(sid)
        assert rec is not None
        assert rec.status.state == "ready", rec.status.reason
        assert time.monotonic() < deadline, "idle handling never paused it"
        await asyncio.sleep(0.5)
    paused = manager.get(sid)
    assert paused.state == "paused"
    assert (paused.reason or "").startswith("idle: idle for 15s: no session open, "), \
        paused.reason
    assert _last_event(manager, sid) == ("sandbox.paused", paused.reason)
    assert await qmp.status(d) == "paused"
    paused_snap = await manager.snapshot(sid)
    assert manager.get(sid).state == "paused"  # left as it was
    assert await qmp.status(d) == "paused"
    assert (await manager.resume(sid)).state == "ready"
    assert must(ssh(known, reach, "cat ~/note.txt")) == "kept-work\n"
    phase("paused when idle, resumed", t0)

    # -- ttl.retain: the lease's end stops it and keeps it; extend + start bring it back --
    manager.extend(sid, "1s")
    before = utcnow()
    deadline = time.monotonic() + 300
    while (rec := manager.store.get_record(sid)) is not None and rec.status.state != "stopped":
        await manager.reap()  # (the keeper's reaper may be the one that stops it)
        assert time.monotonic() < deadline, rec.status
        await asyncio.sleep(0.5)
    kept = manager.get(sid)
    assert before + RETAIN - timedelta(seconds=2) <= kept.expires_at <= utcnow() + RETAIN
    assert (kept.reason or "").startswith(
        f"expired: lease ended; kept stopped until {iso(kept.expires_at)} "), kept.reason
    assert _last_event(manager, sid) == ("sandbox.stopped", kept.reason)
    assert ext._pid(sid) is None
    assert qemu.vm_processes(str(vm_cli.home) + "/") == {}
    assert (d / "overlay.qcow2").is_file()
    assert await manager.reap() == []  # kept: not destroyed before the end of its retain
    phase("stopped at its lease's end", t0)
    renewed = manager.extend(sid, "30m")
    assert (renewed.state, renewed.reason) == ("stopped", "stopped")
    back = await manager.start(sid)
    assert back.state == "ready"
    assert back.reachability is not None
    reach = back.reachability.model_dump(mode="json", by_alias=True)
    assert must(ssh(known, reach, f"cat ~/note.txt; {SHOW}")) == \
        f"kept-work\n{token}|hello there\n"
    phase("extended and started", t0)
    # The disk, its snapshots, console log, store, keeper log: no secret, and the
    # snapshots no host key (the guest keeps it in /run).
    found = leaks([token], [vm_cli.home])
    assert not found, found
    pem = key_paths(manager.settings, sid)["host_key"].read_text().splitlines()
    private = [line for line in pem[2:-1] if len(line) >= 60]  # past the common header
    assert private
    found = leaks(private, [ext.snapshot_root(), ext.sandbox_dir(sid) / "overlay.qcow2"])
    assert not found, found
    owned = await ext.owned_snapshots(ext.targets(manager.settings)[0])
    assert {a.snapshot_id for a in owned} == {snap.id, paused_snap.id}
    assert (await manager.delete_snapshot(paused_snap.id)).state == "deleted"
    assert not ext.snapshot_dir(paused_snap.id).exists()

    old_identity = vm_cli.home.parent / "old_identity"  # destroy removes the keys
    shutil.copy(key_paths(manager.settings, sid)["identity"], old_identity)
    old_host = known.read_text().split()[-1]

    # -- destroy: nothing left but the snapshot ------------------------------------------
    assert (await manager.destroy(sid)).state == "destroyed"
    assert qemu.vm_processes(str(vm_cli.home) + "/") == {}
    assert not d.exists()
    phase("destroyed", t0)
    await _from_snapshot(vm_cli, manager, ext, snap.id, fork_token, old_identity, old_host)
    phase("booted from the snapshot", t0)


async def _from_snapshot(vm_cli: VMCli, manager: Manager, ext: Any, snap: str, token: str,
                         old_identity: Path, old_host: str) -> None:
    """``create profile.vm-fork --from-snapshot`` of the destroyed VM's snapshot: another
    profile of the extension, with its own binding and ``forward: [8080]``. Its work is
    there, its keys and binding are its own, sftp and scp work, ``ssh -W``/``-L`` reach the
    guest's 127.0.0.1:8080 and nothing else; deleting the snapshot leaves it whole."""
    host = HostListener()  # the host's loopback: never reachable through the fork's sshd
    box = await manager.create("profile.vm-fork", actor="agt", from_snapshot=snap)
    try:
        assert (box.state, box.snapshot) == ("ready", snap)
        assert box.reachability is not None
        reach = box.reachability.model_dump(mode="json", by_alias=True)
        known = key_paths(manager.settings, box.id)["known_hosts"]
        assert must(ssh(known, reach, f"cat ~/note.txt ~/fork.txt; {SHOW}")) == \
            f"kept-work\nfork-work\n{token}|forked\n"
        # its own keys: a new host key, and the old client key is not authorized
        assert known.read_text().split()[-1] != old_host
        denied = ssh(known, {**reach, "identity_file": str(old_identity)}, "true")
        assert denied.returncode == 255
        assert "Permission denied" in denied.stderr, denied.stderr

        # sftp and scp (sftp protocol) through the session wrapper
        local = vm_cli.home.parent / "up.txt"
        local.write_text("uploaded\n")
        opts = pinned(known, reach)
        dest = f"{reach['user']}@127.0.0.1"
        batch = f"put {local} up.txt\nget up.txt {local}.back\n"
        done = subprocess.run(["sftp", *opts, "-b", "-", dest], input=batch, text=True,
                              capture_output=True, timeout=90, check=False)
        assert done.returncode == 0, done.stderr
        assert Path(f"{local}.back").read_text() == "uploaded\n"
        must(subprocess.run(["scp", *opts, f"{dest}:note.txt", f"{local}.scp"],
                            capture_output=True, text=True, timeout=90, check=False,
                            stdin=subprocess.DEVNULL))
        assert Path(f"{local}.scp").read_text() == "kept-work\n"

        # forwarding: 8080 of its loopback, nothing else
        must(ssh(known, reach, f"{_serve(8080)}\n{_serve(8081)}\n{_LISTENING}"))
        for target in ("127.0.0.1:8080", "localhost:8080"):
            assert must(ssh_stdio(known, reach, target)) == "hello-8080\n"
        for target in ("127.0.0.1:8081", f"10.0.2.2:{host.port}",
                       f"127.0.0.1:{host.port}", "127.0.0.1:22"):
            refused = ssh_stdio(known, reach, target)
            assert refused.returncode == 255, target
            assert "administratively prohibited" in refused.stderr, refused.stderr
        assert await _via_local_forward(known, reach, 8080) == b"hello-8080\n"
        assert host.accepted == 0

        # the snapshot deleted: the fork's disk never depended on it
        assert (await manager.delete_snapshot(snap)).state == "deleted"
        assert (await manager.delete_snapshot(snap)).state == "deleted"  # idempotent
        assert not ext.snapshot_dir(snap).exists()
        chain = must(subprocess.run(
            ["qemu-img", "info", "-U", "--backing-chain", "--output=json",
             str(ext.sandbox_dir(box.id) / "overlay.qcow2")],
            capture_output=True, text=True, timeout=60, check=False))
        assert snap not in chain
        assert must(ssh(known, reach, "cat ~/note.txt")) == "kept-work\n"
        assert leaks([token], [vm_cli.home]) == []
    finally:
        host.close()
        assert (await manager.destroy(box.id)).state == "destroyed"
    assert not ext.sandbox_dir(box.id).exists()
    assert await ext.owned_snapshots(ext.targets(manager.settings)[0]) == []
    assert manager.list_snapshots() == []


# bash: wait until both guest servers accept (perl starts slowly under TCG)
_LISTENING = ("for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8080) 2>/dev/null && "
              "(echo > /dev/tcp/127.0.0.1/8081) 2>/dev/null && exit 0; sleep 0.3; done; exit 1")


def _serve(port: int) -> str:
    """A guest command: a background server on 127.0.0.1:``port`` greeting each client."""
    code = (f'$s=IO::Socket::INET->new(LocalAddr=>"127.0.0.1",LocalPort=>{port},'
            f'Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){{print $c '
            f'"hello-{port}\\n"; close $c}}')
    return f"nohup perl -MIO::Socket::INET -e {shlex.quote(code)} </dev/null >/dev/null 2>&1 &"


async def _via_local_forward(known: Path, reach: dict[str, Any], port: int) -> bytes:
    """What ``ssh -N -L LOCAL:127.0.0.1:port`` (as `sandboxer port-forward` runs it)
    serves on the host's LOCAL port."""
    local = qemu.free_port()
    proc = subprocess.Popen(["ssh", *pinned(known, reach), "-N", "-o",
                             "ExitOnForwardFailure=yes", "-L",
                             f"127.0.0.1:{local}:127.0.0.1:{port}",
                             f"{reach['user']}@127.0.0.1"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
            except OSError:
                assert time.monotonic() < deadline, "the local forward never listened"
                await asyncio.sleep(0.3)
                continue
            got = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            await writer.wait_closed()
            return got
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()  # else a ResourceWarning (an error here) once collected

