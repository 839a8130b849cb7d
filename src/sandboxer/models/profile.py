"""A profile: the named, declarative recipe for a sandbox (docs/architecture.md#profiles)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sandboxer.models.base import StrictModel
from sandboxer.models.common import Duration, Labels, UserName
from sandboxer.models.reachability import check_alias_template, check_name, check_port
from sandboxer.values import is_loader_variable, validate_actor

PROFILE_ID = re.compile(r"^profile\.[a-z0-9][a-z0-9-]*(?:\.[a-z0-9][a-z0-9-]*)*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Route = Literal["prefer-self-hosted", "self-hosted-only", "prefer-cloud", "cloud-only"]


class TTL(StrictModel):
    """Lease length: ``default`` for a new sandbox, ``max`` counted from creation;
    ``retain``: how long a sandbox whose lease ran out is kept stopped before it is
    destroyed (unset or 0: destroyed at once)."""

    default: Duration = timedelta(hours=1)
    max: Duration = timedelta(hours=8)
    retain: Duration | None = None

    @field_validator("retain", mode="before")
    @classmethod
    def _no_retain(cls, v: object) -> object:
        return None if v in (0, "0", "0s", "0m", "0h", "0d") else v

    @model_validator(mode="after")
    def _default_within_max(self) -> TTL:
        if self.default > self.max:
            raise ValueError("ttl.default must not exceed ttl.max")
        return self


class SecretRefSpec(StrictModel):
    """One secret to inject: the variable ``name`` inside the sandbox and where it lives."""

    name: str
    ref: str

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not ENV_NAME.fullmatch(v):
            raise ValueError(f"expected an environment variable name, got {v!r}")
        return v


class SetupSpec(StrictModel):
    """What runs in the sandbox after provision, and the environment it gets."""

    instructions: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    secret_refs: list[SecretRefSpec] = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"expected environment variable names, got {key!r}")
            if is_loader_variable(key):
                raise ValueError(
                    f"{key} changes how the dynamic loader or libc behaves and is refused "
                    "in setup.env; set it in the command that needs it")
        return v


class TunnelSpec(StrictModel):
    """An ops-bridge tunnel declaration; sand-boxer never starts the tunnel.

    Its presence declares a tunnel (``tunnel: {}`` too): ``alias`` defaults to ``{id}`` and
    ``local_port`` to ``auto``; ``via`` may stay unset for a tunnel ops-bridge does not carry.
    """

    via: str | None = None
    alias: str | None = None
    local_port: int | Literal["auto"] | None = None

    @field_validator("via")
    @classmethod
    def _via(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "via (an ops-bridge route id)")

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str | None) -> str | None:
        return None if v is None else check_alias_template(v)

    @field_validator("local_port", mode="before")
    @classmethod
    def _local_port(cls, v: object) -> object:
        return v if v is None or v == "auto" else check_port(v, "local_port (or auto)")


class ReachabilitySpec(StrictModel):
    """How consumers reach the sandbox: SSH user, warden identity hint, optional tunnel,
    and the ports of the sandbox's own loopback that ``ssh -L`` may reach (``forward``;
    nothing else is ever forwarded: not the host, not another sandbox)."""

    user: UserName = "sandbox"
    identity: str | None = None
    tunnel: TunnelSpec | None = None
    forward: list[int] = Field(default_factory=list, max_length=32)

    @field_validator("forward", mode="before")
    @classmethod
    def _forward(cls, v: object) -> object:
        if not isinstance(v, list):
            return v
        ports = [check_port(p, "reachability.forward (a port of the sandbox's loopback)")
                 for p in v]
        if len(set(ports)) != len(ports):
            raise ValueError("reachability.forward: each port once")
        return sorted(ports)

    @field_validator("identity")
    @classmethod
    def _identity(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "identity (a warden actor id)")


class PlacementSpec(StrictModel):
    """Where a profile's sandboxes may go, by target labels (``targets add --label``).

    ``pin``: only targets carrying every one of these labels; ``prefer``: targets carrying
    them come first. Among equals, the least loaded healthy target wins (spread)."""

    pin: Labels = Field(default_factory=dict)
    prefer: Labels = Field(default_factory=dict)


class IdleSpec(StrictModel):
    """Stop or pause a sandbox that was idle for ``after``: no SSH session open, no setup
    step running and no process of it using CPU in that window."""

    after: Duration
    action: Literal["stop", "pause"] = "stop"

    @field_validator("after")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("idle.after must be longer than 0s")
        return v


class PoolSpec(StrictModel):
    """Keep ``size`` sandboxes of this profile provisioned but unclaimed; one unclaimed
    for ``max_age`` is replaced by a fresh one."""

    size: int = Field(ge=0, le=1000)
    max_age: Duration = timedelta(hours=1)


class SnapshotSpec(StrictModel):
    """How long a snapshot of this profile's sandboxes is kept: ``retain`` unless
    ``snapshot --retain`` says otherwise, never longer than ``max``."""

    retain: Duration = timedelta(days=7)
    max: Duration = timedelta(days=30)

    @model_validator(mode="after")
    def _retain_within_max(self) -> SnapshotSpec:
        if self.retain > self.max:
            raise ValueError("snapshot.retain must not exceed snapshot.max")
        return self


class Profile(StrictModel):
    """A validated profile. ``spec`` is checked later by the extension's own Spec model."""

    id: str
    description: str = ""
    extends: str | None = None
    extension: str
    route: Route = "prefer-self-hosted"
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    actor: str | None = None
    ttl: TTL = Field(default_factory=TTL)
    labels: Labels = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    reachability: ReachabilitySpec = Field(default_factory=ReachabilitySpec)
    setup: SetupSpec = Field(default_factory=SetupSpec)
    idle: IdleSpec | None = None
    pool: PoolSpec | None = None
    snapshot: SnapshotSpec = Field(default_factory=SnapshotSpec)

    @field_validator("id", "extends")
    @classmethod
    def _profile_id(cls, v: str | None) -> str | None:
        if v is not None and not PROFILE_ID.fullmatch(v):
            raise ValueError(f"expected an id like profile.name, got {v!r}")
        return v

    @field_validator("actor")
    @classmethod
    def _actor(cls, v: str | None) -> str | None:
        return None if v is None else validate_actor(v)

    @field_validator("extension")
    @classmethod
    def _extension_name(cls, v: str) -> str:
        if not re.fullmatch(r"^ext\.[a-z0-9][a-z0-9-]*$", v):
            raise ValueError(f"expected an extension name like ext.local, got {v!r}")
        return v
