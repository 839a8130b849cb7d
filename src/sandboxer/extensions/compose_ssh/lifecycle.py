"""Stop and start, pause and resume, activity and binding of a compose sandbox.

* stop: ``docker compose stop`` of the project (its containers' filesystems and its named
  volumes stay); a paused project is unpaused first. start: ``docker compose start``; the
  published SSH port is pinned in the container's configuration, so it comes back on the
  same one, with the same host key (its files are in the container). /run/secrets is a
  tmpfs, empty after a stop: once sshd answers, ``bind`` fills it again.
* pause/resume: ``docker pause``/``unpause`` of each running container of the project
  (the engine API's ``POST /containers/{id}/pause`` on the local target).
* activity: SSH sessions are the ``sshd: USER@…`` processes of the main container, from
  ``docker top`` (``GET /containers/{id}/top``); CPU is the project's running containers'
  cumulative cgroup CPU: ``GET /containers/{id}/stats?one-shot=true`` on the local target,
  cpuacct.usage (v1) or cpu.stat (v2) read on a remote docker host — both outside the
  container, adding nothing to it.
* bind: exactly these secrets in /run/secrets, and a SetEnv file for sessions made of the
  container's environment without what provision bound, plus ``env`` (``secrets.fill``).
"""

from __future__ import annotations

import re
import time
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import SecretStr
from typing_extensions import override

from sandboxer.errors import ProvisionFailed
from sandboxer.extensions.base import (
    LABEL,
    Activity,
    Binds,
    Handle,
    Host,
    Housekeeping,
    Pauses,
    ReportsActivity,
    StopsAndStarts,
)
from sandboxer.extensions.compose_ssh import ready, restarts
from sandboxer.extensions.compose_ssh import secrets as cs
from sandboxer.extensions.compose_ssh.config import LOCAL
from sandboxer.extensions.compose_ssh.remote import Runner

if TYPE_CHECKING:
    from sandboxer.config import Settings

# One per SSH connection with a session: OpenSSH's unprivileged child (sshd-session since 9.8).
SESSION_PROCESS = re.compile(r"^sshd(-session)?: \S+@\S+")
START_TIMEOUT = 120.0  # seconds for `compose start` and for sshd to answer afterwards


