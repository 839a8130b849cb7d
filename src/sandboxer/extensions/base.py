"""The extension contract (docs/architecture.md) and the lazy, entry-point based registry."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, SecretStr

from sandboxer import entrypoints
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProvisionFailed, SandboxerError
from sandboxer.models.extension import (
    Activity,
    Endpoint,
    Handle,
    Observed,
    SnapshotArtifact,
    Target,
)
from sandboxer.openssh import key_paths

if TYPE_CHECKING:
    from sandboxer.models.doctor import Check
    from sandboxer.models.profile import Profile
    from sandboxer.models.target import TargetRecord

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "sandboxer.extensions"
# Light, stdlib-only fast paths an extension may register by the same name (see FastPaths).
FAST_PATH_GROUP = "sandboxer.fast_paths"
LABEL = "sandboxer.id"
# Re-exported: the value types live in models/, the key paths in sandboxer.openssh.
__all__ = ["ENTRY_POINT_GROUP", "FAST_PATH_GROUP", "LABEL", "Activity", "Binds",
           "BuildsImages", "CopiesFiles", "DoctorChecks", "Endpoint", "Extension",
           "FastPaths", "Handle", "Host", "Housekeeping", "ManagesTargets", "Observed",
           "Pauses", "ProvisionRequest", "ReportsActivity", "ServesEndpoints",
           "SnapshotArtifact", "Snapshots", "StopsAndStarts", "Target", "available",
           "fast_paths", "instance", "key_paths", "load"]


class Host(Protocol):
    """What core hands an extension instead of the store or the manager.

    Implemented by the manager (``sandboxer.manager``); every method is scoped to the one
    extension the host was made for.
    """

    settings: Settings
    extension: str

    def targets(self) -> list[TargetRecord]:
        """This extension's persisted targets (``sandboxer targets add``), by name."""

    def live_count(self, target: str) -> int:
        """Live sandboxes (provisioning, ready, destroying) of this extension on ``target``."""

    def live_handles(self) -> list[Handle]:
        """Handles of this extension's live sandboxes (to restore or keep them)."""

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        """The stored state of each known id; unknown ids are left out."""

    def ensure_keeper(self) -> None:
        """Start core's lease keeper for this extension's sandboxes unless one runs.

        Called by an extension whose sandboxes outlive the process that made them (a VM)
        so that their leases end even when nobody runs a CLI command.
        """

    async def reap(self) -> int:
        """Reap this extension's expired leases now; how many were reaped."""

    async def refresh_reachability(self, sandbox_id: str) -> bool:
        """Store a ready sandbox's descriptor again from its endpoint; True if it changed."""

    async def destroy(self, sandbox_id: str) -> dict[str, Any]:
        """Destroy a sandbox the way ``sandboxer destroy`` does; its final document."""

    def busy(self) -> bool:
        """True while the process hosting this extension serves requests (the local
        service): its housekeeping should not end for being idle meanwhile."""

    async def rebind(self, sandbox_id: str) -> bool:
        """Give a live sandbox that restarted (its endpoint process, its container, its
        host) its secrets back: core resolves its profile's refs again at the boundary
        (values are never stored) and calls ``Binds.bind``. False when a ref no longer
        resolves: core has then stopped the sandbox with a reason naming the secret,
        instead of letting it run without it."""


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
    # Start from this snapshot's data (``create --from-snapshot``, ``fork``): only ever
    # handed to an extension that implements ``Snapshots``, on the snapshot's target.
    snapshot: SnapshotArtifact | None = None
    # Ports of the sandbox's own loopback that ``ssh -L`` may reach (the profile's
    # ``reachability.forward``): the endpoint allows these and nothing else.
    forward: tuple[int, ...] = ()


