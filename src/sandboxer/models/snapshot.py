"""A snapshot as `snapshots show --json`, the API and State Hub see it (docs/architecture.md).

A snapshot records a sandbox's data (ext.local: its workspace; compose: the main
service's filesystem and its named volumes; a VM: its disk) with the profile it came
from and a content hash, never a secret value. It belongs to the actor of its sandbox,
follows the same access rules, and lives until its retention ends (``expires_at``); the
reaper then deletes it. ``create --from-snapshot`` and ``fork`` start a new sandbox from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, get_args

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel

SNAPSHOT_SCHEMA: Final = "sandboxer.snapshot/v1"
# The names are sandboxer.values.SNAPSHOT_STATES' (a unit test keeps them equal).
SnapshotState = Literal["creating", "ready", "deleting", "deleted", "failed"]
SNAPSHOT_STATES: tuple[SnapshotState, ...] = get_args(SnapshotState)


class SnapshotStatus(StrictModel):
    """The public view of one snapshot. Never carries a secret value or an artifact."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["sandboxer.snapshot/v1"] = Field(SNAPSHOT_SCHEMA, alias="schema")
    id: str = Field(description="snap- followed by 10 base32 characters")
    name: str | None = None
    sandbox_id: str = Field(description="the sandbox it was taken of (it may be gone since)")
    profile: str = Field(description="the profile of that sandbox, the default of a fork")
    extension: str
    target: str | None = Field(None, description="where its data lives; a sandbox made "
                               "from it is placed there")
    state: SnapshotState
    reason: str | None = None
    actor: str | None = None
    created_at: datetime
    expires_at: datetime = Field(description="end of its retention; the reaper deletes it")
    size_bytes: int | None = Field(None, description="bytes the extension stored")
    content_hash: str | None = Field(None, description="sha256:<hex> of the recorded data, "
                                     "as the extension defines it")
    error: str | None = None

    def document(self) -> dict[str, Any]:
        """The schema-tagged JSON document (``schema`` key, RFC 3339 times)."""
        return self.model_dump(mode="json", by_alias=True)
