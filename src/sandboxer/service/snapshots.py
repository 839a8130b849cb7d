"""The snapshot operations of the service: snapshot, show, list, delete, fork.

Values are checked here once (a name, a duration, an actor, labels), as for every other
operation; who may see and change a snapshot is the manager's rule (``sandboxer.snapshots``:
an actor only its own, another's answers ``snapshot_not_found``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandboxer import checks
from sandboxer.access import Caller
from sandboxer.service.core import ServiceCore

if TYPE_CHECKING:
    from sandboxer.models.requests import ForkRequest, SnapshotRequest
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.snapshot import SnapshotStatus


class SnapshotOps(ServiceCore):
    """Snapshots of sandboxes, and forks."""

    async def snapshot(self, sandbox_id: str, req: SnapshotRequest, *,
                       caller: Caller | None = None) -> SnapshotStatus:
        """Record a snapshot of a ready, stopped or paused sandbox (left in its state)."""
        checks.name(req.name)  # the retention is checked against the profile's max
        try:
            return await self.manager.snapshot(sandbox_id, name=req.name, retain=req.retain,
                                               caller=caller)
        finally:
            self.prune_events()

    def get_snapshot(self, snapshot_id: str, *,
                     caller: Caller | None = None) -> SnapshotStatus:
        """One snapshot; unknown and another actor's answer alike (snapshot_not_found)."""
        return self.manager.get_snapshot(snapshot_id, caller=caller)

    def list_snapshots(self, *, sandbox_id: str | None = None, all: bool = False,
                       caller: Caller | None = None) -> list[SnapshotStatus]:
        """Snapshots holding data (every state with ``all``), oldest first; a non-admin
        sees only its own."""
        return self.manager.list_snapshots(sandbox_id=sandbox_id, caller=caller,
                                           all_states=all)

    async def delete_snapshot(self, snapshot_id: str, *,
                              caller: Caller | None = None) -> SnapshotStatus:
        """Remove a snapshot's data; idempotent (a deleted one is returned unchanged)."""
        try:
            return await self.manager.delete_snapshot(snapshot_id, caller=caller)
        finally:
            self.prune_events()

    async def fork(self, sandbox_id: str, req: ForkRequest, *,
                   caller: Caller | None = None) -> SandboxStatus:
        """A snapshot of the sandbox, then a new ready sandbox of its profile from it."""
        checks.name(req.name)
        checks.actor(req.actor)
        if req.ttl is not None:
            checks.ttl(req.ttl)
        try:
            return await self.manager.fork(sandbox_id, ttl=req.ttl, labels=dict(req.labels),
                                           name=req.name, actor=req.actor, caller=caller)
        finally:
            self.prune_events()
