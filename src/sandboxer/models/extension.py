"""The values core and extensions exchange: targets, handles, endpoints, observations.

They live here, not in ``extensions/base.py``, so that placement, reachability, the store
and the shells need no extension module to name them (``extensions.base`` re-exports them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sandboxer.models.base import StrictModel
from sandboxer.models.common import HostName, UserName


class Target(StrictModel):
    """A place an extension can put a sandbox."""

    name: str
    extension: str
    kind: Literal["self-hosted", "cloud"] = "self-hosted"
    healthy: bool = True
    reason: str | None = None
    capacity: int | None = None
    used: int = 0
    # What profiles pin or prefer by (``placement``); the operator's, from `targets add`.
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def free(self) -> int | None:
        return None if self.capacity is None else max(0, self.capacity - self.used)


class Handle(StrictModel):
    """What an extension returns to find its sandbox again. JSON, never a secret."""

    sandbox_id: str
    extension: str
    target: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Endpoint(StrictModel):
    """The direct SSH endpoint of a sandbox with its pinned host key."""

    host: HostName  # every argv builder takes these from here: checked at the source
    port: int
    user: UserName
    host_key: str  # "ssh-ed25519 AAAA..." (public, OpenSSH format)
    identity_file: str
    known_hosts_file: str


class Observed(StrictModel):
    """What ``inspect`` saw: is the sandbox still there?"""

    live: bool
    detail: str | None = None


class SnapshotArtifact(StrictModel):
    """What ``Snapshots.snapshot`` recorded, for core to store and hand back: to
    ``provision`` (``ProvisionRequest.snapshot``) and to ``delete_snapshot``. JSON, never a
    secret; ``data`` is the extension's own (paths, image ids, volume names)."""

    snapshot_id: str
    extension: str
    target: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    size_bytes: int | None = None
    content_hash: str | None = None  # "sha256:<hex>"


class Activity(StrictModel):
    """What ``ReportsActivity.activity`` saw of a live sandbox at one moment.

    ``cpu_seconds`` is cumulative (every process of the sandbox, since it started or
    since its last start): core compares two samples to tell whether it used CPU in
    between. ``sessions``: SSH sessions open now.
    """

    sessions: int = 0
    cpu_seconds: float = 0.0
    detail: str | None = None
