"""The extension contract (DESIGN §4) and the lazy, entry-point based registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.models.base import StrictModel
from sandboxer.models.common import HostName, UserName

if TYPE_CHECKING:
    from sandboxer.models.profile import Profile

ENTRY_POINT_GROUP = "sandboxer.extensions"
LABEL = "sandboxer.id"


class Target(StrictModel):
    """A place an extension can put a sandbox."""

    name: str
    extension: str
    kind: Literal["self-hosted", "cloud"] = "self-hosted"
    healthy: bool = True
    reason: str | None = None
    capacity: int | None = None
    used: int = 0

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


@dataclass
class ProvisionRequest:
    """Everything an extension needs to provision one sandbox (no secret values)."""

    sandbox_id: str
    profile: Profile
    spec: BaseModel
    target: Target
    settings: Settings
    user: str
    labels: dict[str, str]
    env: dict[str, str]
    expires_at: datetime
    progress: Callable[[str], None] = field(default=lambda _msg: None)
    source: Path | None = None  # the profile file, for paths relative to it


class Extension(ABC):
    """A provisioning backend. Subclasses are registered under ``sandboxer.extensions``."""

    name: ClassVar[str]
    Spec: ClassVar[type[BaseModel]]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def parse_spec(self, profile: Profile) -> BaseModel:
        """Validate the profile's ``spec`` with this extension's Spec model."""
        from pydantic import ValidationError

        try:
            return self.Spec.model_validate(profile.spec)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in ("spec", *first["loc"]))
            raise InvalidInput(
                f"profile {profile.id}: {where}: {first['msg']}",
                hint=f"see the {self.name} spec in docs/meta-framework.md",
            ) from e

    @abstractmethod
    def targets(self, config: Settings) -> list[Target]:
        """Targets this extension can place on, each marked healthy or not with a reason."""

    def check(self, profile: Profile, spec: BaseModel, target: Target,
              source: Path | None) -> None:
        """Refuse (InvalidInput) what this target must not run, before anything exists.

        Called after placement; the default accepts everything the Spec model accepts.
        """
        return None

    async def probe(self, target: Target) -> Target:
        """Check a target's health and free capacity now (SSH, engine, ...).

        Called for each candidate before placement; the default trusts ``targets()``.
        Return a copy with ``healthy``/``reason``/``used`` filled in; never raise.
        """
        return target

    @abstractmethod
    async def provision(self, req: ProvisionRequest, secrets: Mapping[str, SecretStr]) -> Handle:
        """Create the sandbox and return its handle.

        Quick, and clean on failure: if it raises, whatever it created is already gone.
        ``secrets`` live in memory only and must not be written anywhere persistent.
        """

    @abstractmethod
    async def endpoint(self, handle: Handle) -> Endpoint:
        """The direct SSH endpoint (host, port, user, pinned host key)."""

    @abstractmethod
    async def inspect(self, handle: Handle) -> Observed:
        """Is the sandbox live or missing? Used by reconcile."""

    @abstractmethod
    async def destroy(self, handle: Handle) -> None:
        """Remove everything the sandbox owns. Idempotent: already gone is fine.

        Must work with a minimal handle (``data == {}``), finding resources by
        ``sandboxer.id`` so a create that failed half-way can be cleaned up.
        """

    @abstractmethod
    async def owned(self, target: Target) -> list[Handle]:
        """Every sandbox resource on ``target`` that carries a ``sandboxer.id`` label."""

    async def wait_ready(self, handle: Handle, timeout: float) -> None:
        """Return once an SSH command succeeds through the endpoint, else raise."""
        from sandboxer.extensions._ssh import ssh_probe

        await ssh_probe(await self.endpoint(handle), timeout=timeout)

    async def run(self, handle: Handle, command: str, timeout: float) -> tuple[int, str]:
        """Run ``command`` in the sandbox over SSH; returns (exit status, combined output)."""
        from sandboxer.extensions._ssh import ssh_run

        return await ssh_run(await self.endpoint(handle), command, timeout=timeout)


class BuildsImages(ABC):
    """Optional capability: build the images a profile's sandboxes need, so that
    ``sandboxer images build PROFILE`` works for any extension that has images."""

    @abstractmethod
    async def build_for_profile(self, profile: Profile, source: Path, *, target: str,
                                variables: dict[str, str], force: bool,
                                progress: Callable[[str], None]) -> dict[str, Any]:
        """Build (or find cached) every image ``profile`` needs on ``target``; return a
        ``sandboxer.image/v1`` body (``image``, ``target``, …). InvalidInput when the
        profile needs nothing that can be built."""


_cache: dict[str, type[Extension]] = {}


def available() -> list[str]:
    """Names of every registered extension (without importing them)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load(name: str) -> type[Extension]:
    """Import one extension by name, lazily, so a broken plugin breaks only itself."""
    if name in _cache:
        return _cache[name]
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        raise InvalidInput(
            f"unknown extension {name!r}",
            hint=f"registered extensions: {', '.join(available()) or 'none'}",
        )
    try:
        cls = eps[0].load()
    except Exception as e:
        raise ProvisionFailed(f"extension {name!r} failed to load: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Extension)):
        raise ProvisionFailed(f"entry point {name!r} does not name an Extension subclass")
    _cache[name] = cls
    return cls


def instance(name: str, settings: Settings) -> Extension:
    return load(name)(settings)


def key_paths(settings: Settings, sandbox_id: str) -> dict[str, Path]:
    """Per-sandbox key files under ``$SANDBOXER_HOME/keys`` (all 0600)."""
    k = settings.keys_dir
    return {
        "identity": k / sandbox_id,
        "identity_pub": k / f"{sandbox_id}.pub",
        "host_key": k / f"{sandbox_id}.host",
        "known_hosts": k / f"{sandbox_id}.known_hosts",
    }
