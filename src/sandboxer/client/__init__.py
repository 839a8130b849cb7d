"""One Client interface for the CLI, API and MCP server: in-process or over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # importing the client must stay cheap (CLI cold start)
    from sandboxer.config import Settings
    from sandboxer.models.events import Event
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.sandbox import SandboxStatus


class Client(Protocol):
    """What every front end may ask of sand-boxer."""

    settings: Settings  # this machine's settings (e.g. where ssh's known_hosts files go)

    def list_profiles(self) -> list[dict[str, Any]]:
        """Summaries: id, description, extension, source file."""

    def get_profile(self, profile_id: str) -> Profile:
        """The merged, validated profile."""

    def validate_profiles(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Per file: id, ok and the error text when not ok. Creates nothing."""

    def plan(self, profile_id: str, **options: Any) -> dict[str, Any]:
        """What a create would do (dry run): validation, placement, secret refs."""

    def create(self, profile_id: str, **options: Any) -> SandboxStatus:
        """Provision and return a ready sandbox (or raise, leaving it recorded failed)."""

    def get(self, sandbox_id: str) -> SandboxStatus:
        """One sandbox by id."""

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        """One sandbox as its sandboxer.sandbox/v1 JSON document (the wire format)."""

    def list_sandboxes(self, **filters: Any) -> list[SandboxStatus]:
        """Sandboxes matching states, profile, actor and labels."""

    def list_documents(self, **filters: Any) -> list[dict[str, Any]]:
        """Like list_sandboxes, as JSON documents (the wire format)."""

    def extend(self, sandbox_id: str, ttl: str) -> SandboxStatus:
        """Renew a lease up to the profile's ttl.max."""

    def destroy(self, sandbox_id: str) -> SandboxStatus:
        """Destroy one sandbox; idempotent."""

    def destroy_document(self, sandbox_id: str) -> dict[str, Any]:
        """Like destroy, returning the final document (the wire format)."""

    def reap(self) -> list[SandboxStatus]:
        """Destroy expired leases now."""

    def reconcile(self) -> list[dict[str, Any]]:
        """Destroy resources no live sandbox claims; returns what was removed."""

    def reachability(self, sandbox_id: str) -> Reachability:
        """The reachability descriptor of a ready sandbox."""

    def events(self, *, after: int = 0, sandbox_id: str | None = None,
               limit: int = 1000) -> list[Event]:
        """Outbox events in order, with their State Hub delivery state."""

    def event_documents(self, *, after: int = 0, sandbox_id: str | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]:
        """Like events, as sandboxer.event/v1 documents (the wire format)."""

    def targets_list(self) -> list[dict[str, Any]]:
        """Configured targets plus the implicit `local`."""

    def targets_add(self, **options: Any) -> dict[str, Any]:
        """Record a docker host after first contact (its host key is pinned)."""

    def targets_check(self, name: str | None = None) -> list[dict[str, Any]]:
        """Reachability, engine, compose and capacity of one or every target."""

    def targets_remove(self, name: str) -> None:
        """Forget a target (refused while it holds live sandboxes)."""

    def images_build(self, name: str, *, target: str = "local",
                     variables: dict[str, str] | None = None,
                     force: bool = False) -> dict[str, Any]:
        """Run an image recipe (images/sandbox-NAME) for a target, or Packer for an
        ext.vm-packer profile id or template path (``variables``, ``force``)."""
