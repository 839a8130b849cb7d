"""`sandboxer mcp` — an MCP server on stdio for agent harnesses."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser("mcp", help="serve MCP tools on stdio as the actor of SANDBOXER_TOKEN")
    m.set_defaults(handler=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    from sandboxer.mcp.server import run

    return run()
