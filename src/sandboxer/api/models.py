"""Request bodies of the HTTP API: the service's typed requests (models/requests.py)."""

from __future__ import annotations

from sandboxer.models.requests import (
    DURATION,
    NAME,
    PROFILE_ID,
    CreateRequest,
    ExtendRequest,
    ForkRequest,
    ImageBuildRequest,
    NamedImageBuildRequest,
    ProfileFile,
    SnapshotRequest,
    TargetAddRequest,
    TokenAddRequest,
    ValidateRequest,
)

__all__ = ["DURATION", "NAME", "PROFILE_ID", "CreateRequest", "ExtendRequest",
           "ForkRequest", "ImageBuildRequest", "NamedImageBuildRequest", "ProfileFile",
           "SnapshotRequest", "TargetAddRequest", "TokenAddRequest", "ValidateRequest"]
