"""The MCP server: its tools over one Client, acting as the actor of SANDBOXER_TOKEN.

With ``SANDBOXER_URL`` set the tools call that server through the HttpClient (the token is
its bearer token); without it they run in this process over ``$SANDBOXER_HOME``, and the
token is looked up in the local token table for its actor (an admin token sees all). The
tools, their schemas and their error format (``CODE: message``) are in sandboxer.mcp.tools.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from sandboxer import envvars
from sandboxer.config import Settings

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from sandboxer.client import Client

log = logging.getLogger(__name__)


def make_client(settings: Settings) -> Client:
    """HttpClient against SANDBOXER_URL, or LocalClient as the token's actor."""
    from sandboxer.client import make_client as make

    return make(settings, as_token=True)


def build(client: Client) -> MCPServer[Any]:
    """The MCP server with its tools bound to ``client`` (sandboxer.mcp.tools)."""
    from sandboxer.mcp.tools import build as tools

    return tools(client)


def run() -> int:
    """`sandboxer mcp`: serve on stdio until the client closes it."""
    import anyio

    from sandboxer import redaction

    logging.basicConfig(level=envvars.mcp_log_level(os.environ),
                        format="sandboxer mcp: %(levelname)s %(name)s: %(message)s")
    redaction.install()
    server = build(make_client(Settings.from_env()))
    anyio.run(server.run_stdio_async)
    return 0
