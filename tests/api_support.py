"""Shared by the API, State Hub and MCP tests: a real uvicorn server on 127.0.0.1 in a
thread, a State Hub stand-in that fails on purpose, and token helpers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sandboxer.config import Settings
from sandboxer.store import open_store
from sandboxer.store.tokens import Tokens


def add_token(settings: Settings, actor: str, *, admin: bool = False) -> str:
    settings.ensure()
    store = open_store(settings)
    try:
        return Tokens(store).add(actor, admin=admin)[0]
    finally:
        store.close()


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


class ApiServer:
    """`create_app` under uvicorn on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings, *, background: bool = True) -> None:
        import uvicorn

        from sandboxer.api.app import create_app
        from sandboxer.api.server import bind

        self.app = create_app(settings, background=background, grace=5)
        self._sock = bind("127.0.0.1", 0)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                    lifespan="on", access_log=False))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self._sock])), daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive())
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self._sock.close()


class StateHub:
    """`POST /v1/events` on 127.0.0.1. ``mode``: ok, error (503), timeout (answers after
    ``delay`` s), hold (takes the event, then answers only once ``held`` is cleared: a
    publisher killed meanwhile never learns it was delivered), or down (the socket is
    closed: connection refused). Stores each Idempotency-Key once; counts every attempt
    and keeps every distinct body seen per key (``bodies``)."""

    def __init__(self, token: str = "hub-token", delay: float = 1.5) -> None:  # noqa: S107
        self.token = token
        self.delay = delay
        self.mode = "ok"
        self.accepted: dict[str, dict[str, Any]] = {}  # key -> body, first delivery only
        self.order: list[str] = []  # keys in the order first accepted
        self.attempts: list[tuple[str, str]] = []  # (key, mode)
        self.duplicates = 0
        self.raw: list[bytes] = []
        self.bodies: dict[str, set[bytes]] = {}  # key -> every distinct body delivered
        self.held = threading.Event()  # set while "hold" keeps an answer back
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                key = self.headers.get("Idempotency-Key") or ""
                with hub.lock:
                    hub.raw.append(body)
                    hub.attempts.append((key, hub.mode))
                    mode = hub.mode
                    if mode in ("ok", "hold"):
                        hub.bodies.setdefault(key, set()).add(body)
                if mode == "timeout":
                    time.sleep(hub.delay)
                    return self._reply(503)
                if mode == "error":
                    return self._reply(503)
                if self.path != "/v1/events" or \
                        self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._reply(401)
                with hub.lock:
                    if key in hub.accepted:
                        hub.duplicates += 1
                    else:
                        hub.accepted[key] = json.loads(body)
                        hub.order.append(key)
                if mode == "hold":
                    hub.held.set()
                    hub.release.wait(120)
                self._reply(202)

            def _reply(self, status: int) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the publisher gave up waiting (timeout mode)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def start(self) -> StateHub:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def env(self) -> dict[str, str]:
        return {"SANDBOXER_STATE_HUB_URL": self.url, "SANDBOXER_STATE_HUB_TOKEN": self.token,
                "SANDBOXER_STATE_HUB_TIMEOUT": "0.5", "SANDBOXER_STATE_HUB_BACKOFF_MAX": "1"}
