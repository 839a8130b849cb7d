"""The endpoint's control socket: one JSON request per connection (control.py's protocol),
checked against the peer's uid, dispatched to the endpoint (endpoint.Daemon)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from sandboxer import redaction
from sandboxer.errors import SandboxerError
from sandboxer.extensions.local import control
from sandboxer.extensions.local.peer import client_allowed, peer

if TYPE_CHECKING:
    from sandboxer.extensions.base import Host
    from sandboxer.extensions.local.sessions import Sandbox

log = logging.getLogger("sandboxer.extensions.local.endpoint")


class ControlServer(ABC):
    """What the endpoint answers on its control socket (ops ping, list, add, remove,
    started, destroy; lifecycle.py adds stop, start, pause, resume, activity, bind)."""

    busy: int
    shutting_down: bool
    sandboxes: dict[str, Sandbox]
    host: Host

    @abstractmethod
    async def add_here(self, req: dict[str, Any], secrets: object, *,
                       early: bool = False) -> int:
        """Serve the sandbox of ``req``; its port."""

    @abstractmethod
    async def remove_here(self, sid: str) -> None:
        """Stop serving ``sid``."""

    @abstractmethod
    async def started(self, sid: str) -> None:
        """Return once ``sid``'s jail runs."""

    @abstractmethod
    async def _refresh_moved(self) -> None:
        """Store the descriptors of sandboxes that moved."""

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.busy += 1
        try:
            line = await reader.readline()  # read before refusing: the peer gets the reply
            sock = writer.get_extra_info("socket")
            if not client_allowed(sock):
                log.warning("refused a control connection from process %d (uid %d)", *peer(sock))
                writer.write(b'{"ok": false, "error": "refused: not your uid"}\n')
                await writer.drain()
                return
            try:
                req = json.loads(line)
                reply = await self._dispatch(req)
            except SandboxerError as e:  # its class is raised again by the client
                reply = {"ok": False, "error": redaction.redact(e.message), "code": e.code,
                         "hint": e.hint}
            except Exception as e:
                log.warning("control request failed: %s", e,
                            exc_info=not isinstance(e, (ValueError, KeyError)))
                reply = {"ok": False, "error": redaction.redact(str(e) or type(e).__name__)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.busy -= 1
            writer.close()

    async def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if self.shutting_down:
            return {"ok": False, "error": control.SHUTTING_DOWN}
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "list":
            # A client that sees a moved sandbox listed also reads its new descriptor (and
            # does not store it a second time).
            await self._refresh_moved()
            return {"ok": True, "sandboxes": [
                {"sandbox_id": sb.id, "port": sb.port} for sb in self.sandboxes.values()]}
        if op == "destroy":  # outside the sandbox's lock: the destroy calls `remove` on us
            return await self._destroy(str(req["sandbox_id"]))
        if op == "add":
            return {"ok": True, "port": await self.add_here(req, req.get("secrets"),
                                                            early=bool(req.get("early")))}
        if op == "remove":
            await self.remove_here(str(req["sandbox_id"]))
            return {"ok": True}
        if op == "started":
            await self.started(str(req["sandbox_id"]))
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    async def _destroy(self, sid: str) -> dict[str, Any]:
        """Destroy through core, here, where everything is already imported.

        A CLI `destroy` of a local sandbox would otherwise spend most of its time
        importing pydantic and the manager; here it costs the work itself.
        """
        try:
            document = await self.host.destroy(sid)
        except SandboxerError as e:
            return {"ok": False, "error": e.render(), "code": e.code}
        return {"ok": True, "document": document}
