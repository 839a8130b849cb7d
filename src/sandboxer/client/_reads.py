"""The typed reads every Client derives from its document reads, written once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pydantic models load only where a command needs them
    from sandboxer.models.events import Event
    from sandboxer.models.sandbox import SandboxStatus


class _Documents(Protocol):
    """The document reads a client implements (the wire format)."""

    def get_document(self, sandbox_id: str) -> dict[str, Any]: ...

    def list_documents(self, *, states: list[str] | None = None, profile: str | None = None,
                       actor: str | None = None, labels: dict[str, str] | None = None,
                       all: bool = False) -> list[dict[str, Any]]: ...

    def event_documents(self, *, after: int = 0, sandbox_id: str | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]: ...


class TypedReads:
    """``get``, ``list_sandboxes`` and ``events`` as models, over the client's own
    ``*_document(s)`` methods."""

    def get(self: _Documents, sandbox_id: str) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(self.get_document(sandbox_id))

    def list_sandboxes(self: _Documents, *, states: list[str] | None = None,
                       profile: str | None = None, actor: str | None = None,
                       labels: dict[str, str] | None = None,
                       all: bool = False) -> list[SandboxStatus]:
        from sandboxer.models.sandbox import SandboxStatus

        return [SandboxStatus.model_validate(d) for d in self.list_documents(
            states=states, profile=profile, actor=actor, labels=labels, all=all)]

    def events(self: _Documents, *, after: int = 0, sandbox_id: str | None = None,
               limit: int = 1000) -> list[Event]:
        from sandboxer.models.events import Event

        return [Event.model_validate(d) for d in self.event_documents(
            after=after, sandbox_id=sandbox_id, limit=limit)]
