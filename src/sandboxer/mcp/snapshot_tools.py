"""The MCP tools of snapshots and forks (``snapshot_sandbox``, ``list_snapshots``,
``show_snapshot``, ``delete_snapshot``, ``fork_sandbox``), registered by ``tools.build``
with the same parameter types, annotations and error format as the others."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import Field

from sandboxer.mcp.tools import (
    TTL_TEXT,
    Labels,
    Name,
    SandboxId,
    SnapshotRef,
    Ttl,
    _annotations,
)
from sandboxer.models.responses import SnapshotList
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.models.snapshot import SnapshotStatus

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from sandboxer.client import Client

T = TypeVar("T")
SnapshotId = Annotated[SnapshotRef, Field(description="a snapshot id, e.g. snap-abcdefghij")]


def register(server: MCPServer[Any], client: Client,
             call: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
    """Add the snapshot tools to ``server``; ``call`` runs a client call off the loop."""
    reads = {"read_only": True, "idempotent": True}

    @server.tool(description="Record a snapshot of a sandbox's data (ready, stopped or "
                 "paused; it stays in its state). Returns the snapshot once ready; "
                 "create_sandbox with from_snapshot starts a sandbox from it, fork_sandbox "
                 "does both at once.",
                 annotations=_annotations("Snapshot a sandbox"))
    async def snapshot_sandbox(
        sandbox_id: SandboxId,
        name: Annotated[Name | None, Field(description="a free-form name to show")] = None,
        retain: Annotated[Ttl | None, Field(
            description=f"how long it is kept, {TTL_TEXT}; default the profile's "
            "snapshot.retain, at most its snapshot.max")] = None,
    ) -> SnapshotStatus:
        status: SnapshotStatus = await call(lambda: client.snapshot(sandbox_id, name=name,
                                                                     retain=retain))
        return status

    @server.tool(description="Your snapshots: those holding data (creating, ready, "
                 "deleting) by default; all=true adds deleted and failed.",
                 annotations=_annotations("List snapshots", **reads))
    async def list_snapshots(
        sandbox_id: Annotated[SandboxId | None, Field(
            description="only the snapshots of this sandbox")] = None,
        all: Annotated[bool, Field(description="include deleted and failed")] = False,
    ) -> SnapshotList:
        items = await call(lambda: client.list_snapshots(sandbox_id=sandbox_id, all=all))
        return SnapshotList.model_validate({"schema": "sandboxer.snapshots/v1",
                                            "items": [s.document() for s in items]})

    @server.tool(description="One snapshot by id (snap-…), in any state.",
                 annotations=_annotations("Show a snapshot", **reads))
    async def show_snapshot(snapshot_id: SnapshotId) -> SnapshotStatus:
        status: SnapshotStatus = await call(lambda: client.get_snapshot(snapshot_id))
        return status

    @server.tool(description="Delete a snapshot's data; idempotent. Sandboxes created from "
                 "it are not affected.",
                 annotations=_annotations("Delete a snapshot", destructive=True,
                                          idempotent=True))
    async def delete_snapshot(snapshot_id: SnapshotId) -> SnapshotStatus:
        status: SnapshotStatus = await call(lambda: client.delete_snapshot(snapshot_id))
        return status

    @server.tool(description="Fork a sandbox: snapshot it and create a new sandbox of the "
                 "same profile from that data, with its own lease, keys and secrets; waits "
                 "until it is ready. Returns the new sandbox with its reachability.",
                 annotations=_annotations("Fork a sandbox", open_world=True))
    async def fork_sandbox(
        sandbox_id: SandboxId,
        ttl: Annotated[Ttl | None, Field(
            description=f"the new sandbox's lease, {TTL_TEXT}; default the profile's "
            "ttl.default")] = None,
        labels: Annotated[Labels | None, Field(
            description="labels added to the original's")] = None,
        name: Annotated[Name | None, Field(description="a free-form name to show")] = None,
    ) -> SandboxStatus:
        status: SandboxStatus = await call(lambda: client.fork(
            sandbox_id, ttl=ttl, labels=labels or {}, name=name))
        return status
