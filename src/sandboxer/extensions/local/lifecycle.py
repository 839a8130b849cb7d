"""Stop, start, pause, resume, activity and bind of the endpoint's sandboxes.

- **stop**: every process of the jail ends (its cgroup is killed and removed), the
  listener closes (connections are refused), the workspace image is unmounted but kept,
  and the record says ``stopped``: a restarted endpoint does not serve it, and an endpoint
  with only stopped sandboxes is idle and exits. **start** serves it again from its record:
  the same host key and client key, its recorded port when free (else a new one), a new
  jail over the same workspace, the env and secrets the caller bound.
- **pause**: the jail's freezer cgroup (v1 ``freezer.state``, v2 ``cgroup.freeze``); memory
  is kept. A session asked for meanwhile is refused with a message naming ``sandboxer
  resume`` (holding it could hang a client for hours); open sessions stall and go on after
  **resume**. The record says ``paused``, so a restarted endpoint freezes it again.
- **activity**: sessions open now (the endpoint runs them) and the cgroup's cumulative CPU
  seconds (v1 ``cpuacct.usage``, v2 ``cpu.stat`` ``usage_usec``).
- **bind**: env and secret values for later sessions, held in this process's memory only
  (the record names the secrets, never a value). A jail that runs nothing but its holder
  (just restored, just claimed) starts again so that ``/run/secrets`` holds them too (when
they differ from what it holds);
  otherwise its ``/run/secrets`` keeps what the jail started with until its next start.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from functools import partial
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from sandboxer import redaction
from sandboxer.config import Settings
from sandboxer.errors import Conflict, InvalidInput
from sandboxer.extensions.local import control, disk, jail
from sandboxer.extensions.local.cgroups import Hierarchy, SandboxCgroup
from sandboxer.extensions.local.controlserver import ControlServer
from sandboxer.extensions.local.spawn import in_thread

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from sandboxer.extensions.local.holder import Jail
    from sandboxer.extensions.local.sessions import Sandbox

log = logging.getLogger("sandboxer.extensions.local.endpoint")
# How often a restored sandbox asks core for its secrets before it is stopped here.
REBIND_TRIES = 3


def mark(settings: Settings, sid: str, **flags: bool) -> dict[str, Any]:
    """Set (True) or clear (False) ``stopped`` / ``paused`` in a sandbox's record."""
    record = control.read_record(settings, sid)
    if record is None:
        raise Conflict(f"ext.local sandbox {sid} has no record under {settings.local_root}",
                       hint="it was destroyed; create a new one")
    for name, value in flags.items():
        if value:
            record[name] = True
        else:
            record.pop(name, None)
    control.write_record(settings, sid, record)
    return record


def park(settings: Settings, sid: str, hierarchy: Hierarchy | None) -> None:
    """What a stopped sandbox leaves behind, as a destroy would, its workspace image kept:
    its cgroup goes (with any process left in it), the image is unmounted."""
    if hierarchy is not None:
        hierarchy.sandbox(sid).remove()
    d = control.sandbox_dir(settings, sid)
    if disk.image_path(d).exists():
        disk.unmount(d / "workspace")


def only_holder(j: Jail) -> bool:
    """The jail runs nothing but bwrap, its init and the holder (no session, no job)."""
    from sandboxer.extensions.local.holder import _children

    if j.proc is None or not j.alive:
        return False
    inits = _children(j.proc.pid)
    known = {j.proc.pid, *inits, j.holder_pid}
    if j.cgroup is not None:
        return j.cgroup.pids() <= known
    return all(_children(i) == [j.holder_pid] for i in inits)