class Extension(ABC):
    """A provisioning backend. Subclasses are registered under ``sandboxer.extensions``."""

    name: ClassVar[str]
    Spec: ClassVar[type[BaseModel]]

    def __init__(self, settings: Settings, host: Host | None = None) -> None:
        self.settings = settings
        self._host = host

    @property
    def host(self) -> Host:
        """What core hands this extension (persisted targets, live counts, lease keeping).

        Extensions never open the store or start a manager themselves; the manager that
        loads an extension always gives it a host.
        """
        if self._host is None:
            raise ProvisionFailed(f"{self.name} was used without a host (core's manager "
                                  "gives every extension it loads one)")
        return self._host

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

    def keeper_interval(self) -> float:
        """Seconds between two lease checks of core's keeper process for this extension
        (``Host.ensure_keeper``, ``Housekeeping``)."""
        return 2.0

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
        """Is the sandbox live or missing, seen from the extension's own side?

        Part of the contract every extension answers, for checking one sandbox without
        listing a whole target: reconcile asks it about each ``unreachable`` sandbox once
        its target answers again (``sandboxer.fleet``).
        """

    @abstractmethod
    async def destroy(self, handle: Handle) -> None:
        """Remove everything the sandbox owns. Idempotent: already gone is fine.

        Must work with a minimal handle (``data == {}``), finding resources by
        ``sandboxer.id`` so a create that failed half-way can be cleaned up.
        """

    @abstractmethod
    async def owned(self, target: Target) -> list[Handle]:
        """Every sandbox resource on ``target`` that carries a ``sandboxer.id`` label."""

    @abstractmethod
    async def wait_ready(self, handle: Handle, timeout: float) -> None:
        """Return once an SSH command succeeds through the endpoint, else raise.

        ``extensions._ssh.SSHExtension`` does it over SSH with the pinned host key.
        """

    @abstractmethod
    async def run(self, handle: Handle, command: str, timeout: float) -> tuple[int, str]:
        """Run ``command`` in the sandbox; returns (exit status, combined output)."""

    @classmethod
    def warm_up(cls) -> None:
        """Load now what a long-lived process (``sandboxer serve``) should keep loaded."""
        return None


class BuildsImages(ABC):
    """Optional capability: build the images an extension's sandboxes need.

    ``sandboxer images build PROFILE`` asks the profile's extension; ``images build NAME``
    asks every extension that ``claims_image(NAME)`` (exactly one must).
    """

    @abstractmethod
    async def build_for_profile(self, profile: Profile, source: Path, *, target: str,
                                variables: dict[str, str], force: bool,
                                progress: Callable[[str], None]) -> dict[str, Any]:
        """Build (or find cached) every image ``profile`` needs on ``target``; return a
        ``sandboxer.image/v1`` body (``image``, ``target``, …). InvalidInput when the
        profile needs nothing that can be built."""

    def claims_image(self, name: str) -> bool:
        """Whether ``name`` (not a profile id) names an image recipe of this extension."""
        return False

    def buildable_images(self) -> list[str]:
        """What ``claims_image`` takes, described for a user (when no extension claims a
        name): e.g. ``a recipe in images/: base, agent-dev``."""
        return []

    async def build_image(self, name: str, *, target: str, variables: dict[str, str],
                          force: bool, progress: Callable[[str], None],
                          confined: bool = False) -> dict[str, Any]:
        """Build the image recipe ``name`` (one this extension claims) for ``target``.
        ``confined``: the name came from a remote caller (the API, MCP), so it may only name
        something inside this extension's own directories — never a path of the caller's
        choosing on this machine."""
        raise InvalidInput(f"{getattr(self, 'name', 'this extension')} builds no image "
                           f"named {name!r}")


class ManagesTargets(ABC):
    """Optional capability: targets of its own, configured with ``sandboxer targets add``.

    The extension validates a target's config with its own ``TargetConfig`` model and
    makes first contact; core stores the config document (``TargetRecord``) and hands it
    back through ``Host.targets``. ``url_schemes`` picks the extension for a URL.
    """

    TargetConfig: ClassVar[type[BaseModel]]
    url_schemes: ClassVar[tuple[str, ...]]

    @abstractmethod
    def target_summaries(self) -> list[dict[str, Any]]:
        """Every target of this extension (implicit ones too) as a ``targets list`` row:
        at least ``name``, ``extension``, ``kind``, ``capacity``, ``implicit``."""

    @abstractmethod
    async def add_target(self, name: str, url: str, options: dict[str, Any],
                         confirm: Callable[[str], bool] | None) -> tuple[TargetRecord,
                                                                         dict[str, Any]]:
        """Validate and contact a new target; the record core stores, and its summary row.

        ``options`` are the extension's own settings (identity, capacity, allow, …);
        ``confirm`` is shown the host key fingerprint at first contact. Nothing stored.
        """

    @abstractmethod
    async def check_targets(self, name: str | None = None) -> list[dict[str, Any]]:
        """Health of one (NotFound if unknown) or every target: ``name``, ``ok``, ``error``…"""

    def removable(self, name: str) -> None:
        """Raise (InvalidInput) when ``name`` may not be removed (an implicit target)."""
        return None


