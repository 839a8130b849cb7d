"""The event outbox as the State Hub publisher and `sandboxer events` see it.

Events are appended by ``SqliteStore`` in the transaction of each state change; this module
reads them with their delivery state (plain documents, no pydantic), hands the publisher
what is due — the oldest undelivered event of each sandbox, so delivery keeps the order per
sandbox — records each attempt, and prunes by age.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sandboxer.store.sqlite import SqliteStore, _iso

_FIELDS = ("e.seq, e.id, e.sandbox_id, e.type, e.time, e.payload, e.delivered_at, "
           "e.attempts, e.next_attempt_at, e.last_error")


def delivery_state(row: sqlite3.Row) -> str:
    if row["delivered_at"] is not None:
        return "delivered"
    return "retrying" if row["attempts"] else "pending"


def wire_document(row: sqlite3.Row) -> dict[str, Any]:
    """What State Hub receives: the event without sand-boxer's own delivery bookkeeping."""
    return {
        "schema": "sandboxer.event/v1",
        "id": row["id"],
        "seq": row["seq"],
        "type": row["type"],
        "sandbox_id": row["sandbox_id"],
        "time": _iso(row["time"]),
        "payload": json.loads(row["payload"]),
    }


def document(row: sqlite3.Row) -> dict[str, Any]:
    """A ``sandboxer.event/v1`` document with its delivery state."""
    return {
        **wire_document(row),
        "delivered_at": _iso(row["delivered_at"]) if row["delivered_at"] else None,
        "delivery": delivery_state(row),
        "attempts": row["attempts"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["next_attempt_at"] else None,
        "last_error": row["last_error"],
    }


class Outbox:
    """Delivery bookkeeping over one store's ``events`` table."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store._conn

    def documents(self, *, after: int = 0, sandbox_id: str | None = None, limit: int = 1000,
                  actor: str | None = None) -> list[dict[str, Any]]:
        """Events after ``after`` in order; ``actor``: only events of that actor's sandboxes."""
        sql = f"SELECT {_FIELDS} FROM events e"
        where: list[str] = ["e.seq > ?"]
        args: list[Any] = [after]
        if actor is not None:
            sql += " JOIN sandboxes s ON s.id = e.sandbox_id"
            where.append("s.actor = ?")
            args.append(actor)
        if sandbox_id is not None:
            where.append("e.sandbox_id = ?")
            args.append(sandbox_id)
        sql += " WHERE " + " AND ".join(where) + " ORDER BY e.seq LIMIT ?"
        rows = self._conn.execute(sql, [*args, max(0, int(limit))]).fetchall()
        return [document(r) for r in rows]

    def due(self, now: float, *, limit: int = 500) -> list[sqlite3.Row]:
        """Undelivered events that may be sent now, oldest first.

        A sandbox whose oldest undelivered event is waiting out a backoff contributes
        nothing, so its later events never overtake it.
        """
        rows = self._conn.execute(
            f"SELECT {_FIELDS} FROM events e WHERE e.delivered_at IS NULL "
            "ORDER BY e.seq LIMIT ?", (limit,)).fetchall()
        blocked: set[str] = set()
        out = []
        for r in rows:
            if r["sandbox_id"] in blocked:
                continue
            if r["next_attempt_at"] is not None and r["next_attempt_at"] > now:
                blocked.add(r["sandbox_id"])
                continue
            out.append(r)
        return out

    def next_due_at(self) -> float | None:
        row = self._conn.execute(
            "SELECT MIN(COALESCE(next_attempt_at, 0)) FROM events WHERE delivered_at IS NULL"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_delivered(self, event_ids: list[str], when: float) -> None:
        if not event_ids:
            return
        with self.store._write() as c:
            c.executemany("UPDATE events SET delivered_at = ?, next_attempt_at = NULL, "
                          "attempts = attempts + 1, last_error = NULL WHERE id = ?",
                          [(when, i) for i in event_ids])

    def mark_failed(self, event_id: str, error: str, next_attempt_at: float) -> int:
        """Record a failed attempt; returns the number of attempts so far."""
        with self.store._write() as c:
            c.execute("UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, "
                      "last_error = ? WHERE id = ?", (next_attempt_at, error[:500], event_id))
            row = c.execute("SELECT attempts FROM events WHERE id = ?", (event_id,)).fetchone()
        return int(row[0]) if row else 0

    def prune(self, older_than: float, *, undelivered_too: bool) -> int:
        """Delete events older than ``older_than``: delivered ones, and undelivered ones
        too when nothing will ever deliver them (no State Hub configured)."""
        sql = "DELETE FROM events WHERE time < ?"
        if not undelivered_too:
            sql += " AND delivered_at IS NOT NULL"
        with self.store._write() as c:
            return int(c.execute(sql, (older_than,)).rowcount)

    def counts(self) -> dict[str, int]:
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(delivered_at IS NOT NULL), 0), "
            "COALESCE(SUM(delivered_at IS NULL AND attempts > 0), 0) FROM events").fetchone()
        total, delivered, retrying = (int(v) for v in row)
        return {"total": total, "delivered": delivered, "retrying": retrying,
                "pending": total - delivered - retrying}
