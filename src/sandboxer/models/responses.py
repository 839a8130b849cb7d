"""The documents the HTTP API and the MCP tools answer with, as models (the OpenAPI
document and the MCP output schemas are generated from them).

Each is tagged by its ``schema`` string. They describe what the server already sends: a
route builds its document from the service's results and the test driving a client made
by openapi-python-client (tests/integration/api/test_generated_client.py) fails when a
model here and the wire disagree. Documents whose fields belong to an extension (targets,
image builds) declare what every extension's document has and allow the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel
from sandboxer.models.events import Event
from sandboxer.models.profile import Profile
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.models.snapshot import SnapshotStatus

__all__ = [
    "ErrorDocument", "EventList", "ImageBuilt", "Plan", "ProfileDocument", "ProfileList",
    "ProfileSummary", "PublishReport", "ReconcileReport", "RemovedHandle", "SandboxIdentity",
    "SandboxList", "SandboxStatus", "SecretRefCheck", "SnapshotList", "SnapshotStatus",
    "TargetAdded", "TargetCheck",
    "TargetCheckList", "TargetList", "TargetRemoved", "TargetSummary", "TokenCreated",
    "TokenList", "TokenRemoved", "TokenSummary", "ValidationReport", "ValidationResult",
    "Whoami",
]


class _Document(StrictModel):
    """Every field is on the wire, null or not: the schema says so (``required``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class _Open(StrictModel):
    """A document some of whose fields an extension chooses."""

    model_config = ConfigDict(extra="allow", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class ErrorDocument(_Document):
    """Every error: the stable ``code``, the CLI's ``exit_code`` for it, one redacted
    paragraph of ``message`` (sandboxer.errors maps the HTTP status from the code)."""

    schema_: Literal["sandboxer.error/v1"] = Field("sandboxer.error/v1", alias="schema")
    code: str = Field(description="stable error code, e.g. sandbox_not_found")
    exit_code: int = Field(description="what the CLI exits with for this error")
    message: str = Field(description="one paragraph for a person; secret values are ***")


class Whoami(_Document):
    schema_: Literal["sandboxer.whoami/v1"] = Field("sandboxer.whoami/v1", alias="schema")
    actor: str
    admin: bool


class ProfileSummary(_Document):
    id: str
    description: str
    extension: str
    source: str = Field(description="the file the profile was read from")


class ProfileList(_Document):
    schema_: Literal["sandboxer.profiles/v1"] = Field("sandboxer.profiles/v1", alias="schema")
    items: list[ProfileSummary]


class ProfileDocument(Profile):
    """One profile after ``extends`` is merged."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)

    schema_: Literal["sandboxer.profile/v1"] = Field("sandboxer.profile/v1", alias="schema")


class ValidationResult(_Document):
    file: str
    id: str | None
    ok: bool
    error: str | None = Field(description="why the file is refused (null when ok)")
    code: str | None = Field(description="the error code (null when ok)")


class ValidationReport(_Document):
    schema_: Literal["sandboxer.validation/v1"] = Field("sandboxer.validation/v1",
                                                        alias="schema")
    results: list[ValidationResult]


class SecretRefCheck(_Document):
    name: str
    ref: str
    status: Literal["ok", "error"]
    checked_by: str | None
    code: str | None
    reason: str | None


class Plan(_Document):
    """What ``create`` would do (``dry_run``): nothing is created or resolved."""

    schema_: Literal["sandboxer.plan/v1"] = Field("sandboxer.plan/v1", alias="schema")
    profile: str
    extension: str
    target: str
    ttl: str
    actor: str | None
    labels: dict[str, str]
    secret_refs: list[SecretRefCheck]


class SandboxList(_Document):
    schema_: Literal["sandboxer.sandboxes/v1"] = Field("sandboxer.sandboxes/v1",
                                                       alias="schema")
    items: list[SandboxStatus]


class SnapshotList(_Document):
    schema_: Literal["sandboxer.snapshots/v1"] = Field("sandboxer.snapshots/v1",
                                                       alias="schema")
    items: list[SnapshotStatus]


class EventList(_Document):
    schema_: Literal["sandboxer.events/v1"] = Field("sandboxer.events/v1", alias="schema")
    items: list[Event]


class RemovedHandle(_Document):
    sandbox_id: str
    extension: str
    target: str | None


class ReconcileReport(_Document):
    schema_: Literal["sandboxer.reconcile/v1"] = Field("sandboxer.reconcile/v1",
                                                       alias="schema")
    removed: list[RemovedHandle] = Field(description="what no live sandbox claimed")


class TargetSummary(_Open):
    """One target; the other fields are its extension's configuration."""

    name: str
    extension: str


class TargetList(_Document):
    schema_: Literal["sandboxer.targets/v1"] = Field("sandboxer.targets/v1", alias="schema")
    items: list[TargetSummary]


class PooledSandbox(_Document):
    id: str
    state: str
    target: str | None
    created_at: str


class Pool(_Document):
    """``sandboxer.pool/v1``: one profile's warm pool (docs/cli.md#pools)."""

    schema_: Literal["sandboxer.pool/v1"] = Field("sandboxer.pool/v1", alias="schema")
    profile: str
    extension: str | None
    size: int = Field(description="sandboxes the profile keeps unclaimed (0: no pool now)")
    max_age: str | None = Field(description="an unclaimed one this old is replaced")
    ready: int
    provisioning: int
    unreachable: int
    destroying: int
    sandboxes: list[PooledSandbox] | None = Field(
        None, description="the unclaimed sandboxes; only an admin sees them")


class PoolList(_Document):
    schema_: Literal["sandboxer.pools/v1"] = Field("sandboxer.pools/v1", alias="schema")
    items: list[Pool]


class TargetAdded(_Open):
    schema_: Literal["sandboxer.target/v1"] = Field("sandboxer.target/v1", alias="schema")
    name: str


class TargetCheck(_Open):
    name: str
    ok: bool
    error: str | None = None


class TargetCheckList(_Document):
    schema_: Literal["sandboxer.target-check/v1"] = Field("sandboxer.target-check/v1",
                                                          alias="schema")
    items: list[TargetCheck]


class TargetRemoved(_Document):
    schema_: Literal["sandboxer.target-removed/v1"] = Field("sandboxer.target-removed/v1",
                                                            alias="schema")
    name: str


class ImageBuilt(_Open):
    """What a build made; the other fields are the building extension's."""

    schema_: Literal["sandboxer.image/v1"] = Field("sandboxer.image/v1", alias="schema")
    image: str
    target: str


class DoctorCheck(_Document):
    """One check of `sandboxer doctor`; ``fix`` only when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str | None


class DoctorReport(_Document):
    schema_: Literal["sandboxer.doctor/v1"] = Field("sandboxer.doctor/v1", alias="schema")
    ok: bool
    checks: list[DoctorCheck]


class TokenSummary(_Document):
    """A token as `tokens list` shows it: its id (from its hash), never the token."""

    id: str = Field(description="tok-… (from the token's sha256 hash)")
    actor: str
    admin: bool
    created_at: str
    last_used_at: str | None = Field(description="updated at most once a minute")


class TokenCreated(TokenSummary):
    """A new token: the only document that ever carries one."""

    schema_: Literal["sandboxer.token/v1"] = Field("sandboxer.token/v1", alias="schema")
    token: str = Field(description="the bearer token (sbxt_…), shown only now")


class TokenList(_Document):
    schema_: Literal["sandboxer.tokens/v1"] = Field("sandboxer.tokens/v1", alias="schema")
    items: list[TokenSummary]


class TokenRemoved(TokenSummary):
    schema_: Literal["sandboxer.token-removed/v1"] = Field("sandboxer.token-removed/v1",
                                                           alias="schema")


class PublishReport(_Document):
    """One pass of delivering the outbox to State Hub (`sandboxer events publish`)."""

    schema_: Literal["sandboxer.publish/v1"] = Field("sandboxer.publish/v1", alias="schema")
    delivered: int
    failed: int
    remaining: int = Field(description="events still undelivered after the pass")
    errors: list[str]
    skipped: bool = Field(description="another process (the server's own publisher) "
                          "holds the publisher lock: nothing was done")


class SandboxIdentity(_Document):
    """The private key a ready sandbox is reached with, for its owner's `sandboxer ssh`
    on another machine."""

    schema_: Literal["sandboxer.identity/v1"] = Field("sandboxer.identity/v1", alias="schema")
    sandbox_id: str
    private_key: str = Field(description="OpenSSH private key (PEM); keep it 0600")
