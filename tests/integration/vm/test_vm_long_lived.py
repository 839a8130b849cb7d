"""A long-lived ext.vm-packer sandbox on one real TCG VM (boots are minutes here, so one
combined test): a warm pool of one VM, unclaimed without the profile's env and secret, a
create that claims it and binds both; idle handling that a session open keeps away and
that pauses it once idle (``sandboxer.idling``); ``ttl.retain``: the lease's end stops it
and keeps it, ``extend`` + ``start`` bring it back with its work; destroy leaves nothing.
The pool is filled, the watcher and the reaper driven here, in this process."""

from __future__ import annotations

import asyncio
import secrets as random
import subprocess
import time
from datetime import timedelta
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

from .conftest import must, phase, ssh, ssh_argv

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
  vm: {cpus: 1, memory: 384M, accel: auto, boot_timeout: 300}
reachability: {user: agent}
ttl: {default: 30m, max: 2h, retain: 10m}
idle: {after: 15s, action: pause}
pool: {size: 1, max_age: 1h}
setup:
  env: {GREETING: "hello there"}
  secret_refs: [{name: API_TOKEN, ref: "file:TOKEN_FILE"}]
"""
SHOW = 'printf "%s|%s\\n" "$API_TOKEN" "$GREETING"'
UNBOUND = "test -e /run/secrets/API_TOKEN || test -e /run/secrets/.env/GREETING || echo unbound"
LIVE = ["provisioning", "ready", "paused", "stopped", "unreachable", "destroying"]


def _last_event(manager: Manager, sid: str) -> tuple[str, Any]:
    event = manager.store.events(sandbox_id=sid)[-1]
    return event.type, event.payload["reason"]


@pytest.mark.timeout(1500)  # a TCG VM booted twice, stopped cleanly once
def test_a_pooled_vm_is_claimed_paused_when_idle_and_retained_at_its_lease_end(
        vm_cli: VMCli) -> None:
    token = f"cnryvm{random.token_hex(12)}"
    token_file = vm_cli.home.parent / "token"  # a file ref: start resolves it again
    token_file.write_text(token)
    token_file.chmod(0o600)
    pid = vm_cli.profile("vm-long", PROFILE.replace("TOKEN_FILE", str(token_file)))
    # The keeper a create starts watches for idleness too; it samples once and then waits
    # an hour, so that the rounds of this test's own watcher are the ones that count.
    vm_cli.env["SANDBOXER_IDLE_INTERVAL"] = "3600"
    settings = Settings.from_env(vm_cli.env)
    service = Service(settings, upkeep=False)
    manager = service.manager
    try:
        asyncio.run(_long_lived(vm_cli, service, pid, token))
    finally:  # a pooled VM is in no `list`: the fixture's cleanup would not see it
        for doc in manager.store.query_documents(states=LIVE):
            asyncio.run(manager.destroy(doc["id"]))
    assert manager.store.query_documents(states=LIVE) == []
    assert qemu.vm_processes(str(vm_cli.home) + "/") == {}
    found = leaks([token], [vm_cli.home])
    assert not found, found


async def _long_lived(vm_cli: VMCli, service: Service, pid: str, token: str) -> None:
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
    found = leaks([token], [vm_cli.home])  # the disk, console log, store, keeper log
    assert not found, found

    # -- destroy: nothing left -----------------------------------------------------------
    assert (await manager.destroy(sid)).state == "destroyed"
    assert qemu.vm_processes(str(vm_cli.home) + "/") == {}
    assert not d.exists()
    phase("destroyed", t0)
