"""ext.local's lifecycle capabilities, caller's side: StopsAndStarts, Pauses,
ReportsActivity and Binds. Each calls the endpoint directly when this process runs it (the
local service), else over its control socket; the work itself is lifecycle.py's."""

from __future__ import annotations

import asyncio
import os
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from typing_extensions import override

from sandboxer.config import Settings
from sandboxer.extensions.base import (
    Activity,
    Binds,
    Handle,
    Pauses,
    ReportsActivity,
    StopsAndStarts,
)
from sandboxer.extensions.local import cgroups, control

if TYPE_CHECKING:
    from sandboxer.extensions.local.endpoint import Daemon


class LocalOperations(StopsAndStarts, Pauses, ReportsActivity, Binds):
    """Stop/start, pause/resume, activity and bind of ext.local sandboxes."""

    settings: Settings

    @abstractmethod
    def _here(self) -> Daemon | None:
        """The endpoint this process runs, if it does."""

    @override
    async def stop(self, handle: Handle) -> Handle:
        from sandboxer.extensions.local import lifecycle

        s, sid = self.settings, handle.sandbox_id
        here = self._here()
        if here is not None:
            await here.stop_here(sid)
        else:
            # Marked first: an endpoint starting meanwhile does not serve it again.
            lifecycle.mark(s, sid, stopped=True, paused=False)
            if await control.call_if_running(s, "stop", sandbox_id=sid) is None:
                hierarchy = cgroups.detect() if os.geteuid() == 0 else None
                await asyncio.to_thread(lifecycle.park, s, sid, hierarchy)
        return handle.model_copy(update={"data": {**handle.data, "stopped": True}})

    @override
    async def start(self, handle: Handle, env: Mapping[str, str],
                    secrets: Mapping[str, SecretStr]) -> Handle:
        sid = handle.sandbox_id
        # Values only in this call (in memory, or over the 0600 control socket).
        values = {k: v.get_secret_value() for k, v in secrets.items()}
        here = self._here()
        try:
            if here is not None:
                port = await here.start_here(sid, dict(env), values)
            else:
                reply = await control.call(self.settings, "start", sandbox_id=sid,
                                           env=dict(env), secrets=values)
                port = int(reply["port"])
        finally:
            values.clear()
        data = {k: v for k, v in handle.data.items() if k != "stopped"}
        return handle.model_copy(update={"data": {**data, "port": port}})

    @override
    def pausable(self, handle: Handle) -> str | None:
        if os.geteuid() != 0:
            return ("ext.local pauses through the freezer cgroup, which its endpoint "
                    "manages only when it runs as root")
        return None

    async def _op(self, op: str, handle: Handle, **args: Any) -> dict[str, Any]:
        return await control.call(self.settings, op, sandbox_id=handle.sandbox_id, **args)

    @override
    async def pause(self, handle: Handle) -> None:
        await self._set_paused(handle, True)

    @override
    async def resume(self, handle: Handle) -> None:
        await self._set_paused(handle, False)

    async def _set_paused(self, handle: Handle, paused: bool) -> None:
        here = self._here()
        if here is not None:
            await (here.pause_here if paused else here.resume_here)(handle.sandbox_id)
        else:
            await self._op("pause" if paused else "resume", handle)

    @override
    async def activity(self, handle: Handle) -> Activity:
        here = self._here()
        if here is not None:
            seen = await here.activity_here(handle.sandbox_id)
        else:
            # Never starts an endpoint: none running serves no session and uses no CPU.
            reply = await control.call_if_running(self.settings, "activity",
                                                  sandbox_id=handle.sandbox_id)
            seen = reply or {"detail": "the ext.local endpoint is not running"}
        return Activity(sessions=int(seen.get("sessions", 0)),
                        cpu_seconds=float(seen.get("cpu_seconds", 0.0)),
                        detail=seen.get("detail"))

    @override
    async def bind(self, handle: Handle, env: Mapping[str, str],
                   secrets: Mapping[str, SecretStr]) -> None:
        values = {k: v.get_secret_value() for k, v in secrets.items()}
        here = self._here()
        try:
            if here is not None:
                await here.bind_here(handle.sandbox_id, dict(env), values)
            else:
                await self._op("bind", handle, env=dict(env), secrets=values)
        finally:
            values.clear()
