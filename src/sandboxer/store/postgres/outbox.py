"""The ``events`` table as the outbox: rows with their State Hub delivery state."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sandboxer.store.base import OutboxCounts, OutboxRow
from sandboxer.store.postgres.connection import Conn, Connection

if TYPE_CHECKING:
    from sandboxer.models.events import Event

_EVENT_FIELDS = ("e.seq, e.id, e.sandbox_id, e.type, e.time, e.payload, e.delivered_at, "
                 "e.attempts, e.next_attempt_at, e.last_error")


def _event(row: dict[str, Any]) -> OutboxRow:
    return OutboxRow(
        seq=row["seq"], id=row["id"], sandbox_id=row["sandbox_id"], type=row["type"],
        time=row["time"], payload=row["payload"], delivered_at=row["delivered_at"],
        attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


class OutboxRows(Connection):
    """The outbox's rows and their delivery bookkeeping."""

    def event_rows(self, *, after: int = 0, sandbox_id: str | None = None,
                   limit: int = 1000, actor: str | None = None,
                   newest: bool = False) -> list[OutboxRow]:
        sql = f"SELECT {_EVENT_FIELDS} FROM events e"
        where: list[str] = ["e.seq > %s"]
        args: list[Any] = [after]
        if actor is not None:
            sql += " JOIN sandboxes s ON s.id = e.sandbox_id"
            where.append("s.actor = %s")
            args.append(actor)
        if sandbox_id is not None:
            where.append("e.sandbox_id = %s")
            args.append(sandbox_id)
        order = "DESC" if newest else "ASC"
        sql += " WHERE " + " AND ".join(where) + f" ORDER BY e.seq {order} LIMIT %s"
        rows = [_event(r) for r in self._all(sql, [*args, max(0, int(limit))])]
        return rows[::-1] if newest else rows

    def events(self, *, after: int = 0, sandbox_id: str | None = None,
               limit: int = 1000) -> list[Event]:
        from sandboxer.models.events import Event
        from sandboxer.store.outbox import document

        rows = self.event_rows(after=after, sandbox_id=sandbox_id, limit=limit)
        return [Event.model_validate(document(r)) for r in rows]

    def undelivered_events(self, *, limit: int = 500) -> list[OutboxRow]:
        rows = self._all(f"SELECT {_EVENT_FIELDS} FROM events e WHERE e.delivered_at IS NULL "
                         "ORDER BY e.seq LIMIT %s", (max(0, int(limit)),))
        return [_event(r) for r in rows]

    def next_event_due_at(self) -> float | None:
        row = self._one("SELECT MIN(COALESCE(next_attempt_at, 0)) AS due FROM events "
                        "WHERE delivered_at IS NULL")
        return None if row is None or row["due"] is None else float(row["due"])

    def mark_delivered(self, event_ids: Iterable[str], when: float) -> None:
        ids = list(event_ids)
        if not ids:
            return
        self._run(lambda c: c.execute(
            "UPDATE events SET delivered_at = %s, next_attempt_at = NULL, "
            "attempts = attempts + 1, last_error = NULL WHERE id = ANY(%s)", (when, ids)),
            write=True)

    def mark_failed(self, event_id: str, error: str, next_attempt_at: float) -> int:
        def write(c: Conn) -> int:
            row = c.execute("UPDATE events SET attempts = attempts + 1, next_attempt_at = %s, "
                            "last_error = %s WHERE id = %s AND delivered_at IS NULL "
                            "RETURNING attempts",
                            (next_attempt_at, error[:500], event_id)).fetchone()
            return int(row["attempts"]) if row else 0

        return self._run(write, write=True)

    def prune_events(self, older_than: float, *, undelivered_too: bool) -> int:
        sql = "DELETE FROM events WHERE time < %s"
        if not undelivered_too:
            sql += " AND delivered_at IS NOT NULL"
        return self._run(lambda c: int(c.execute(sql, (older_than,)).rowcount), write=True)

    def event_counts(self) -> OutboxCounts:
        row = self._one(
            "SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE delivered_at IS NOT NULL) AS d, "
            "COUNT(*) FILTER (WHERE delivered_at IS NULL AND attempts > 0) AS r FROM events")
        if row is None:
            return OutboxCounts(total=0, delivered=0, retrying=0)
        return OutboxCounts(total=int(row["total"]), delivered=int(row["d"]),
                            retrying=int(row["r"]))
