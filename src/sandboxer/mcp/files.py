"""The MCP file tools: ``upload_file`` and ``download_file``, one file of at most
``MAX_FILE`` bytes each way, as UTF-8 text or base64, through the Client's ``upload`` and
``download`` (sand-boxer's own SSH to the sandbox: the agent needs no key of it)."""

from __future__ import annotations

import base64
import binascii
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from sandboxer.errors import InvalidInput, RequestTooLarge
from sandboxer.mcp.tools import SandboxId, tool_annotations
from sandboxer.models.files import FileContent, FileCopied
from sandboxer.values import MAX_REMOTE_PATH

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from mcp.server.mcpserver import MCPServer

    from sandboxer.client import Client

MAX_FILE = 4 * 1_048_576  # a tool result travels in one JSON message (base64: 4/3 of it)
Encoding = Literal["text", "base64"]
RemotePath = Annotated[str, Field(min_length=1, max_length=MAX_REMOTE_PATH, description=(
    "the path in the sandbox; relative paths start at the login directory of its user"))]


def _decode(content: str, encoding: Encoding) -> bytes:
    if encoding == "text":
        return content.encode("utf-8", "surrogateescape")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput("content is not valid base64",
                           hint="send base64 (RFC 4648), or encoding text") from e


def _encode(data: bytes, encoding: Encoding | None) -> tuple[Encoding, str]:
    if encoding != "base64":
        try:
            return "text", data.decode("utf-8")
        except UnicodeDecodeError as e:
            if encoding == "text":
                raise InvalidInput("the file is not UTF-8 text",
                                   hint="ask for encoding base64") from e
    return "base64", base64.b64encode(data).decode("ascii")


def register(server: MCPServer[Any], client: Client,
             call: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
    """Add the file tools to ``server``; ``call`` runs a client call off the loop."""

    @server.tool(description="Write a file into a ready sandbox (created or replaced, as "
                 "its user): UTF-8 text as is, or bytes as base64; at most 4 MiB.",
                 annotations=tool_annotations("Upload a file", idempotent=True))
    async def upload_file(
        sandbox_id: SandboxId,
        path: RemotePath,
        content: Annotated[str, Field(description="the file's content")],
        encoding: Annotated[Encoding, Field(
            description="text (UTF-8) or base64 (any bytes)")] = "text",
    ) -> FileCopied:
        data = _decode(content, encoding)
        if len(data) > MAX_FILE:
            raise RequestTooLarge(f"the content is {len(data)} bytes, over {MAX_FILE}",
                                  hint="copy large files with `sandboxer cp`")
        with tempfile.TemporaryDirectory(prefix="sandboxer-mcp-") as d:
            tmp = Path(d) / "upload"
            tmp.touch(mode=0o600)
            tmp.write_bytes(data)
            size: int = await call(lambda: client.upload(sandbox_id, tmp, path))
        return FileCopied.model_validate({"sandbox_id": sandbox_id, "path": path,
                                          "bytes": size, "direction": "in"})

    @server.tool(description="Read a file of a ready sandbox, at most 4 MiB: as text when "
                 "it is UTF-8 (or encoding text), else base64.",
                 annotations=tool_annotations("Download a file", read_only=True,
                                              idempotent=True))
    async def download_file(
        sandbox_id: SandboxId,
        path: RemotePath,
        encoding: Annotated[Encoding | None, Field(
            description="text or base64; default: text when the file is UTF-8")] = None,
    ) -> FileContent:
        with tempfile.TemporaryDirectory(prefix="sandboxer-mcp-") as d:
            tmp = Path(d) / "download"
            size: int = await call(lambda: client.download(sandbox_id, path, tmp,
                                                      max_bytes=MAX_FILE))
            data = tmp.read_bytes()
        used, text = _encode(data, encoding)
        return FileContent.model_validate({"sandbox_id": sandbox_id, "path": path,
                                           "bytes": size, "encoding": used, "content": text})
