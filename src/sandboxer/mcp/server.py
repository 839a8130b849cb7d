"""The MCP server: seven tools over one Client, acting as the actor of SANDBOXER_TOKEN.

With ``SANDBOXER_URL`` set the tools call that server through the HttpClient (the token is
its bearer token); without it they run in this process over ``$SANDBOXER_HOME``, and the
token is looked up in the local token table for its actor (an admin token sees all). Tool
errors are one paragraph of text (``SandboxerError.render``, redacted) and never a
traceback; results are the same JSON documents the API returns.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import SandboxerError
from sandboxer.secrets.redaction import redact

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from sandboxer.client import Client

log = logging.getLogger(__name__)
T = TypeVar("T")
INSTRUCTIONS = (
    "sand-boxer provisions isolated, leased sandboxes from named profiles and tells you how "
    "to reach them over SSH. list_profiles shows what can be created; create_sandbox returns "
    "once the sandbox is ready, with its reachability descriptor (ssh_command); destroy it "
    "when done (leases also expire on their own)."
)


def make_client(settings: Settings) -> Client:
    """HttpClient against SANDBOXER_URL, or LocalClient as the token's actor."""
    from sandboxer.client import make_client as make

    return make(settings, as_token=True)


def build(client: Client) -> MCPServer[Any]:
    """The MCP server with its tools bound to ``client``."""
    import anyio.to_thread
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from sandboxer import __version__

    server: MCPServer[Any] = MCPServer("sand-boxer", version=__version__,
                                       instructions=INSTRUCTIONS)
    lock = threading.Lock()  # one client, one store connection: one call at a time

    def locked(fn: Callable[[], T]) -> T:
        with lock:
            return fn()

    async def call(fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(locked, fn)
        except SandboxerError as e:
            raise ToolError(f"{e.code}: {redact(e.render())}") from None
        except Exception as e:  # clear text, never a traceback; the log keeps the detail
            log.error("tool call failed unexpectedly: %s", redact(f"{type(e).__name__}: {e}"))
            raise ToolError(f"unexpected: {type(e).__name__}: {redact(str(e))}") from None

    @server.tool(description="The profiles sandboxes can be created from.")
    async def list_profiles() -> dict[str, Any]:
        return {"schema": "sandboxer.profiles/v1", "items": await call(client.list_profiles)}

    @server.tool(description="Create a sandbox from a profile and wait until it is ready "
                 "(or failed). ttl like 30m, 8h, 2d (at most the profile's ttl.max); labels "
                 "are key=value strings. Returns the sandbox with its reachability.")
    async def create_sandbox(profile: str, ttl: str | None = None,
                             labels: dict[str, str] | None = None,
                             name: str | None = None) -> dict[str, Any]:
        status = await call(lambda: client.create(profile, ttl=ttl, labels=labels or {},
                                                  name=name))
        return dict(status.document())

    @server.tool(description="One sandbox by id (sbx-…), in any state.")
    async def get_sandbox(sandbox_id: str) -> dict[str, Any]:
        return await call(lambda: client.get_document(sandbox_id))

    @server.tool(description="Your sandboxes: live ones by default; all=true adds destroyed "
                 "and failed; state filters (provisioning, ready, destroying, destroyed, "
                 "failed).")
    async def list_sandboxes(state: list[str] | None = None, profile: str | None = None,
                             all: bool = False) -> dict[str, Any]:
        items = await call(lambda: client.list_documents(states=state or None,
                                                         profile=profile, all=all))
        return {"schema": "sandboxer.sandboxes/v1", "items": items}

    @server.tool(description="Renew a ready sandbox's lease to now + ttl (e.g. 2h), never "
                 "past the profile's ttl.max from creation.")
    async def extend_sandbox(sandbox_id: str, ttl: str) -> dict[str, Any]:
        status = await call(lambda: client.extend(sandbox_id, ttl))
        return dict(status.document())

    @server.tool(description="Destroy a sandbox; idempotent. Returns its final state.")
    async def destroy_sandbox(sandbox_id: str) -> dict[str, Any]:
        return await call(lambda: client.destroy_document(sandbox_id))

    @server.tool(description="How to reach a ready sandbox: host, port, user, identity_file, "
                 "pinned known_hosts line and a ready-to-run ssh_command.")
    async def get_reachability(sandbox_id: str) -> dict[str, Any]:
        reach = await call(lambda: client.reachability(sandbox_id))
        return reach.model_dump(mode="json", by_alias=True)

    return server


def run() -> int:
    """`sandboxer mcp`: serve on stdio until the client closes it."""
    import anyio

    from sandboxer.secrets import redaction

    logging.basicConfig(level=envvars.mcp_log_level(os.environ),
                        format="sandboxer mcp: %(levelname)s %(name)s: %(message)s")
    redaction.install()
    server = build(make_client(Settings.from_env()))
    anyio.run(server.run_stdio_async)
    return 0
