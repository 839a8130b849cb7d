"""Stop and start, pause and resume, activity, binding and restart survival of
ext.vm-packer's booted VMs (docs/extensions/vm-packer.md, "Stop, start, pause").

- stop: ``system_powerdown`` on the control socket (the guest's power-button service
  powers off cleanly), QEMU's exit awaited for STOP_TIMEOUT, then SIGTERM/SIGKILL; the
  overlay (the disk) stays. start: QEMU again over the same overlay and config drive (the
  host key is the same file), on the old port when it is free, then the binding again.
- pause/resume: QMP ``stop``/``cont``: the vCPUs halt, memory and devices stay.
- bind: env and secrets into the guest's tmpfs over SSH stdin (``remote.bind``).
- housekeeping (core's keeper): a ready VM whose guest rebooted has an empty tmpfs (no
  ``.bound`` mark), one whose QEMU is gone (the host restarted) is booted again; both get
  their secrets back through ``Host.rebind``.

The attach variant refuses stop and pause: the VM is not ours to power off or freeze.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from typing_extensions import override

from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions import _keys
from sandboxer.extensions.base import (
    Activity,
    Binds,
    Handle,
    Host,
    Housekeeping,
    Pauses,
    ReportsActivity,
    StopsAndStarts,
    key_paths,
)
from sandboxer.extensions.vm_packer import qemu, qmp, remote
from sandboxer.extensions.vm_packer.machine import TARGET, VMBase

log = logging.getLogger(__name__)
STOP_TIMEOUT = 90.0   # seconds a guest may take to power off before QEMU is ended
CHECK_EVERY = 15.0    # seconds between two checks of the ready VMs in the keeper
IDLE_EXIT = 30.0      # the keeper exits once no VM sandbox lived for this long
_BOOT_KEYS = ("image", "user", "cpus", "memory_mib", "accel")


class VMLifecycle(VMBase, StopsAndStarts, Pauses, ReportsActivity, Binds, Housekeeping):
    """The lifecycle capabilities of ext.vm-packer (mixed into VMPackerExtension)."""

    def _refusal(self, handle: Handle, what: str) -> str | None:
        sid = handle.sandbox_id
        data = handle.data or self._record(sid)
        if data.get("kind") == "attach":
            return (f"{sid} is an attached VM ({data.get('user')}@{data.get('host')}:"
                    f"{data.get('port')}): it is not sand-boxer's to {what}; destroy "
                    "releases it, the VM keeps running")
        record = self._record(sid)
        if any(k not in record for k in _BOOT_KEYS):
            return (f"{sid} was booted by an older sand-boxer and its record lacks what "
                    f"booting it again needs; recreate it to {what} it")
        return None

    @override
    def stoppable(self, handle: Handle) -> str | None:
        return self._refusal(handle, "stop")

    @override
    def pausable(self, handle: Handle) -> str | None:
        return self._refusal(handle, "pause")

    def _refuse(self, handle: Handle, what: str) -> None:
        if (why := self._refusal(handle, what)) is not None:
            raise InvalidInput(f"{self.name} cannot {what} {handle.sandbox_id}: {why}")

    # -- stop and start -----------------------------------------------------------------

    @override
    async def stop(self, handle: Handle) -> Handle:
        self._refuse(handle, "stop")
        sid, d = handle.sandbox_id, self.sandbox_dir(handle.sandbox_id)
        async with self._locked(sid) as record:
            self._write_record(sid, {**record, "stopped": True})  # the keeper leaves it
            self._answered.discard(sid)
            pid = self._pid(sid)
            if pid is None:
                return handle
            try:
                with contextlib.suppress(ProvisionFailed):
                    await qmp.command(d, "cont")  # a paused guest sees no power button
                await qmp.command(d, "system_powerdown")
                clean = await qemu.wait_exit(pid, sid, STOP_TIMEOUT)
            except ProvisionFailed as e:
                log.warning("%s: no clean shutdown (%s); ending QEMU", sid, e.message)
                clean = False
            if not clean:
                log.warning("%s: the guest did not power off within %gs; ending QEMU "
                            "(it flushes the disk, the guest's unsynced writes are lost)",
                            sid, STOP_TIMEOUT)
                await qemu.kill(pid, sid, grace=10.0)
            (d / qmp.SOCKET).unlink(missing_ok=True)
        return handle

    @override
    async def start(self, handle: Handle, env: Mapping[str, str],
                    secrets: Mapping[str, SecretStr]) -> Handle:
        self._refuse(handle, "start")
        sid = handle.sandbox_id
        async with self._locked(sid) as record:
            data = await self._boot_again(handle, record, env, secrets)
        self.host.ensure_keeper()
        return Handle(sandbox_id=sid, extension=self.name, target=TARGET, data=data)

    async def _boot_again(self, handle: Handle, record: dict[str, Any], env: Mapping[str, str],
                          secrets: Mapping[str, SecretStr], *, bind: bool = True
                          ) -> dict[str, Any]:
        """QEMU over the sandbox's own disk (held lock), SSH awaited, the binding given
        (unless not ``bind``: core's rebind gives it); the handle's data to store. A VM
        already running is only bound again."""
        sid = handle.sandbox_id
        bindable = bool(record.get("bindable") or env or secrets)
        if bindable and not record.get("bindable"):  # refs added to the profile meanwhile
            await self._config_drive(sid, record["user"])
        data = {**handle.data, "kind": "boot", "host": "127.0.0.1",
                "port": record.get("port"), "user": record["user"],
                "image": Path(record["image"]).name, "accel": record["accel"]}
        if self._pid(sid) is None:
            image = Path(record["image"])
            if not (image / "disk.qcow2").is_file():
                raise ProvisionFailed(f"the image {image} that {sid}'s disk is an overlay "
                                      "of is gone", hint="the disk cannot boot without its "
                                      "base; destroy the sandbox and create it again")
            port = await self._start(self._qemu_bin(), sid, image, cpus=record["cpus"],
                                     memory_mib=record["memory_mib"], accel=record["accel"],
                                     network=bool(record.get("network")),
                                     port=record.get("port"))
            data["port"] = port
            host_public = _keys.public_of(key_paths(self.settings, sid)["host_key"])
            _keys.write_known_hosts(key_paths(self.settings, sid)["known_hosts"],
                                    [_keys.known_hosts_line("127.0.0.1", port, host_public)])
        self._write_record(sid, {**record, "port": data["port"], "bindable": bindable,
                                 "stopped": False})
        ep = await self.endpoint(Handle(sandbox_id=sid, extension=self.name, data=data))
        await self._await_boot(ep, sid, float(record.get("boot_timeout", 180)))
        if bindable and bind:
            await remote.bind(ep, env, secrets)
        self._answered.add(sid)
        return data

    async def _config_drive(self, sid: str, user: str) -> None:
        paths = key_paths(self.settings, sid)
        await asyncio.to_thread(
            qemu.make_config_drive, self.sandbox_dir(sid) / "config.img", user=user,
            hostname=sid, authorized_keys=paths["identity_pub"].read_text(),
            host_key=paths["host_key"].read_bytes(), secrets=True,
            forward=self._record(sid).get("forward") or ())

    # -- pause and resume ---------------------------------------------------------------

    @override
    async def pause(self, handle: Handle) -> None:
        self._refuse(handle, "pause")
        await self._qmp_running(handle, "stop")

    @override
    async def resume(self, handle: Handle) -> None:
        self._refuse(handle, "resume")
        await self._qmp_running(handle, "cont")

    async def _qmp_running(self, handle: Handle, command: str) -> None:
        sid = handle.sandbox_id
        if self._pid(sid) is None:
            raise ProvisionFailed(f"QEMU of {sid} is not running", hint="start it first "
                                  f"(`sandboxer start {sid}`)")
        await qmp.command(self.sandbox_dir(sid), command)

    # -- activity and binding -----------------------------------------------------------

    @override
    async def activity(self, handle: Handle) -> Activity:
        sid = handle.sandbox_id
        if handle.data.get("kind") != "attach":
            pid = self._pid(sid)
            if pid is None:
                return Activity(detail="QEMU is not running")
            host_cpu = qemu.cpu_seconds(pid) or 0.0
            if await qmp.status(self.sandbox_dir(sid)) != "running":
                return Activity(detail=f"paused; QEMU used {host_cpu:.1f}s of host CPU")
        sessions, cpu, _bound = await remote.activity(await self.endpoint(handle))
        return Activity(sessions=sessions, cpu_seconds=cpu,
                        detail="guest: the login user's processes (this sample's own SSH "
                        "session left out)")

    @override
    async def bind(self, handle: Handle, env: Mapping[str, str],
                   secrets: Mapping[str, SecretStr]) -> None:
        sid = handle.sandbox_id
        if handle.data.get("kind") == "attach":
            if env or secrets:
                raise InvalidInput(f"{self.name} cannot bind environment or secrets to "
                                   f"{sid}: it is an attached VM, not sand-boxer's to hold "
                                   "values in")
            return
        record = self._record(sid)
        if not record.get("bindable"):
            if not (env or secrets):
                return
            raise InvalidInput(f"{self.name} cannot bind to {sid} while it runs: it was "
                               "booted without a tmpfs for a binding", hint="stop and start "
                               "it: start boots it with one")
        await remote.bind(await self.endpoint(handle), env, secrets)

    # -- the keeper ---------------------------------------------------------------------

    @override
    async def housekeep(self, host: Host) -> None:
        """Every CHECK_EVERY seconds: give back their secrets to ready VMs that rebooted or
        lost their QEMU; return once no VM sandbox lived for IDLE_EXIT seconds."""
        idle_since: float | None = None
        while True:
            await asyncio.sleep(CHECK_EVERY)
            try:
                handles = [h for h in host.live_handles() if h.data.get("kind") == "boot"]
                states = host.states(h.sandbox_id for h in handles)
            except Exception as e:  # the store unreadable for a moment: try again later
                log.warning("reading the live VM sandboxes failed: %s", e)
                continue
            if not handles:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= IDLE_EXIT:
                    return
                continue
            idle_since = None
            for h in handles:
                if states.get(h.sandbox_id) == "ready":
                    try:
                        await self._keep(host, h)
                    except Exception as e:
                        log.warning("keeping %s: %s", h.sandbox_id, e)

    async def _keep(self, host: Host, handle: Handle) -> None:
        sid = handle.sandbox_id
        record = self._record(sid)
        if record.get("stopped") or any(k not in record for k in _BOOT_KEYS):
            return
        if self._pid(sid) is None:
            async with self._locked(sid) as record:
                if record.get("stopped") or self._pid(sid) is not None:
                    return
                if host.states([sid]).get(sid) != "ready":
                    return
                log.info("%s: its QEMU is gone (a host restart?); booting it again", sid)
                await self._boot_again(handle, record, {}, {}, bind=False)
            if host.states([sid]).get(sid) != "ready":  # destroyed meanwhile
                pid = self._pid(sid)
                if pid is not None:
                    await qemu.kill(pid, sid)
                return
            await host.refresh_reachability(sid)
        elif not record.get("bindable"):
            return
        elif await qmp.status(self.sandbox_dir(sid)) != "running":
            return  # paused: nothing to read until it resumes
        else:
            fd = os.open(self.sandbox_dir(sid) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:  # a start binding it right now holds the lock: not a reboot
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _sessions, _cpu, bound = await remote.activity(await self.endpoint(handle))
            except BlockingIOError:
                return
            finally:
                os.close(fd)
            if bound:
                return
            log.info("%s: its guest rebooted (the binding is gone); binding again", sid)
        if record.get("bindable") and not await host.rebind(sid):
            log.warning("%s: its secrets no longer resolve; core stopped it", sid)