class Lifecycle(ControlServer):
    """The endpoint's lifecycle ops (see the module docstring); ``endpoint.Daemon``."""

    settings: Settings
    cgroups: Hierarchy | None

    @abstractmethod
    def _turn(self, sid: str) -> AbstractAsyncContextManager[None]:
        """Hold ``sid``'s lock."""

    @abstractmethod
    async def _add(self, req: dict[str, Any]) -> int:
        """Serve the sandbox of a record; its port."""

    @abstractmethod
    async def _remove(self, sid: str) -> None:
        """Stop serving ``sid`` and end its jail."""

    @abstractmethod
    def _jail(self, sb: Sandbox) -> Jail:
        """A new (not started) jail for ``sb``."""

    async def _served(self, sid: str, doing: str) -> Sandbox:
        sb = self.sandboxes.get(sid)
        if sb is None:
            record = control.read_record(self.settings, sid)
            why = "it is stopped (sandboxer start)" if record and record.get("stopped") \
                else "the endpoint does not serve it"
            raise Conflict(f"ext.local cannot {doing} {sid}: {why}")
        await self.started(sid)
        return sb

    @staticmethod
    def _freezer(sb: Sandbox) -> SandboxCgroup:
        cg = sb.jail.cgroup if sb.jail is not None else None
        if cg is None or cg.freezer is None:
            raise InvalidInput(
                f"ext.local cannot pause {sb.id}: its jail has no freezer cgroup (the "
                "endpoint manages cgroups only as root, on a host with a freezer)",
                hint="sandboxer doctor shows the cgroup layout; stop it instead")
        return cg

    async def stop_here(self, sid: str) -> None:
        """End every process of ``sid``, keep its workspace; idempotent."""
        async with self._turn(sid):
            mark(self.settings, sid, stopped=True, paused=False)
            await self._remove(sid)
            await in_thread(partial(park, self.settings, sid, self.cgroups))
            log.info("stopped %s", sid)

    async def start_here(self, sid: str, env: dict[str, str], secrets: object) -> int:
        """Serve a stopped ``sid`` again with ``env`` and ``secrets``; its port."""
        checked = jail.checked_secrets(secrets)
        async with self._turn(sid):
            if sid in self.sandboxes:
                return self.sandboxes[sid].port
            record = mark(self.settings, sid, stopped=False, paused=False)
            record["env"] = {str(k): str(v) for k, v in env.items()}
            record["secret_names"] = sorted(checked)
            control.write_record(self.settings, sid, record)
            port = await self._add({**record, "secrets": checked})
            log.info("started %s on port %d", sid, port)
            return port

    async def pause_here(self, sid: str) -> None:
        """Freeze every process of ``sid``; idempotent."""
        await self._set_paused(sid, True)

    async def resume_here(self, sid: str) -> None:
        """Thaw ``sid``; idempotent."""
        await self._set_paused(sid, False)

    async def _set_paused(self, sid: str, paused: bool) -> None:
        async with self._turn(sid):
            sb = await self._served(sid, "pause" if paused else "resume")
            cg = self._freezer(sb)
            if not cg.try_set_frozen(paused):  # else the kernel is still at it: wait aside
                await in_thread(cg.freeze if paused else cg.thaw)
            sb.paused = paused
            mark(self.settings, sid, paused=paused)

    async def activity_here(self, sid: str) -> dict[str, Any]:
        """Sessions open now and cumulative CPU seconds of ``sid``'s cgroup."""
        sb = self.sandboxes.get(sid)
        if sb is None:
            record = control.read_record(self.settings, sid)
            why = "stopped" if record and record.get("stopped") else "not served"
            return {"sessions": 0, "cpu_seconds": 0.0, "detail": why}
        sessions = sum(len(c.procs) + c.forwards for c in sb.conns)  # forwards: ssh -L
        cg = sb.jail.cgroup if sb.jail is not None else None
        cpu = cg.cpu_seconds() if cg is not None else None  # one small read: no thread
        detail = f"{len(sb.conns)} connection(s)" + (" (paused)" if sb.paused else "")
        if cpu is None:
            detail += "; CPU not accounted (no cgroup)"
        return {"sessions": sessions, "cpu_seconds": cpu or 0.0, "detail": detail}

    async def bind_here(self, sid: str, env: dict[str, str], secrets: object) -> None:
        """Give ``sid``'s later sessions ``env`` and ``secrets`` (replacing the last)."""
        checked = jail.checked_secrets(secrets)
        async with self._turn(sid):
            sb = await self._served(sid, "bind")
            redaction.unregister(sb.secrets.values())
            redaction.register(checked.values())
            sb.secrets.clear()  # the jail holds this same mapping
            sb.secrets.update(checked)
            sb.env = {str(k): str(v) for k, v in env.items()}
            sb.secrets_missing = []
            record = control.read_record(self.settings, sid)
            if record is not None:
                record["env"], record["secret_names"] = sb.env, sorted(checked)
                control.write_record(self.settings, sid, record)
            if sb.jail is not None and sb.jail.started_secrets != checked and not sb.paused \
                    and not any(c.procs for c in sb.conns) \
                    and await in_thread(partial(only_holder, sb.jail)):
                # Nothing runs in it yet: a new jail, so /run/secrets holds them as well.
                async with sb.revive_lock:
                    await sb.jail.stop()
                    sb.jail = self._jail(sb)
                    await sb.jail.start()
            log.info("bound env and %d secret(s) to %s", len(checked), sid)

    async def after_restore(self, restored: list[str]) -> None:
        """Ask core for the secrets of restored sandboxes that had some (``Host.rebind``),
        then freeze again those that were paused. Runs once the control socket answers:
        the rebind comes back to ``bind_here``, in this process."""
        rebinding = True
        # Sessions wait for each one's rebind (Sandbox.rebound, set by _add).
        waiting = [sb for sid in restored if (sb := self.sandboxes.get(sid)) is not None
                   and sb.rebound is not None]
        try:
            for sid in restored:
                sb = self.sandboxes.get(sid)
                if sb is not None and sb.rebound is not None and rebinding:
                    rebinding = await self._rebind(sid)
                if sb is not None and sb.rebound is not None:
                    sb.rebound.set()
                    sb.rebound = None
                record = control.read_record(self.settings, sid)
                if record and record.get("paused") and sid in self.sandboxes:
                    try:
                        await self.pause_here(sid)
                        log.info("%s is paused again, as before the restart", sid)
                    except Exception as e:
                        log.warning("pausing %s again failed: %s", sid, e)
        finally:
            for sb in waiting:
                if sb.rebound is not None:
                    sb.rebound.set()

    async def _rebind(self, sid: str) -> bool:
        """``Host.rebind``; False when this core cannot (SANDBOXER_SECRETS_MISSING stays).

        When core cannot answer (its store failing), the sandbox is stopped here after a
        few tries rather than served without its secrets; a later read serves it again
        and asks once more."""
        for attempt in range(1, REBIND_TRIES + 1):
            try:
                if not await self.host.rebind(sid):
                    log.warning("%s: its secrets no longer resolve; core stopped it", sid)
                return True
            except NotImplementedError:
                return False
            except Exception as e:
                log.warning("rebinding the secrets of %s failed (try %d of %d): %s", sid,
                            attempt, REBIND_TRIES, e)
            if attempt < REBIND_TRIES:
                await asyncio.sleep(1.0)
        try:
            await self.stop_here(sid)
            log.warning("%s is stopped here: its secrets could not be bound again", sid)
        except Exception as e:
            log.warning("stopping %s, whose secrets could not be bound again, failed: %s",
                        sid, e)
        return True

    @override
    async def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if self.shutting_down or op not in _OPS:
            return await super()._dispatch(req)
        sid = str(req["sandbox_id"])
        if not control.SANDBOX_ID.fullmatch(sid):
            raise ValueError(f"invalid sandbox id {sid!r}")
        env = req.get("env") or {}
        if not isinstance(env, dict):
            raise ValueError("env must be an object of NAME: value")
        self.busy += 1  # not idle meanwhile
        try:
            if op == "stop":
                await self.stop_here(sid)
            elif op == "start":
                return {"ok": True, "port": await self.start_here(sid, env, req.get("secrets"))}
            elif op == "pause":
                await self.pause_here(sid)
            elif op == "resume":
                await self.resume_here(sid)
            elif op == "activity":
                return {"ok": True, **await self.activity_here(sid)}
            else:
                await self.bind_here(sid, env, req.get("secrets"))
        finally:
            self.busy -= 1
        return {"ok": True}


_OPS = frozenset({"stop", "start", "pause", "resume", "activity", "bind"})

