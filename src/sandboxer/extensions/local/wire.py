"""A synchronous, stdlib-only client for the endpoint's control socket, and ext.local's
``FastPaths`` (entry point ``sandboxer.fast_paths``: ``FAST_PATHS``).

Used on the CLI's fast paths, which must not pay for importing asyncio or pydantic.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from sandboxer.config import Settings
from sandboxer.extensions.local.peer import check_server


def request_if_running(
    settings: Settings, op: str, timeout: float = 60.0, **args: Any
) -> dict[str, Any] | None:
    """One request/reply; None when no daemon answers (absent, refused, shutting down).

    Raises UnsafePermissions, having sent nothing, when the socket is not our endpoint's.
    """
    path = settings.run_dir / "local-endpoint.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        check_server(sock, path)
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, TimeoutError):
        return None
    finally:
        sock.close()
    if not line:
        return None
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok") and reply.get("error") == "shutting-down":
        return None
    return reply


class _FastPaths:
    """ext.local's FastPaths: one request to a running endpoint, never a start."""

    def unserved(self, settings: Settings, documents: list[dict[str, Any]]) -> list[str]:
        """Ready ext.local documents the endpoint does not serve on their recorded port
        (every one of them when no endpoint answers): one ``list`` request."""
        ready = [d for d in documents
                 if d.get("extension") == "ext.local" and d.get("state") == "ready"]
        if not ready:
            return []
        listed = request_if_running(settings, "list", timeout=5)
        served = {e["sandbox_id"]: e["port"] for e in (listed or {}).get("sandboxes", [])}
        return [str(d["id"]) for d in ready
                if served.get(d["id"]) != (d.get("reachability") or {}).get("port")]

    def destroy(self, settings: Settings, sandbox_id: str) -> dict[str, Any] | None:
        """Destroy through the running endpoint (core's destroy, in that process)."""
        return request_if_running(settings, "destroy", sandbox_id=sandbox_id)


FAST_PATHS = _FastPaths()
