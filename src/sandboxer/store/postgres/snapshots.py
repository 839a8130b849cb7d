"""The ``snapshots`` table: each change re-checks the state in its UPDATE and appends its
event to the outbox (``sandbox_id``: the snapshotted sandbox) in the same transaction."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors

from sandboxer.errors import Conflict, SnapshotNotFound
from sandboxer.store.postgres.connection import Conn, Connection, dt, sorted_json, ts
from sandboxer.store.postgres.sandboxes import append_document
from sandboxer.store.snapshots import (
    CLAIMING_STATES,
    SNAPSHOT_FIELDS,
    SnapshotRecord,
    snapshot_document,
    snapshot_status,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from sandboxer.models.snapshot import SnapshotStatus
    from sandboxer.store.snapshots import SnapshotChanges

_COLUMNS = ("id, name, sandbox_id, profile, extension, target, state, reason, actor, "
            "created_at, expires_at, updated_at, artifact, size_bytes, content_hash, error, "
            "version")
_DUE = ("((state = 'ready' AND expires_at <= %s) "
        "OR (state IN ('creating', 'deleting') AND updated_at <= %s))")


class Snapshots(Connection):
    """Snapshots and the events of their state changes."""

    def insert_snapshot(self, status: SnapshotStatus) -> None:
        def write(c: Conn) -> None:
            try:
                c.execute(
                    f"INSERT INTO snapshots ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, %s, NULL, %s, %s, %s, 1)",
                    (status.id, status.name, status.sandbox_id, status.profile,
                     status.extension, status.target, status.state, status.reason,
                     status.actor, ts(status.created_at), ts(status.expires_at), time.time(),
                     status.size_bytes, status.content_hash, status.error))
            except pg_errors.UniqueViolation as e:
                raise Conflict(f"a snapshot with id {status.id} exists already") from e

        self._run(write, write=True)

    def _snapshot_row(self, snapshot_id: str) -> dict[str, Any] | None:
        return self._one(f"SELECT {_COLUMNS} FROM snapshots WHERE id = %s", (snapshot_id,))

    def get_snapshot(self, snapshot_id: str) -> SnapshotStatus | None:
        row = self._snapshot_row(snapshot_id)
        return snapshot_status(row) if row else None

    def get_snapshot_record(self, snapshot_id: str) -> SnapshotRecord | None:
        row = self._snapshot_row(snapshot_id)
        if row is None:
            return None
        return SnapshotRecord(status=snapshot_status(row), artifact=row["artifact"],
                              updated_at=dt(row["updated_at"]), version=row["version"])

    def snapshot_transition(self, snapshot_id: str, *, from_states: Iterable[str],
                            to_state: str, event: str | None,
                            **changes: Unpack[SnapshotChanges]) -> SnapshotStatus:
        allowed = sorted(set(from_states))
        sets = ["state = %s", "updated_at = %s", "version = version + 1"]
        args: list[Any] = [to_state, time.time()]
        items: dict[str, Any] = dict(changes)
        for key, value in items.items():
            if key not in SNAPSHOT_FIELDS:
                raise ValueError(f"unknown snapshot field {key}")
            if key == "expires_at":
                value = ts(value)
            elif key == "artifact":
                value = None if value is None else sorted_json(value)
            sets.append(f"{key} = %s")
            args.append(value)

        def write(c: Conn) -> SnapshotStatus:
            new = c.execute(
                f"UPDATE snapshots SET {', '.join(sets)} WHERE id = %s AND state = ANY(%s) "
                f"RETURNING {_COLUMNS}", (*args, snapshot_id, allowed)).fetchone()
            if new is None:
                row = c.execute("SELECT state FROM snapshots WHERE id = %s",
                                (snapshot_id,)).fetchone()
                if row is None:
                    raise SnapshotNotFound(f"no snapshot with id {snapshot_id!r}")
                raise Conflict(f"snapshot {snapshot_id} is {row['state']}; this needs it to "
                               f"be {' or '.join(allowed)}")
            if event:
                append_document(c, event, new["sandbox_id"], snapshot_document(new))
            return snapshot_status(new)

        return self._run(write, write=True)

    def query_snapshots(self, *, states: Iterable[str] | None = None,
                        sandbox_id: str | None = None, actor: str | None = None,
                        extension: str | None = None,
                        limit: int | None = None) -> list[SnapshotStatus]:
        where: list[str] = []
        args: list[Any] = []
        if states is not None:
            where.append("state = ANY(%s)")
            args.append(list(states))
        for col, val in (("sandbox_id", sandbox_id), ("actor", actor),
                         ("extension", extension)):
            if val is not None:
                where.append(f"{col} = %s")
                args.append(val)
        sql = f"SELECT {_COLUMNS} FROM snapshots"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(max(0, int(limit)))
        return [snapshot_status(r) for r in self._all(sql, args)]

    def reapable_snapshots(self, now: datetime, *, extension: str | None = None,
                           stale_after: float = 1800.0) -> list[SnapshotStatus]:
        t = ts(now)
        sql = f"SELECT {_COLUMNS} FROM snapshots WHERE {_DUE}"
        args: list[Any] = [t, t - stale_after]
        if extension is not None:
            sql += " AND extension = %s"
            args.append(extension)
        return [snapshot_status(r) for r in self._all(sql + " ORDER BY expires_at, id", args)]

    def has_reapable_snapshots(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        t = ts(now)
        return self._one(f"SELECT 1 AS due FROM snapshots WHERE {_DUE} LIMIT 1",
                         (t, t - stale_after)) is not None

    def claimed_snapshots(self, extension: str) -> set[str]:
        rows = self._all("SELECT id FROM snapshots WHERE extension = %s AND state = ANY(%s)",
                         (extension, list(CLAIMING_STATES)))
        return {r["id"] for r in rows}
