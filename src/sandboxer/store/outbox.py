"""The event outbox as the State Hub publisher and `sandboxer events` see it.

Events are appended by the store in the transaction of each state change; this module turns
the store's ``OutboxRow``s into documents (plain dicts, no pydantic), hands the publisher
what is due — the oldest undelivered event of each sandbox, so delivery keeps the order per
sandbox — records each attempt, and prunes by age. No SQL: it works on any ``Store``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sandboxer.store.base import OutboxRow, iso_from_epoch

if TYPE_CHECKING:
    from sandboxer.store.base import Store


def delivery_state(row: OutboxRow) -> str:
    if row.delivered_at is not None:
        return "delivered"
    return "retrying" if row.attempts else "pending"


def wire_document(row: OutboxRow) -> dict[str, Any]:
    """What State Hub receives: the event without sand-boxer's own delivery bookkeeping."""
    return {
        "schema": "sandboxer.event/v1",
        "id": row.id,
        "seq": row.seq,
        "type": row.type,
        "sandbox_id": row.sandbox_id,
        "time": iso_from_epoch(row.time),
        "payload": row.payload,
    }


def document(row: OutboxRow) -> dict[str, Any]:
    """A ``sandboxer.event/v1`` document with its delivery state."""
    return {
        **wire_document(row),
        "delivered_at": iso_from_epoch(row.delivered_at) if row.delivered_at else None,
        "delivery": delivery_state(row),
        "attempts": row.attempts,
        "next_attempt_at": iso_from_epoch(row.next_attempt_at) if row.next_attempt_at else None,
        "last_error": row.last_error,
    }


class Outbox:
    """Delivery bookkeeping over one store's outbox."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def documents(self, *, after: int = 0, sandbox_id: str | None = None, limit: int = 1000,
                  actor: str | None = None, newest: bool = False) -> list[dict[str, Any]]:
        """Events after ``after`` in order; ``actor``: only events of that actor's sandboxes;
        ``newest``: the last ``limit`` of them."""
        rows = self.store.event_rows(after=after, sandbox_id=sandbox_id, limit=limit,
                                     actor=actor, newest=newest)
        return [document(r) for r in rows]

    def due(self, now: float, *, limit: int = 500) -> list[OutboxRow]:
        """Undelivered events that may be sent now, oldest first.

        A sandbox whose oldest undelivered event is waiting out a backoff contributes
        nothing, so its later events never overtake it.
        """
        blocked: set[str] = set()
        out = []
        for r in self.store.undelivered_events(limit=limit):
            if r.sandbox_id in blocked:
                continue
            if r.next_attempt_at is not None and r.next_attempt_at > now:
                blocked.add(r.sandbox_id)
                continue
            out.append(r)
        return out

    def next_due_at(self) -> float | None:
        return self.store.next_event_due_at()

    def mark_delivered(self, event_ids: Iterable[str], when: float) -> None:
        self.store.mark_delivered(event_ids, when)

    def mark_failed(self, event_id: str, error: str, next_attempt_at: float) -> int:
        """Record a failed attempt; returns the number of attempts so far."""
        return self.store.mark_failed(event_id, error, next_attempt_at)

    def prune(self, older_than: float, *, undelivered_too: bool) -> int:
        """Delete events older than ``older_than``: delivered ones, and undelivered ones
        too when nothing will ever deliver them (no State Hub configured)."""
        return self.store.prune_events(older_than, undelivered_too=undelivered_too)

    def counts(self) -> dict[str, int]:
        c = self.store.event_counts()
        return {"total": c.total, "delivered": c.delivered, "retrying": c.retrying,
                "pending": c.pending}
