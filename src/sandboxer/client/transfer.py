"""The SDK's file transfers: a file streamed to and from ``/v1/sandboxes/{id}/files``.

Neither side holds the whole file in memory: the upload is read from disk in chunks as
httpx sends it, the download written in chunks to a private file beside the destination
(0600) and renamed over it once complete, so a failed download leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sandboxer.errors import InvalidInput, RequestTooLarge, SandboxerError, from_code

if TYPE_CHECKING:
    import httpx

    from sandboxer.client.http import HttpClient

CHUNK = 1 << 20
TRANSFER_TIMEOUT = 3600.0  # per read of the socket, not for the whole file


def _route(client: HttpClient, sandbox_id: str) -> str:
    from sandboxer.client.http import _seg

    return f"/v1/sandboxes/{_seg(sandbox_id)}/files"


def _failed(client: HttpClient, method: str, path: str, reply: httpx.Response) -> NoReturn:
    import json

    try:
        body: Any = json.loads(reply.read())
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("schema") == "sandboxer.error/v1":
        raise from_code(str(body.get("code")), str(body.get("message")))
    raise SandboxerError(f"{method} {client.url}{path} answered HTTP {reply.status_code} "
                         "without a sand-boxer error document",
                         hint="is SANDBOXER_URL a sand-boxer server?")


def _chunks(fd: int) -> Iterator[bytes]:
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def upload(client: HttpClient, sandbox_id: str, local: Path, remote: str) -> int:
    """Stream the regular file ``local`` to ``remote`` in the sandbox; bytes written."""
    import httpx

    from sandboxer.perms import open_regular

    fd = open_regular(local)
    size = os.fstat(fd).st_size
    path = _route(client, sandbox_id)
    headers = {"Content-Type": "application/octet-stream",
               "Content-Length": str(size)}
    try:
        reply = client._http.request("PUT", path, params={"path": remote}, headers=headers,
                                     content=_chunks(fd), timeout=TRANSFER_TIMEOUT)
    except httpx.HTTPError as e:
        raise SandboxerError(f"uploading {local} to {client.url} failed: {e}",
                             hint="is `sandboxer serve` running there?") from e
    if not reply.is_success:
        _failed(client, "PUT", path, reply)
    return int(reply.json()["bytes"])


def download(client: HttpClient, sandbox_id: str, remote: str, local: Path, *,
             max_bytes: int | None = None) -> int:
    """Stream the sandbox's file ``remote`` to ``local`` (0600); bytes read."""
    import httpx

    path = _route(client, sandbox_id)
    params: dict[str, Any] = {"path": remote}
    if max_bytes is not None:
        params["max_bytes"] = max_bytes
    part = local.with_name(f".{local.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
    read = 0
    try:
        with client._http.stream("GET", path, params=params,
                                 timeout=TRANSFER_TIMEOUT) as reply:
            if not reply.is_success:
                _failed(client, "GET", path, reply)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in reply.iter_bytes(CHUNK):
                    read += len(chunk)
                    if max_bytes is not None and read > max_bytes:
                        raise RequestTooLarge(f"{remote!r} in sandbox {sandbox_id} is larger "
                                              f"than {max_bytes} bytes")
                    out.write(chunk)
        os.replace(part, local)
    except httpx.HTTPError as e:
        raise SandboxerError(f"downloading {remote!r} from {client.url} failed: {e}",
                             hint="retry; nothing was left at the destination") from e
    except OSError as e:
        raise InvalidInput(f"cannot write {local}: {e.strerror}") from e
    finally:
        part.unlink(missing_ok=True)
    return read