class Lifecycle(StopsAndStarts, Pauses, ReportsActivity, Binds, Housekeeping):
    """The lifecycle capabilities of ``ComposeSSHExtension`` (a mixin of it)."""

    if TYPE_CHECKING:
        settings: Settings

        @property
        def host(self) -> Host: ...

    @abstractmethod
    async def runner(self, target: str) -> Runner:
        """A runner for one target (``ComposeSSHExtension.runner``)."""

    @staticmethod
    def _project(handle: Handle) -> list[str]:
        d = handle.data.get("dir")
        if not handle.data.get("compose") or not d:
            raise ProvisionFailed(f"{handle.sandbox_id} has no compose project recorded "
                                  "(made by an older sand-boxer?)",
                                  hint=f"destroy it: `sandboxer destroy {handle.sandbox_id}`")
        return [*handle.data["compose"], "-p", handle.sandbox_id, "--project-directory", d,
                "-f", f"{d}/compose.yaml", "-f", f"{d}/override.yaml"]

    async def main_container(self, r: Runner, handle: Handle) -> str:
        """The main service's container (recorded at provision; else the one container
        of the project that publishes the sandbox's SSH port)."""
        if handle.data.get("container"):
            return str(handle.data["container"])
        ids = await r.labelled("containers", f"{LABEL}={handle.sandbox_id}")
        for cid in ids:
            info = await r.inspect(cid) or {}
            bindings = ((info.get("HostConfig") or {}).get("PortBindings") or {}).values()
            if any(str(b.get("HostPort")) == str(handle.data.get("port"))
                   for found in bindings for b in found or []):
                return cid
        raise ProvisionFailed(f"no container of {handle.sandbox_id} on target "
                              f"{r.name} publishes its SSH port {handle.data.get('port')}")

    async def _running(self, r: Runner, handle: Handle) -> list[str]:
        return await r.labelled("containers", f"{LABEL}={handle.sandbox_id}",
                                running_only=True)

    # -- stop / start -----------------------------------------------------------------

    @override
    async def stop(self, handle: Handle) -> Handle:
        async with await self.runner(handle.target or LOCAL) as r:
            await r.pause(await self._running(r, handle), paused=False)  # stop needs it
            await r.check([*self._project(handle), "stop", "-t", "10"], timeout=120,
                          what=f"docker compose stop of {handle.sandbox_id}")
        return handle

    @override
    async def start(self, handle: Handle, env: Mapping[str, str],
                    secrets: Mapping[str, SecretStr]) -> Handle:
        sid = handle.sandbox_id
        async with await self.runner(handle.target or LOCAL) as r:
            done = await r.run([*self._project(handle), "start"], timeout=START_TIMEOUT)
            if done.rc != 0:
                tail = done.tail()
                if "already allocated" in tail or "address already in use" in tail:
                    raise ProvisionFailed(
                        f"cannot start {sid} on target {r.name}: its SSH port "
                        f"{handle.data.get('port')} is taken by something else now: {tail}",
                        hint="free that port on the target, then start it again")
                raise ProvisionFailed(f"docker compose start of {sid} failed on target "
                                      f"{r.name}: {tail}")
            await self._bind(r, handle, env, secrets)
        self.host.ensure_keeper()  # it notices later restarts
        return handle

    # -- pause / resume ---------------------------------------------------------------

    @override
    async def pause(self, handle: Handle) -> None:
        async with await self.runner(handle.target or LOCAL) as r:
            await r.pause(await self._running(r, handle), paused=True)

    @override
    async def resume(self, handle: Handle) -> None:
        async with await self.runner(handle.target or LOCAL) as r:
            await r.pause(await self._running(r, handle), paused=False)

    # -- activity ---------------------------------------------------------------------

    @override
    async def activity(self, handle: Handle) -> Activity:
        async with await self.runner(handle.target or LOCAL) as r:
            main = await self.main_container(r, handle)
            running = await self._running(r, handle)
            if not running:
                return Activity(detail="no container of the project is running")
            sessions = sum(1 for _, args in await r.processes(main)
                           if SESSION_PROCESS.match(args))
            cpu = sum([await r.cpu_seconds(c) for c in running])
        return Activity(sessions=sessions, cpu_seconds=cpu,
                        detail=f"{sessions} SSH session(s); CPU of {len(running)} "
                        f"running container(s) on target {r.name}")

    # -- bind -------------------------------------------------------------------------

    @override
    async def bind(self, handle: Handle, env: Mapping[str, str],
                   secrets: Mapping[str, SecretStr]) -> None:
        async with await self.runner(handle.target or LOCAL) as r:
            await self._bind(r, handle, env, secrets)

    async def _bind(self, r: Runner, handle: Handle, env: Mapping[str, str],
                    secrets: Mapping[str, SecretStr]) -> None:
        """Once sshd answers (its entrypoint has written the SetEnv file it starts with):
        the secrets and the SetEnv file in one exec; then record the container's start."""
        sid = handle.sandbox_id
        if not await ready.banner(handle.data["host"], handle.data["port"],
                                  time.monotonic() + START_TIMEOUT):
            raise ProvisionFailed(f"sshd of {sid} did not answer on "
                                  f"{handle.data['host']}:{handle.data['port']} within "
                                  f"{START_TIMEOUT:.0f}s of its container starting")
        main = await self.main_container(r, handle)
        info = await r.inspect(main)
        if info is None:
            raise ProvisionFailed(f"the container {main} of {sid} is gone from target "
                                  f"{r.name}", hint=f"destroy it: `sandboxer destroy {sid}`")
        conf = cs.env_conf(list((info.get("Config") or {}).get("Env") or []),
                           list(handle.data.get("env_names") or []), env)
        user = str(handle.data.get("user") or "sandbox")
        port = int(handle.data.get("ssh_port") or 22)
        if secrets and not handle.data.get("loader"):
            # Provisioned without secrets (pooled): the loader and its ForceCommand now.
            await cs.install_loader(r, main)
            await cs.fill(r, main, secrets, user, ssh_port=port, conf=conf, reload=True)
        else:
            await cs.fill(r, main, secrets, user, ssh_port=port, conf=conf)
        restarts.record(self.settings, sid, str((info.get("State") or {}).get("StartedAt")))

    # -- restarts ---------------------------------------------------------------------

    @override
    async def housekeep(self, host: Host) -> None:
        from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

        assert isinstance(self, ComposeSSHExtension)  # noqa: S101 - the mixin's only user
        await restarts.watch(self, host)
