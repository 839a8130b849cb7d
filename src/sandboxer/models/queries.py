"""Read requests of the application service: frozen dataclasses, no pydantic.

``list`` and ``get`` are the CLI's hot paths (bench/run.py), so what they take is plain
standard-library data; the service validates it (``sandboxer.checks``) once, with
the same message whichever shell built it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandboxer.values import LIVE_STATES, STATES

__all__ = ["LIVE_STATES", "STATES", "EventsQuery", "ListRequest"]


@dataclass(frozen=True)
class ListRequest:
    """`list`: live sandboxes by default; ``all`` adds final ones; filters combine."""

    states: tuple[str, ...] | None = None
    profile: str | None = None
    actor: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    all: bool = False


@dataclass(frozen=True)
class EventsQuery:
    """`events`: outbox events after ``after`` (a sequence number), oldest first;
    ``newest``: the last ``limit`` of them (the dashboard's recent events)."""

    after: int = 0
    sandbox_id: str | None = None
    limit: int = 1000
    newest: bool = False
