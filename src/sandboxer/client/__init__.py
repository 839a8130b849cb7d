"""One Client interface for the CLI, API and MCP server: in-process or over HTTP.

``LocalClient`` adapts the application service (``sandboxer.service``) in this process;
``HttpClient`` calls a `sandboxer serve` that hosts the same service. Both implement
``Client`` (mypy checks them against it, below), take the same keyword arguments and
raise the same ``SandboxerError`` for the same input. ``make_client`` picks one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # importing the client must stay cheap (CLI cold start)
    from sandboxer.config import Settings
    from sandboxer.models.doctor import Check
    from sandboxer.models.events import Event
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.snapshot import SnapshotStatus


class Client(Protocol):
    """What every front end may ask of sand-boxer."""

    settings: Settings  # this machine's settings (e.g. where ssh's known_hosts files go)

    def list_profiles(self) -> list[dict[str, Any]]:
        """Summaries: id, description, extension, source file."""

    def get_profile(self, profile_id: str) -> Profile:
        """The merged, validated profile."""

    def validate_profiles(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Per file: id, ok and the error text when not ok. Creates nothing."""

    def plan(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
             labels: dict[str, str] | None = None,
             target: str | None = None) -> dict[str, Any]:
        """What a create would do (dry run): validation, placement, secret refs."""

    def create(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
               labels: dict[str, str] | None = None, target: str | None = None,
               name: str | None = None, from_snapshot: str | None = None) -> SandboxStatus:
        """Provision and return a ready sandbox (or raise, leaving it recorded failed);
        ``from_snapshot``: starting from that ready snapshot's data, on its target."""

    def get(self, sandbox_id: str) -> SandboxStatus:
        """One sandbox by id."""

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        """One sandbox as its sandboxer.sandbox/v1 JSON document (the wire format)."""

    def list_sandboxes(self, *, states: list[str] | None = None, profile: str | None = None,
                       actor: str | None = None, labels: dict[str, str] | None = None,
                       all: bool = False) -> list[SandboxStatus]:
        """Sandboxes matching states, profile, actor and labels (live ones by default)."""

    def list_documents(self, *, states: list[str] | None = None, profile: str | None = None,
                       actor: str | None = None, labels: dict[str, str] | None = None,
                       all: bool = False) -> list[dict[str, Any]]:
        """Like list_sandboxes, as JSON documents (the wire format)."""

    def extend(self, sandbox_id: str, ttl: str) -> SandboxStatus:
        """Renew a lease up to the profile's ttl.max."""

    def destroy(self, sandbox_id: str) -> SandboxStatus:
        """Destroy one sandbox; idempotent."""

    def destroy_document(self, sandbox_id: str) -> dict[str, Any]:
        """Like destroy, returning the final document (the wire format)."""

    def stop(self, sandbox_id: str) -> SandboxStatus:
        """ready | paused -> stopped: its processes end, its data stays."""

    def start(self, sandbox_id: str) -> SandboxStatus:
        """stopped -> ready, secrets resolved again (same host key; the port may change)."""

    def pause(self, sandbox_id: str) -> SandboxStatus:
        """ready -> paused: frozen, memory kept."""

    def resume(self, sandbox_id: str) -> SandboxStatus:
        """paused -> ready: thawed where it was."""

    def snapshot(self, sandbox_id: str, *, name: str | None = None,
                 retain: str | None = None) -> SnapshotStatus:
        """Record a snapshot of a ready, stopped or paused sandbox (left in its state),
        kept ``retain`` (default the profile's snapshot.retain, at most snapshot.max)."""

    def get_snapshot(self, snapshot_id: str) -> SnapshotStatus:
        """One snapshot by id (snap-…)."""

    def list_snapshots(self, *, sandbox_id: str | None = None,
                       all: bool = False) -> list[SnapshotStatus]:
        """Snapshots that hold data (creating, ready, deleting; every state with ``all``),
        only ``sandbox_id``'s when given."""

    def delete_snapshot(self, snapshot_id: str) -> SnapshotStatus:
        """Remove a snapshot's data; idempotent."""

    def fork(self, sandbox_id: str, *, ttl: str | None = None,
             labels: dict[str, str] | None = None, name: str | None = None,
             actor: str | None = None) -> SandboxStatus:
        """Snapshot the sandbox and create a new ready one of its profile from it: a new
        lease, new keys, secrets resolved again; owner and labels the original's."""

    def reap(self) -> list[SandboxStatus]:
        """Destroy expired leases now."""

    def reconcile(self) -> list[dict[str, Any]]:
        """Destroy resources no live sandbox claims; returns what was removed."""

    def reachability(self, sandbox_id: str) -> Reachability:
        """The reachability descriptor of a ready sandbox."""

    def identity(self, sandbox_id: str) -> str:
        """The private key (OpenSSH PEM) a ready sandbox is reached with: the per-sandbox
        key sand-boxer made, for its owner or an admin (Conflict otherwise)."""

    def events(self, *, after: int = 0, sandbox_id: str | None = None,
               limit: int = 1000) -> list[Event]:
        """Outbox events in order, with their State Hub delivery state."""

    def event_documents(self, *, after: int = 0, sandbox_id: str | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]:
        """Like events, as sandboxer.event/v1 documents (the wire format)."""

    def pools_list(self) -> list[dict[str, Any]]:
        """Every warm pool (sandboxer.pool/v1); an actor sees counts, an admin sandboxes."""

    def pools_show(self, profile_id: str) -> dict[str, Any]:
        """One profile's warm pool; NotFound when it has none."""

    def targets_list(self) -> list[dict[str, Any]]:
        """Configured targets plus the implicit ones."""

    def targets_add(self, *, name: str, url: str, identity: str | None = None,
                    public_host: str | None = None, capacity: int | None = None,
                    kind: str = "self-hosted", allow: list[str] | None = None,
                    fingerprint: str | None = None, extension: str | None = None,
                    confirm: Callable[[str], bool] | None = None,
                    labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Record a target after first contact (its host key is pinned): with
        ``fingerprint`` only that key, else the one seen when ``confirm`` agrees."""

    def targets_check(self, name: str | None = None) -> list[dict[str, Any]]:
        """Reachability, engine, compose and capacity of one or every target."""

    def targets_remove(self, name: str) -> None:
        """Forget a target (refused while it holds live sandboxes)."""

    def images_build(self, name: str, *, target: str = "local",
                     variables: dict[str, str] | None = None,
                     force: bool = False) -> dict[str, Any]:
        """Build what a profile needs, a recipe (images/sandbox-NAME) for a target, or a
        Packer template or profile id (``variables``, ``force``)."""

    def tokens_add(self, actor: str, *, admin: bool = False) -> tuple[str, dict[str, Any]]:
        """A new bearer token for ``actor`` (admin): the token, returned only now, and its
        summary (id, actor, admin, created_at, last_used_at)."""

    def tokens_list(self) -> list[dict[str, Any]]:
        """Every token's summary, never a token (admin)."""

    def tokens_remove(self, token_id: str) -> dict[str, Any]:
        """Revoke one token by id (admin); NotFound when there is none."""

    def events_publish(self) -> tuple[dict[str, Any], bool]:
        """One State Hub delivery pass (admin): the sandboxer.publish/v1 document, and
        False when another process holds the publisher lock (nothing was done)."""

    def doctor(self) -> list[Check]:
        """What the machine that runs sandboxes lacks, and how to fix it (admin)."""


def make_client(settings: Settings | None = None, *,
                env: Mapping[str, str] | None = None,
                progress: Callable[[str], None] | None = None,
                as_token: bool = False) -> Client:
    """The Client of this process's environment: an HttpClient when ``SANDBOXER_URL``
    names a server (as the actor of ``SANDBOXER_TOKEN``; httpx is imported only then),
    else a LocalClient. ``as_token`` (the MCP server): locally too the caller is the
    actor of ``SANDBOXER_TOKEN``, which must be set; otherwise the local operator."""
    from sandboxer import envvars

    environ = env if env is not None else (settings.env if settings is not None
                                           else os.environ)
    token = environ.get("SANDBOXER_TOKEN") or None
    url, verify = envvars.server(environ)
    if url:
        from sandboxer.client.http import HttpClient

        return HttpClient(url, token, settings=settings, progress=progress, verify=verify)
    from sandboxer.client.local import LocalClient

    if not as_token:
        return LocalClient(settings, progress=progress)
    from sandboxer.errors import Unauthenticated, UsageError

    if token is None:
        raise UsageError("sandboxer mcp acts as the actor of a token, and none is set",
                         hint="set SANDBOXER_TOKEN (from `sandboxer tokens add ACTOR`), and "
                         "SANDBOXER_URL to use a server instead of this machine's store")
    local = LocalClient(settings, progress=progress)
    caller = local.service.authenticate(token)
    if caller is None:
        raise Unauthenticated("SANDBOXER_TOKEN is not a token of this sand-boxer home",
                              hint="see `sandboxer tokens list`")
    local.caller = caller
    return local
