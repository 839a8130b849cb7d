"""The ``events`` table as the outbox: rows with their State Hub delivery state."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sandboxer.store.base import OutboxCounts, OutboxRow
from sandboxer.store.sqlite.connection import Connection

if TYPE_CHECKING:
    from sandboxer.models.events import Event

_EVENT_FIELDS = ("e.seq, e.id, e.sandbox_id, e.type, e.time, e.payload, e.delivered_at, "
                 "e.attempts, e.next_attempt_at, e.last_error")


def _event(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        seq=row["seq"], id=row["id"], sandbox_id=row["sandbox_id"], type=row["type"],
        time=row["time"], payload=json.loads(row["payload"]), delivered_at=row["delivered_at"],
        attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


class OutboxRows(Connection):
    """The outbox's rows and their delivery bookkeeping."""

    def event_rows(self, *, after: int = 0, sandbox_id: str | None = None,
                   limit: int = 1000, actor: str | None = None,
                   newest: bool = False) -> list[OutboxRow]:
        sql = f"SELECT {_EVENT_FIELDS} FROM events e"
        where: list[str] = ["e.seq > ?"]
        args: list[Any] = [after]
        if actor is not None:
            sql += " JOIN sandboxes s ON s.id = e.sandbox_id"
            where.append("s.actor = ?")
            args.append(actor)
        if sandbox_id is not None:
            where.append("e.sandbox_id = ?")
            args.append(sandbox_id)
        order = "DESC" if newest else "ASC"
        sql += " WHERE " + " AND ".join(where) + f" ORDER BY e.seq {order} LIMIT ?"
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
                         "ORDER BY e.seq LIMIT ?", (max(0, int(limit)),))
        return [_event(r) for r in rows]

    def next_event_due_at(self) -> float | None:
        row = self._one(
            "SELECT MIN(COALESCE(next_attempt_at, 0)) FROM events WHERE delivered_at IS NULL")
        return None if row is None or row[0] is None else float(row[0])

    def mark_delivered(self, event_ids: Iterable[str], when: float) -> None:
        ids = list(event_ids)
        if not ids:
            return
        with self._write() as c:
            c.executemany("UPDATE events SET delivered_at = ?, next_attempt_at = NULL, "
                          "attempts = attempts + 1, last_error = NULL WHERE id = ?",
                          [(when, i) for i in ids])

    def mark_failed(self, event_id: str, error: str, next_attempt_at: float) -> int:
        with self._write() as c:
            changed = c.execute("UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, "
                                "last_error = ? WHERE id = ? AND delivered_at IS NULL",
                                (next_attempt_at, error[:500], event_id)).rowcount
            row = c.execute("SELECT attempts FROM events WHERE id = ?",
                            (event_id,)).fetchone() if changed else None
        return int(row[0]) if row else 0

    def prune_events(self, older_than: float, *, undelivered_too: bool) -> int:
        sql = "DELETE FROM events WHERE time < ?"
        if not undelivered_too:
            sql += " AND delivered_at IS NOT NULL"
        with self._write() as c:
            return int(c.execute(sql, (older_than,)).rowcount)

    def event_counts(self) -> OutboxCounts:
        row = self._one(
            "SELECT COUNT(*), COALESCE(SUM(delivered_at IS NOT NULL), 0), "
            "COALESCE(SUM(delivered_at IS NULL AND attempts > 0), 0) FROM events")
        total, delivered, retrying = (int(v) for v in row) if row else (0, 0, 0)
        return OutboxCounts(total=total, delivered=delivered, retrying=retrying)
