"""The local docker engine's HTTP API on its unix socket, for the few calls every create
and destroy makes (engine version, copying the keys in, listing what carries a label).

One HTTP/1.1 request each, in-process: ~2 ms where the docker CLI costs 15-70 ms a call
(its start, and `docker cp`'s stat before the upload). Used only when the engine is
plainly a unix socket (``DOCKER_HOST=unix://…``, or no DOCKER_HOST, no context and the
default socket); anything else (tcp, ssh, a context) keeps the docker CLI, which knows
how to reach it. The calls are the Engine API's, unversioned (the daemon's own version):

* ``GET /version``                                    (docker version)
* ``PUT /containers/{name}/archive?path=/``           (docker cp - NAME:/)
* ``GET /containers/json?all=1&filters=…``, ``GET /networks?filters=…``,
  ``GET /volumes?filters=…``                          (docker ps/network ls/volume ls -q)
* ``POST /containers/{id}/pause``, ``…/unpause``       (docker pause/unpause)
* ``GET /containers/{id}/json``                       (docker inspect)
* ``GET /containers/{id}/top?ps_args=…``              (docker top)
* ``GET /containers/{id}/stats?stream=false&one-shot=true``  (cumulative CPU)
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from typing_extensions import override

from sandboxer.errors import ProvisionFailed

DEFAULT_SOCKET = "/var/run/docker.sock"


def socket_path(env: dict[str, str]) -> str | None:
    """The engine's unix socket when nothing but a socket can be meant, else None."""
    host = env.get("DOCKER_HOST")
    if host:
        return host.removeprefix("unix://") if host.startswith("unix:///") else None
    if env.get("DOCKER_CONTEXT", "default") != "default":
        return None
    config = Path(env.get("DOCKER_CONFIG") or Path(env.get("HOME", "/")) / ".docker")
    try:
        current = json.loads((config / "config.json").read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        current = None
    return DEFAULT_SOCKET if current in (None, "", "default") else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    @override
    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """The engine at one unix socket. Every method raises OSError when the socket does not
    answer (the caller then asks the docker CLI, whose message users know) and
    ProvisionFailed when the engine refuses the call."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _call(self, method: str, url: str, body: bytes | None, timeout: float
              ) -> tuple[int, bytes]:
        conn = _UnixConnection(self.path, timeout)
        try:
            headers = {"Content-Type": "application/x-tar"} if body is not None else {}
            conn.request(method, url, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except http.client.HTTPException as e:
            raise OSError(f"{method} {url}: {e}") from e
        finally:
            conn.close()

    async def call(self, method: str, url: str, body: bytes | None = None,
                   timeout: float = 60.0) -> Any:
        """One request; the decoded JSON answer (None when empty)."""
        status, data = await asyncio.to_thread(self._call, method, url, body, timeout)
        if status >= 300:
            try:
                why = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                why = data.decode("utf-8", "replace").strip()
            raise ProvisionFailed(f"docker engine at {self.path}: {method} "
                                  f"{url.split('?')[0]} answered {status}: {why[-300:]}")
        return json.loads(data) if data.strip() else None

    async def version(self) -> str:
        return str((await self.call("GET", "/version", timeout=20))["Version"])

    async def copy_in(self, container: str, tarball: bytes) -> None:
        await self.call("PUT", f"/containers/{urllib.parse.quote(container, safe='')}"
                        "/archive?path=%2F", tarball)

    async def labelled(self, kind: str, label: str, *, running_only: bool = False
                       ) -> list[str]:
        """Ids of the containers, networks or volumes (names) carrying ``label`` (k=v)."""
        filters = urllib.parse.quote(json.dumps({"label": [label]}))
        if kind == "containers":
            found = await self.call("GET", f"/containers/json?all={int(not running_only)}"
                                    f"&filters={filters}")
            return [c["Id"] for c in found]
        if kind == "networks":
            return [n["Id"] for n in await self.call("GET", f"/networks?filters={filters}")]
        found = await self.call("GET", f"/volumes?filters={filters}")
        return [v["Name"] for v in (found.get("Volumes") or [])]

    @staticmethod
    def _c(container: str) -> str:
        return f"/containers/{urllib.parse.quote(container, safe='')}"

    async def pause(self, container: str, *, paused: bool) -> None:
        """Pause (or unpause) one container; one already so is fine (the engine answers
        409 or 500 "… is already paused" / "… is not paused")."""
        try:
            await self.call("POST", f"{self._c(container)}/{'pause' if paused else 'unpause'}")
        except ProvisionFailed as e:
            if not e.message.endswith(("is already paused", "is not paused")):
                raise

    async def inspect(self, container: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.call("GET", f"{self._c(container)}/json")
        return found

    async def top(self, container: str, ps_args: str) -> dict[str, Any]:
        """``{"Titles": [...], "Processes": [[...], ...]}`` (ps run by the engine)."""
        found: dict[str, Any] = await self.call(
            "GET", f"{self._c(container)}/top?ps_args={urllib.parse.quote(ps_args)}")
        return found

    async def cpu_ns(self, container: str) -> int:
        """Cumulative CPU of the container's cgroup, nanoseconds."""
        found = await self.call("GET", f"{self._c(container)}/stats?stream=false&one-shot=true")
        return int(((found or {}).get("cpu_stats") or {}).get("cpu_usage", {})
                   .get("total_usage") or 0)


def local_engine(env: dict[str, str]) -> Engine | None:
    path = socket_path(env)
    return Engine(path) if path and os.path.exists(path) else None
