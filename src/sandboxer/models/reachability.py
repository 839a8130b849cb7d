"""The versioned reachability descriptor handed to consumers (DESIGN §7)."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel

REACHABILITY_SCHEMA: Final = "sandboxer.reachability/v1"


class Tunnel(StrictModel):
    alias: str
    local_port: int


class TunnelStatus(StrictModel):
    command: str
    doc: str


class Reachability(StrictModel):
    """How to reach a ready sandbox: direct SSH endpoint, pinned host key, tunnel metadata."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["sandboxer.reachability/v1"] = Field(REACHABILITY_SCHEMA, alias="schema")
    sandbox_id: str
    transport: Literal["ssh"] = "ssh"
    host: str
    port: int
    user: str
    identity_file: str
    known_hosts: str
    ssh_command: str
    tunnel: Tunnel | None = None
    tunnel_via: str | None = None
    identity: str | None = None
    tunnel_status: TunnelStatus | None = None
