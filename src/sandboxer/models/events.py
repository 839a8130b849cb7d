"""Events appended to the outbox in the transaction of each state change (docs/architecture.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel

EVENT_SCHEMA: Final = "sandboxer.event/v1"
EventType = Literal[
    "sandbox.created",
    "sandbox.ready",
    "sandbox.failed",
    "sandbox.unreachable",
    "sandbox.extended",
    "sandbox.expired",
    "sandbox.destroyed",
    # Lifecycle of long-lived sandboxes (an idle action is one of these, with its reason).
    "sandbox.stopped",
    "sandbox.started",
    "sandbox.paused",
    "sandbox.resumed",
    # A pooled sandbox handed to a caller; secrets bound again after a restart.
    "sandbox.claimed",
    "sandbox.restored",
    # Snapshots (sandboxer.snapshot/v1 payload; ``sandbox_id`` is the snapshotted sandbox):
    # recorded, failed to record, deleted (``reason``: deleted, or expired when its
    # retention ended).
    "snapshot.created",
    "snapshot.failed",
    "snapshot.deleted",
]


class Event(StrictModel):
    """One state change; ``payload`` is the SandboxStatus document at that moment (the
    SnapshotStatus document for ``snapshot.*``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["sandboxer.event/v1"] = Field(EVENT_SCHEMA, alias="schema")
    id: str
    seq: int
    type: EventType
    sandbox_id: str
    time: datetime
    payload: dict[str, Any]
    delivered_at: datetime | None = None
    # State Hub delivery state (issue 8): delivered, pending (never tried) or retrying.
    delivery: Literal["delivered", "pending", "retrying"] = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
