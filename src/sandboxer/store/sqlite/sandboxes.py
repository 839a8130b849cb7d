"""The ``sandboxes`` table: each change re-checks the state and appends its event to the
outbox in one write transaction; a capacity check happens under the same write lock."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sandboxer.errors import Conflict, SandboxNotFound, TargetTaken
from sandboxer.store.base import Claim, ReapCandidate, Record, iso_from_epoch, paused_gc
from sandboxer.store.sqlite.connection import LIVE, Connection, dt, ts

if TYPE_CHECKING:  # models import pydantic; read-only paths work on plain documents
    from typing_extensions import Unpack

    from sandboxer.models.extension import Handle
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.store.base import Changes

_COLUMNS = (
    "id, name, profile, extension, target, state, reason, actor, labels, created_at, "
    "expires_at, max_expires_at, updated_at, handle, reachability, error, version, creator, "
    "last_active_at, retain, pool, snapshot"
)
# States whose lease (or ttl.retain) runs out: the reaper acts when expires_at passes.
_EXPIRING = "state IN ('ready', 'unreachable', 'stopped', 'paused')"
# What takes a slot of a target's capacity.
_LIVE_COUNT = f"SELECT COUNT(*) FROM sandboxes WHERE target = ? AND extension = ? AND {LIVE}"
_POOL_COUNT = f"SELECT COUNT(*) FROM sandboxes WHERE pool = ? AND {LIVE}"


def _document(row: sqlite3.Row) -> dict[str, Any]:
    """The SandboxStatus document of a row, built without pydantic (fast read path)."""
    return _doc(tuple(row[c] for c in _DOC_NAMES))


# What a document needs, in _doc's order: a list reads only these and indexes them (a
# name lookup in sqlite3.Row compares the column names one by one).
_DOC_NAMES = ("id", "name", "profile", "extension", "target", "state", "reason", "actor",
              "labels", "created_at", "expires_at", "last_active_at", "snapshot",
              "reachability", "error")
_DOC_COLUMNS = ", ".join(_DOC_NAMES)


def _doc(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "schema": "sandboxer.sandbox/v1",
        "id": r[0],
        "name": r[1],
        "profile": r[2],
        "extension": r[3],
        "target": r[4],
        "state": r[5],
        "reason": r[6],
        "actor": r[7],
        "labels": json.loads(r[8]),
        "created_at": iso_from_epoch(r[9]),
        "expires_at": iso_from_epoch(r[10]),
        "last_active_at": None if r[11] is None else iso_from_epoch(r[11]),
        "snapshot": r[12],
        "reachability": json.loads(r[13]) if r[13] else None,
        "error": r[14],
    }


class Sandboxes(Connection):
    """Sandboxes and the events of their state changes."""

    @staticmethod
    def _status(row: sqlite3.Row) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(_document(row))

    def _record(self, row: sqlite3.Row) -> Record:
        return Record(
            status=self._status(row),
            handle=json.loads(row["handle"]) if row["handle"] else None,
            max_expires_at=dt(row["max_expires_at"]),
            updated_at=dt(row["updated_at"]),
            version=row["version"],
            retain=row["retain"],
            pool=row["pool"],
        )

    def _append_event(self, c: sqlite3.Connection, kind: str, status: SandboxStatus) -> None:
        c.execute(
            "INSERT INTO events (id, sandbox_id, type, time, payload) VALUES (?, ?, ?, ?, ?)",
            (
                f"evt-{uuid.uuid4().hex}",
                status.id,
                kind,
                time.time(),
                json.dumps(status.document(), separators=(",", ":")),
            ),
        )

    # -- sandboxes --------------------------------------------------------------------

    def insert(
        self, status: SandboxStatus, *, max_expires_at: datetime, creator: str | None = None,
        capacity: int | None = None, retain: float | None = None,
        pool: str | None = None, pool_size: int | None = None,
    ) -> None:
        # SQLite counts under the write lock of BEGIN IMMEDIATE; a server backend locks the
        # target's row instead.
        now = time.time()
        with self._write() as c:
            if pool is not None and pool_size is not None:
                held = c.execute(_POOL_COUNT, (pool,)).fetchone()[0]
                if held >= pool_size:
                    raise Conflict(f"the pool of {pool} holds {held}/{pool_size} already")
            if capacity is not None:
                used = c.execute(_LIVE_COUNT, (status.target, status.extension)).fetchone()[0]
                if used >= capacity:
                    raise TargetTaken(
                        f"target {status.target} of {status.extension} is full "
                        f"({used}/{capacity} sandboxes): another create took the last slot",
                        hint="destroy a sandbox there, pick another target with --target, "
                        "or raise its capacity",
                    )
            c.execute(
                f"INSERT INTO sandboxes ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, 1, ?, NULL, ?, ?, "
                "?)",
                (
                    status.id, status.name, status.profile, status.extension, status.target,
                    status.state, status.reason, status.actor,
                    json.dumps(status.labels, sort_keys=True),
                    ts(status.created_at), ts(status.expires_at), ts(max_expires_at), now,
                    status.error, creator, retain, pool, status.snapshot,
                ),
            )
            self._append_event(c, "sandbox.created", status)

    def claim(self, pool: str, claim: Claim, *, born_after: datetime,
              targets: Iterable[str] | None = None) -> SandboxStatus | None:
        # One write transaction (BEGIN IMMEDIATE): no other claim runs between the pick
        # and the update.
        where = "pool = ? AND state = 'ready' AND created_at > ?"
        args: list[Any] = [pool, ts(born_after)]
        if targets is not None:
            names = list(targets)
            where += f" AND target IN ({', '.join('?' * len(names))})"
            args += names
        with self._write() as c:
            row = c.execute(f"SELECT id FROM sandboxes WHERE {where} "
                            "ORDER BY created_at, id LIMIT 1", args).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE sandboxes SET pool = NULL, state = 'provisioning', reason = NULL, "
                "actor = ?, name = ?, labels = ?, created_at = ?, expires_at = ?, "
                "max_expires_at = ?, creator = ?, updated_at = ?, version = version + 1 "
                "WHERE id = ?",
                (claim.actor, claim.name, json.dumps(claim.labels, sort_keys=True),
                 ts(claim.created_at), ts(claim.expires_at), ts(claim.max_expires_at),
                 claim.creator, time.time(), row["id"]))
            status = self._status(c.execute(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?",
                                            (row["id"],)).fetchone())
            self._append_event(c, "sandbox.claimed", status)
            return status

    def _row(self, sandbox_id: str) -> sqlite3.Row | None:
        return self._one(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,))

    def get_record(self, sandbox_id: str) -> Record | None:
        row = self._one(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,))
        return self._record(row) if row else None

    def get(self, sandbox_id: str) -> SandboxStatus | None:
        row = self._row(sandbox_id)
        return self._status(row) if row else None

    def get_document(self, sandbox_id: str) -> dict[str, Any] | None:
        row = self._row(sandbox_id)
        return _document(row) if row else None

    def transition(
        self,
        sandbox_id: str,
        *,
        from_states: Iterable[str],
        to_state: str,
        event: str | None,
        **changes: Unpack[Changes],
    ) -> SandboxStatus:
        allowed = set(from_states)
        sets = ["state = ?", "updated_at = ?", "version = version + 1"]
        args: list[Any] = [to_state, time.time()]
        items: dict[str, Any] = dict(changes)
        for key, value in items.items():
            if key == "expires_at":
                value = ts(value)
            elif key in ("reachability", "handle"):
                value = None if value is None else json.dumps(value, sort_keys=True)
            elif key not in ("reason", "error", "target", "retain"):
                raise ValueError(f"unknown sandbox field {key}")
            sets.append(f"{key} = ?")
            args.append(value)
        with self._write() as c:
            row = c.execute("SELECT state FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
            if row is None:
                raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
            if row["state"] not in allowed:
                raise Conflict(
                    f"sandbox {sandbox_id} is {row['state']}; this needs it to be "
                    f"{' or '.join(sorted(allowed))}"
                )
            c.execute(f"UPDATE sandboxes SET {', '.join(sets)} WHERE id = ?", (*args, sandbox_id))
            new = c.execute(
                f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,)
            ).fetchone()
            status = self._status(new)
            if event:
                self._append_event(c, event, status)
            return status

    def set_handle(self, sandbox_id: str, handle: dict[str, Any]) -> None:
        with self._write() as c:
            c.execute(
                "UPDATE sandboxes SET handle = ?, updated_at = ? WHERE id = ?",
                (json.dumps(handle, sort_keys=True), time.time(), sandbox_id),
            )

    def set_last_active(self, sandbox_id: str, when: datetime) -> None:
        with self._write() as c:
            c.execute("UPDATE sandboxes SET last_active_at = ? WHERE id = ? AND "
                      "(last_active_at IS NULL OR last_active_at < ?)",
                      (ts(when), sandbox_id, ts(when)))

    def query(self, **filters: Any) -> list[SandboxStatus]:
        return [self._status(r) for r in self._select(**filters)]

    def query_documents(self, **filters: Any) -> list[dict[str, Any]]:
        sql, args = self._selection(_DOC_COLUMNS, **filters)
        rows = self._all_tuples(sql, args)
        with paused_gc():  # 10,000 documents started 71 collections (6 of generation 1)
            return [_doc(r) for r in rows]

    def _select(self, **filters: Any) -> list[sqlite3.Row]:
        return self._all(*self._selection(_COLUMNS, **filters))

    def _selection(
        self,
        columns: str,
        *,
        states: Iterable[str] | None = None,
        profile: str | None = None,
        actor: str | None = None,
        extension: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int | None = None,
        pooled: bool | None = None,
    ) -> tuple[str, list[Any]]:
        """The SELECT of ``columns`` for these filters, with its arguments."""
        where: list[str] = []
        args: list[Any] = []
        if pooled is not None:
            where.append("pool IS NOT NULL" if pooled else "pool IS NULL")
        if states is not None:
            st = list(states)
            where.append(f"state IN ({', '.join('?' * len(st))})")
            args += st
        for col, val in (("profile", profile), ("actor", actor), ("extension", extension)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        for key, value in (labels or {}).items():
            where.append("json_extract(labels, ?) = ?")
            args += [f'$."{key}"', value]
        sql = f"SELECT {columns} FROM sandboxes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, args

    def reapable(self, now: datetime, *, extension: str | None = None,
                 stale_after: float = 1800.0) -> list[ReapCandidate]:
        t = ts(now)
        sql = (
            "SELECT id, state, updated_at, creator, reason, retain FROM sandboxes WHERE "
            f"(({_EXPIRING} AND expires_at <= ?) "
            "OR state = 'provisioning' OR (state = 'destroying' AND updated_at <= ?))"
        )
        args: list[Any] = [t, t - stale_after]
        if extension is not None:
            sql += " AND extension = ?"
            args.append(extension)
        return [
            ReapCandidate(id=r["id"], state=r["state"], updated_at=dt(r["updated_at"]),
                          creator=r["creator"], reason=r["reason"], retain=r["retain"])
            for r in self._all(sql + " ORDER BY expires_at", args)
        ]

    def has_reapable(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        t = ts(now)
        row = self._one(
            f"SELECT 1 FROM sandboxes WHERE ({_EXPIRING} AND expires_at <= ?) "
            "OR (state IN ('destroying', 'provisioning') AND updated_at <= ?) LIMIT 1",
            (t, t - stale_after),
        )
        return row is not None

    def live_handles(self, extension: str) -> list[Handle]:
        from sandboxer.models.extension import Handle

        rows = self._all(
            f"SELECT handle FROM sandboxes WHERE extension = ? AND handle IS NOT NULL "
            f"AND {LIVE}", (extension,))
        return [Handle.model_validate_json(r[0]) for r in rows]

    def live_ids(self) -> set[str]:
        return {r[0] for r in self._all(f"SELECT id FROM sandboxes WHERE {LIVE}")}

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = list(ids)
        out: dict[str, str] = {}
        for i in range(0, len(wanted), 500):  # SQLite bounds the parameters of a statement
            chunk = wanted[i:i + 500]
            rows = self._all(
                f"SELECT id, state FROM sandboxes WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk)
            out.update((r[0], r[1]) for r in rows)
        return out

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM sandboxes")
        return int(row[0]) if row else 0

    def live_count(self, target: str, extension: str) -> int:
        row = self._one(_LIVE_COUNT, (target, extension))
        return int(row[0]) if row else 0
