"""The local service: the application service answering the CLI over a unix socket.

Core's keeper process for ext.local (``service/daemon.py``) hosts a ``Service`` and, with
this, serves it on ``run/service.sock`` (the protocol, the settings key and what the
caller's environment is used for: ``service/wire.py``). The CLI's ``create``, ``destroy``,
``extend``, ``stop``, ``start``, ``pause``, ``resume``, ``ssh`` and ``reachability show``
come here (``client/service.py``), so they
find the catalog parsed, the extensions loaded and asyncssh imported, and start nothing.

A request runs as a task of its own; its progress lines go back on its connection as
they happen, and a client that goes away (Ctrl-C, killed) cancels its request, which
then cleans up as any cancelled create does (recorded ``failed``, partial resources
destroyed). Every text sent back passes the redaction safety net first. The process
stays up while a request runs and for ``SANDBOXER_SERVICE_IDLE_EXIT`` seconds after the
last one (``busy``), so a burst of commands finds it warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sandboxer import envvars, peer, redaction
from sandboxer.errors import SandboxerError
from sandboxer.service import wire
from sandboxer.values import LIFECYCLE

if TYPE_CHECKING:
    from sandboxer.config import Settings
    from sandboxer.service.app import Service

log = logging.getLogger(__name__)
LINE_TIMEOUT = 30.0  # seconds a client has to send its request line once connected
_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "local_service_progress", default=None)


def route_progress(message: str) -> None:
    """The hosted Service's progress callback: to the connection of the request whose
    task (or worker thread: ``asyncio.to_thread`` copies the context) reports it."""
    sink = _sink.get()
    if sink is not None:
        sink(message)


class BadRequest(Exception):
    """A request line this service does not take (the client gets an error reply)."""


def _request(line: bytes) -> dict[str, Any]:
    try:
        req = json.loads(line)
    except ValueError as e:
        raise BadRequest("the request is not one JSON line") from e
    if not isinstance(req, dict) or not isinstance(req.get("v"), int):
        raise BadRequest(f"expected a protocol {wire.PROTOCOL} request")
    if req["v"] != wire.PROTOCOL:
        return req  # another sand-boxer's client: answered ``fallback``
    if req.get("op") not in wire.OPS:
        raise BadRequest(f"unknown op {req.get('op')!r}")
    env, args = req.get("env", {}), req.get("args", {})
    if not isinstance(args, dict) or not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise BadRequest("args and env must be JSON objects (env: of strings)")
    return req


async def _hung_up(reader: asyncio.StreamReader) -> None:
    """Return once the client hangs up (or shuts its side down); bytes it sends after its
    request line mean nothing and are dropped, they do not cancel the request."""
    with contextlib.suppress(ConnectionError):  # a reset is a hang-up too
        while await reader.read(4096):
            pass


def bind(settings: Settings) -> socket.socket:
    """The service's listening socket at ``run/service.sock`` (0600), bound at once by a
    keeper that holds its lock, before it loads anything."""
    path = wire.socket_path(settings)
    # The keeper's lock is ours: a socket file left there is a dead keeper's.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class LocalService:
    """``service`` on ``run/service.sock`` until ``close``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        # What this process runs with; a caller with other settings is not served here.
        self.key = wire.settings_key(os.environ, self.settings.home)
        self.idle_exit = envvars.service_idle_exit(self.settings.env)
        self.inflight = 0
        self.last = time.monotonic()
        self._server: asyncio.AbstractServer | None = None
        # False once the keeper is stopping (its housekeeping, leases or a stop are done,
        # set by service/daemon.py): a request then is answered ``fallback``, not run
        # against endpoints that are going away.
        self.alive: Callable[[], bool] = lambda: True
        # Off (SANDBOXER_LOCAL_SERVICE=0 in this keeper's environment): every request is
        # answered ``fallback`` at once, so callers do not wait for a socket that never comes.
        self.enabled = envvars.local_service(self.settings.env)
        self.line_timeout = LINE_TIMEOUT
        self._closing = False
        self._requests: set[asyncio.Task[Any]] = set()

    def busy(self) -> bool:
        """A request runs, or one ended less than ``idle_exit`` seconds ago."""
        return self.inflight > 0 or time.monotonic() - self.last < self.idle_exit

    async def start(self, sock: socket.socket) -> None:
        """Answer on ``sock`` (``listen``): bound by ``bind`` when the keeper started, so
        clients that connected meanwhile wait in its backlog instead of failing."""
        self._server = await asyncio.start_unix_server(self._connection, sock=sock,
                                                       limit=wire.MAX_LINE)
        log.info("local service on %s", wire.socket_path(self.settings))

    async def close(self, drain: float) -> None:
        """Stop taking requests; wait up to ``drain`` seconds for those under way."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                wire.socket_path(self.settings).unlink()
        if self._requests:
            _done, pending = await asyncio.wait(set(self._requests), timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if not peer.client_allowed(sock):
                log.warning("refused a service connection from process %d (uid %d)",
                            *peer.peer(sock))
                return
            try:
                # A client that never finishes its line (stopped, hung) must not hold a
                # connection, and a file descriptor, for the service's life.
                req = _request(await asyncio.wait_for(reader.readline(), self.line_timeout))
            except TimeoutError:
                log.info("a client sent no request line within %gs; closing", self.line_timeout)
                return
            except (BadRequest, ValueError) as e:  # ValueError: a line over MAX_LINE
                writer.write(wire.encode({"ok": False, "error": {
                    "code": "usage", "message": f"local service: {e}"}}))
                return
            if req["v"] != wire.PROTOCOL:
                writer.write(wire.encode({"ok": False, "fallback": "another protocol"}))
            elif req["op"] == "ping":
                writer.write(wire.encode({"ok": True, "result": {"pid": os.getpid()}}))
            elif not self.enabled:
                writer.write(wire.encode({"ok": False, "fallback": "the local service is off "
                                          "(SANDBOXER_LOCAL_SERVICE=0 when it started)"}))
            elif req.get("key") != self.key:
                writer.write(wire.encode({"ok": False, "fallback": "other settings"}))
            elif self._closing or not self.alive():
                writer.write(wire.encode({"ok": False, "fallback": "the service is stopping"}))
            else:
                await self._serve(req, reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, req: dict[str, Any], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        on_loop = threading.get_ident()

        def send(message: str) -> None:
            line = wire.encode({"progress": redaction.redact(message)})
            if threading.get_ident() == on_loop:
                writer.write(line)
            else:
                loop.call_soon_threadsafe(writer.write, line)

        self.inflight += 1
        writer.write(wire.encode({"taken": True}))  # from here on, never done elsewhere
        work = asyncio.create_task(self._run(req["op"], req["args"], req["env"], send))
        self._requests.add(work)
        gone = asyncio.create_task(_hung_up(reader))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.info("the client of a %s request went away; cancelling it", req["op"])
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return
            try:
                reply: dict[str, Any] = {"ok": True, "result": work.result()}
            except SandboxerError as e:
                reply = {"ok": False, "error": {"code": e.code, "message": e.render()}}
            except Exception as e:
                log.exception("local service: %s failed", req["op"])
                reply = {"ok": False, "error": {
                    "code": "unexpected",
                    "message": redaction.redact(f"{type(e).__name__}: {e}")}}
            writer.write(wire.encode(reply))
        finally:
            gone.cancel()
            self._requests.discard(work)
            self.inflight -= 1
            self.last = time.monotonic()

    async def _run(self, op: str, args: dict[str, Any], env: Mapping[str, str],
                   send: Callable[[str], None]) -> Any:
        _sink.set(send)
        svc = self.service.for_environ(env)  # as the caller's own process would run it
        if op == "create":
            from sandboxer.models.requests import CreateRequest

            # Built as the in-process client builds it; the service checks every value.
            fields: dict[str, Any] = {k: args.get(k) for k in ("ttl", "actor", "target",
                                                               "name", "from_snapshot")}
            req = CreateRequest.model_construct(profile=str(args.get("profile")),
                                                labels=dict(args.get("labels") or {}),
                                                **fields)
            status = await svc.create(req)
            return status.document()
        sid = str(args.get("id"))
        if op in ("snapshot", "fork"):
            return (await _snapshot_op(svc, op, sid, args)).document()
        if op == "get":
            return await asyncio.to_thread(svc.get_document, sid)
        if op == "extend":
            return (await asyncio.to_thread(svc.extend, sid, str(args.get("ttl")))).document()
        if op in LIFECYCLE:
            return (await svc.lifecycle(op, sid)).document()
        # Not svc.destroy_fast: that path asks an extension's running process (here, this
        # one, over its own control socket from a worker thread) to do what the warm
        # manager here does directly.
        return (await svc.destroy(sid)).document()


async def _snapshot_op(svc: Service, op: str, sandbox_id: str, args: dict[str, Any]) -> Any:
    """``snapshot`` or ``fork``, built as the in-process client builds them."""
    from sandboxer.models.requests import ForkRequest, SnapshotRequest

    if op == "snapshot":
        return await svc.snapshot(sandbox_id, SnapshotRequest.model_construct(
            name=args.get("name"), retain=args.get("retain")))
    return await svc.fork(sandbox_id, ForkRequest.model_construct(
        ttl=args.get("ttl"), labels=dict(args.get("labels") or {}), name=args.get("name"),
        actor=args.get("actor")))
