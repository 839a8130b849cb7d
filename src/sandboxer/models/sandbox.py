"""A sandbox as `get --json`, the API and State Hub see it (docs/architecture.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, get_args

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel
from sandboxer.models.reachability import Reachability
from sandboxer.values import FINAL_STATES, LIVE_STATES

SANDBOX_SCHEMA: Final = "sandboxer.sandbox/v1"
# The names are sandboxer.values' (no pydantic, for the store and the CLI); a unit test
# keeps this Literal equal to values.STATES.
State = Literal["provisioning", "ready", "unreachable", "stopped", "paused", "destroying",
                "destroyed", "failed"]
STATES: tuple[State, ...] = get_args(State)
__all__ = ["FINAL_STATES", "LIVE_STATES", "SANDBOX_SCHEMA", "STATES", "SandboxStatus", "State"]


class SandboxStatus(StrictModel):
    """The public view of one sandbox. Never carries a secret value or a handle."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["sandboxer.sandbox/v1"] = Field(SANDBOX_SCHEMA, alias="schema")
    id: str
    name: str | None = None
    profile: str
    extension: str
    target: str | None = None
    state: State
    reason: str | None = None
    actor: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    # When idle handling last saw it active (a session, CPU used): sandboxes of a profile
    # with ``idle`` only (sandboxer.idling); None before its first sample and otherwise.
    last_active_at: datetime | None = None
    snapshot: str | None = Field(None, description="the snapshot it was created from "
                                 "(create --from-snapshot, fork); null otherwise")
    reachability: Reachability | None = None
    error: str | None = None

    def document(self) -> dict[str, Any]:
        """The schema-tagged JSON document (``schema`` key, RFC 3339 times)."""
        return self.model_dump(mode="json", by_alias=True)