class DoctorChecks(ABC):
    """Optional capability: what `sandboxer doctor` should check for this extension."""

    @abstractmethod
    def doctor_checks(self) -> list[Check]:
        """Checks of this machine; quick (seconds), never raising."""


class Housekeeping(ABC):
    """Optional capability: background work in core's keeper process for this extension.

    Core runs ``python -m sandboxer.service.daemon --extension NAME``: it keeps the
    extension's leases and awaits ``housekeep`` (ext.local serves its SSH endpoints there)
    until it returns; the process then exits.
    """

    @abstractmethod
    async def housekeep(self, host: Host) -> None:
        """Run until there is nothing left to keep (idle), then return."""


class ServesEndpoints(ABC):
    """Optional capability: endpoints served by a process of ours, which core brings back
    when it finds a ready sandbox of this extension unserved (a killed endpoint)."""

    @abstractmethod
    async def serve_again(self, documents: list[dict[str, Any]]) -> list[str]:
        """Serve these ready sandboxes again; the ids whose endpoint moved (core stores
        their descriptors again)."""


class StopsAndStarts(ABC):
    """Optional capability: stop a sandbox (its processes end, its data stays) and start
    it again (``sandboxer stop`` / ``start``; the two-stage expiry of ``ttl.retain``;
    ``idle.action: stop``)."""

    def stoppable(self, handle: Handle) -> str | None:
        """Why this sandbox cannot be stopped (e.g. an attached VM), or None."""
        return None

    @abstractmethod
    async def stop(self, handle: Handle) -> Handle:
        """End every process of the sandbox and keep its data (workspace, volumes, disk).

        Idempotent: an already stopped sandbox is fine. Returns the handle to store (it
        may record what ``start`` needs)."""

    @abstractmethod
    async def start(self, handle: Handle, env: Mapping[str, str],
                    secrets: Mapping[str, SecretStr]) -> Handle:
        """Start a stopped sandbox again with its data intact, binding ``env`` and
        ``secrets`` (resolved again at the boundary by core) as provision did. Keep the
        host key; the port may change. Returns the handle to store; core then waits for
        readiness (``wait_ready``) and stores the descriptor again."""


class Pauses(ABC):
    """Optional capability: freeze a sandbox with its memory kept, and thaw it
    (``sandboxer pause`` / ``resume``; ``idle.action: pause``)."""

    def pausable(self, handle: Handle) -> str | None:
        """Why this sandbox cannot be paused (e.g. an attached VM), or None."""
        return None

    @abstractmethod
    async def pause(self, handle: Handle) -> None:
        """Freeze every process of the sandbox, memory kept. Idempotent."""

    @abstractmethod
    async def resume(self, handle: Handle) -> None:
        """Thaw a paused sandbox; it carries on where it was. Idempotent."""


class ReportsActivity(ABC):
    """Optional capability: how busy a live sandbox is, for ``idle`` handling."""

    @abstractmethod
    async def activity(self, handle: Handle) -> Activity:
        """Sessions open now and cumulative CPU seconds of the sandbox's processes."""


class Binds(ABC):
    """Optional capability: bind environment and secrets to a live sandbox after it was
    provisioned — at the claim of a pooled sandbox, and after a restart lost them."""

    @abstractmethod
    async def bind(self, handle: Handle, env: Mapping[str, str],
                   secrets: Mapping[str, SecretStr]) -> None:
        """Give the sandbox's later sessions and setup steps ``env`` and ``secrets``
        exactly as provision would have (replacing what was bound before). Secret values
        stay in memory or in the sandbox; never in a file of ours, a log or an error."""


