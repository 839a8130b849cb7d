"""Typed requests shared by the CLI, the HTTP API and MCP (the API's request bodies).

Shape only is checked here (types, unknown keys, sizes); what a value must look like — a
duration, an actor, a name, a known target — the application service checks once
(``sandboxer.checks``), so every transport gives the same error for the same
input. The patterns still appear in the JSON Schema (the OpenAPI document) for clients.
The read requests (``ListRequest``, ``EventsQuery``) are plain dataclasses in
``models/queries.py``, re-exported here, so the CLI's reads never import pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from sandboxer.models.base import StrictModel
from sandboxer.models.queries import EventsQuery, ListRequest
from sandboxer.values import ACTOR_PATTERN as ACTOR
from sandboxer.values import NAME_PATTERN as SANDBOX_NAME
from sandboxer.values import validate_labels

__all__ = ["CreateRequest", "EventsQuery", "ExtendRequest", "ForkRequest",
           "ImageBuildRequest", "ListRequest", "NamedImageBuildRequest", "ProfileFile",
           "SnapshotRequest", "TargetAddRequest", "TokenAddRequest", "ValidateRequest"]

PROFILE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DURATION = r"^[0-9]{1,9}[smhd]$"
SNAPSHOT = r"^snap-[a-z2-7]{10}$"


def _documented(pattern: str, description: str) -> Any:
    """A string whose ``pattern`` the service enforces (one message on every transport);
    the JSON Schema declares it for clients."""
    return Field(json_schema_extra={"pattern": pattern}, description=description)


ProfileId = Annotated[str, Field(pattern=PROFILE_ID, description="e.g. profile.local")]
Ttl = Annotated[str, _documented(DURATION, "e.g. 90s, 15m, 2h, 7d")]
Labels = Annotated[dict[str, str], Field(max_length=64), AfterValidator(validate_labels)]


class CreateRequest(StrictModel):
    """``POST /v1/sandboxes``, ``sandboxer create``, MCP ``create_sandbox``."""

    profile: ProfileId
    ttl: Ttl | None = None
    actor: Annotated[str, _documented(
        ACTOR, "owner; a non-admin token may only name its own actor")] | None = None
    labels: Labels = Field(default_factory=dict)
    target: Annotated[str, _documented(NAME, "pin a target")] | None = None
    name: Annotated[str, _documented(SANDBOX_NAME, "a free-form name")] | None = None
    dry_run: bool = Field(False, description="validate and plan; create nothing")
    from_snapshot: Annotated[str, Field(
        max_length=64, json_schema_extra={"pattern": SNAPSHOT},
        description="start from this ready snapshot's data (snap-…), on its target; the "
        "profile's extension must be the snapshot's")] | None = None


class SnapshotRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/snapshot``, ``sandboxer snapshot``, MCP
    ``snapshot_sandbox``."""

    name: Annotated[str, _documented(SANDBOX_NAME, "a free-form name")] | None = None
    retain: Annotated[str, _documented(
        DURATION, "how long it is kept; default the profile's snapshot.retain, at most "
        "its snapshot.max")] | None = None


class ForkRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/fork``, ``sandboxer fork``, MCP ``fork_sandbox``: a
    snapshot, then a new sandbox of the same profile from it."""

    ttl: Ttl | None = None
    actor: Annotated[str, _documented(
        ACTOR, "owner; default the original's; a non-admin token may only name its own "
        "actor")] | None = None
    labels: Labels = Field(default_factory=dict,
                           description="added to the original's labels")
    name: Annotated[str, _documented(SANDBOX_NAME, "a free-form name")] | None = None


class ExtendRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/extend``."""

    ttl: Ttl


class ProfileFile(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=255,
                               pattern=r"^[A-Za-z0-9._-]+\.ya?ml$")]
    content: Annotated[str, Field(max_length=262_144)]


class ValidateRequest(StrictModel):
    """``POST /v1/profiles/validate``: profile files by name and content."""

    files: Annotated[list[ProfileFile], Field(min_length=1, max_length=50)]


class TargetAddRequest(StrictModel):
    """``POST /v1/targets`` (admin): ``sandboxer targets add`` without the prompt."""

    name: Annotated[str, Field(pattern=NAME)]
    url: Annotated[str, Field(max_length=512, pattern=r"^[a-z][a-z0-9+.-]*://",
                              description="the target's URL; its scheme picks the extension "
                              "(ssh:// for ext.compose-ssh) unless `extension` names one")]
    extension: Annotated[str | None, Field(max_length=64, pattern=r"^ext\.[a-z0-9-]+$")] = None
    identity: Annotated[str | None, Field(max_length=4096)] = None
    public_host: Annotated[str | None, Field(max_length=253)] = None
    capacity: Annotated[int | None, Field(ge=1, le=100_000)] = None
    kind: Literal["self-hosted", "cloud"] = "self-hosted"
    allow: Annotated[list[str], Field(max_length=16)] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict,
                           description="what profiles' placement pins or prefers by")
    host_key_fingerprint: Annotated[str | None, Field(max_length=128)] = None
    accept_new_host_key: bool = Field(
        False, description="pin the host key seen at first contact (like --yes)")


class ImageBuildRequest(StrictModel):
    """``POST /v1/images/{name}/build`` (admin)."""

    target: Annotated[str, Field(pattern=NAME)] = "local"
    variables: Annotated[dict[str, Annotated[str, Field(max_length=4096)]],
                         Field(max_length=64)] = Field(default_factory=dict)
    force: bool = False


def _path_parts(value: str) -> str:
    """A name that may be a file path: no part longer than a file name can be (255)."""
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split("/")):
        raise ValueError("each part of a path is at most 255 bytes")
    return value


class NamedImageBuildRequest(ImageBuildRequest):
    """``POST /v1/images/build`` (admin): any name `sandboxer images build` takes, also
    one that is no URL path segment — a Packer template path, resolved on the server's
    machine (its Packer directory, or an absolute path there), never uploaded."""

    name: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$",
                               description="a profile id, a recipe name or a Packer "
                               "template path on the server's machine"),
                    AfterValidator(_path_parts)]


class TokenAddRequest(StrictModel):
    """``POST /v1/tokens`` (admin): ``sandboxer tokens add ACTOR [--admin]``."""

    actor: Annotated[str, _documented(ACTOR, "who the token acts as, e.g. agt")]
    admin: bool = Field(False, description="the token may see and change every actor's "
                        "sandboxes and do the admin operations")