class Snapshots(ABC):
    """Optional capability: record a sandbox's data as a snapshot, provision from one
    (``ProvisionRequest.snapshot``), delete one (``sandboxer snapshot``, ``fork``,
    ``create --from-snapshot``, the snapshot reaper).

    A snapshot never holds a secret value: secrets live in memory or in the sandbox's
    tmpfs, which is not part of its data, and a canary test searches every artifact.
    """

    def snapshottable(self, handle: Handle) -> str | None:
        """Why this sandbox cannot be snapshotted (e.g. an attached VM), or None."""
        return None

    @abstractmethod
    async def snapshot(self, handle: Handle, snapshot_id: str,
                       progress: Callable[[str], None]) -> SnapshotArtifact:
        """Record the sandbox's data (workspace, main filesystem + named volumes, disk)
        consistently — quiescing a running sandbox as needed and leaving it in the state
        it was in — and return where it is, with its size and ``sha256:`` content hash.
        Everything it creates carries ``sandboxer.snapshot=<snapshot_id>``. Clean on
        failure: if it raises, whatever it created is already gone."""

    @abstractmethod
    async def delete_snapshot(self, artifact: SnapshotArtifact) -> None:
        """Remove a snapshot's data. Idempotent: already gone is fine; sandboxes created
        from it must not depend on it (copy, or keep what they need)."""

    async def owned_snapshots(self, target: Target) -> list[SnapshotArtifact]:
        """Every snapshot artifact on ``target`` labelled ``sandboxer.snapshot`` (for
        reconcile to remove those no snapshot record claims); default: none known."""
        return []


class CopiesFiles(ABC):
    """Optional capability: copy one file into or out of a live sandbox over its pinned
    SSH endpoint (sftp), for the service's cp (SDK ``cp``, MCP, the API's files route).
    The CLI's ``sandboxer cp`` runs OpenSSH's scp with the descriptor instead."""

    @abstractmethod
    async def put_file(self, handle: Handle, local: Path, remote: str) -> int:
        """Copy the regular file ``local`` to ``remote`` in the sandbox (relative: to the
        login directory), as the sandbox's user; bytes written."""

    @abstractmethod
    async def get_file(self, handle: Handle, remote: str, local: Path, *,
                       max_bytes: int | None = None) -> int:
        """Copy the sandbox's regular file ``remote`` to ``local`` (created 0600); bytes
        read. NotFound when it does not exist; RequestTooLarge when it is larger than
        ``max_bytes`` (the service's cap), and then nothing is left at ``local``."""


class FastPaths(Protocol):
    """Light, stdlib-only paths an extension registers under ``FAST_PATH_GROUP`` (an
    object with these functions), so the CLI's reads need not import the extension."""

    def unserved(self, settings: Settings, documents: list[dict[str, Any]]) -> list[str]:
        """Ids of these ready documents (of this extension) not served as recorded."""

    def destroy(self, settings: Settings, sandbox_id: str) -> dict[str, Any] | None:
        """Destroy through an already-running process of this extension; its reply
        (``ok``, ``document`` or ``code``/``error``), or None when none runs."""


_cache: dict[str, type[Extension]] = {}


def available() -> list[str]:
    """Names of every registered extension (without importing them)."""
    return sorted(entrypoints.registered(ENTRY_POINT_GROUP))


def load(name: str) -> type[Extension]:
    """Import one extension by name, lazily, so a broken plugin breaks only itself."""
    if name in _cache:
        return _cache[name]
    value = entrypoints.registered(ENTRY_POINT_GROUP).get(name)
    if value is None:
        raise InvalidInput(
            f"unknown extension {name!r}",
            hint=f"registered extensions: {', '.join(available()) or 'none'}",
        )
    try:
        cls = entrypoints.load(value)
    except Exception as e:
        raise ProvisionFailed(f"extension {name!r} failed to load: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Extension)):
        raise ProvisionFailed(f"entry point {name!r} does not name an Extension subclass")
    _cache[name] = cls
    return cls


def warm_up_all() -> None:
    """Let every registered extension load what a long-lived process keeps loaded; one
    that fails to load is left for its first use to report."""
    for name in available():
        try:
            load(name).warm_up()
        except SandboxerError as e:
            log.warning("warming up %s failed: %s", name, e.render())


def instance(name: str, settings: Settings, host: Host | None = None) -> Extension:
    return load(name)(settings, host)


def fast_paths(name: str) -> FastPaths | None:
    """The light fast paths ``name`` registered, or None (imports only that object)."""
    found: FastPaths | None = entrypoints.find(FAST_PATH_GROUP, name)
    return found

