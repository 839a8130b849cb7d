"""The ``sandboxes`` table: each change re-checks the state in its UPDATE and appends its
event to the outbox in the same transaction.

Capacity. ``insert(capacity=N)`` takes ``pg_advisory_xact_lock(key(extension),
key(target))`` and only then counts the target's live sandboxes, in the transaction that
writes the new one; the lock is held until that transaction ends, so the next create on the
same (extension, target) counts after this one committed or rolled back, and two creates —
from any replica, on any machine — cannot both take the last slot. Creates on other targets
never wait. Why an advisory lock rather than ``SELECT … FOR UPDATE`` on a row: a target is
not always a row (ext.local's ``local``, the compose ``local`` host and ``qemu`` come from
their extensions, not from the ``targets`` table), and a lock on a row that does not exist
locks nothing; an advisory lock needs no row, is keyed by exactly what capacity is counted
per, and ends with its transaction even when the client dies. SERIALIZABLE would do too but
turns every race into an abort and a retry.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors
from psycopg.types.json import Json, Jsonb

from sandboxer.errors import Conflict, SandboxNotFound, TargetTaken
from sandboxer.store.base import Claim, ReapCandidate, Record, iso_from_epoch, paused_gc
from sandboxer.store.postgres.connection import (
    LIVE,
    Conn,
    Connection,
    dt,
    key32,
    key64,
    sorted_json,
    ts,
)
from sandboxer.store.postgres.fastread import Skip

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
_DOCUMENT_COLUMNS = ("id, name, profile, extension, target, state, reason, actor, labels, "
                     "created_at, expires_at, reachability, error, last_active_at, snapshot")
_GET_DOCUMENT = f"SELECT {_DOCUMENT_COLUMNS} FROM sandboxes WHERE id = $1".encode()
_LIVE_COUNT = ("SELECT COUNT(*) AS n FROM sandboxes WHERE target = %s AND extension = %s "
               f"AND {LIVE}")
_POOL_COUNT = f"SELECT COUNT(*) AS n FROM sandboxes WHERE pool = %s AND {LIVE}"
# Every event append takes this transaction-scoped lock, so events commit in ``seq`` order
# and a reader following ``seq`` (``events --follow``) never skips one that commits late.
OUTBOX_LOCK = key64("sandboxer", "outbox")


def _document_of_text(v: list[bytes | None]) -> dict[str, Any]:
    """``_document`` of a row in libpq's text format (``_DOCUMENT_COLUMNS`` in order):
    float8 prints the shortest text that reads back exactly, json keeps its text."""
    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode()

    labels = json.loads(v[8]) if v[8] is not None else {}
    return _document({
        "id": text(v[0]), "name": text(v[1]), "profile": text(v[2]),
        "extension": text(v[3]), "target": text(v[4]), "state": text(v[5]),
        "reason": text(v[6]), "actor": text(v[7]), "labels": labels,
        "created_at": float(v[9] or b"0"), "expires_at": float(v[10] or b"0"),
        "reachability": None if v[11] is None else json.loads(v[11]),
        "error": text(v[12]), "last_active_at": None if v[13] is None else float(v[13]),
        "snapshot": text(v[14])})


def _document(row: dict[str, Any]) -> dict[str, Any]:
    """The SandboxStatus document of a row, built without pydantic (fast read path)."""
    return {
        "schema": "sandboxer.sandbox/v1",
        "id": row["id"],
        "name": row["name"],
        "profile": row["profile"],
        "extension": row["extension"],
        "target": row["target"],
        "state": row["state"],
        "reason": row["reason"],
        "actor": row["actor"],
        "labels": dict(sorted(row["labels"].items())),  # jsonb keeps its own key order
        "created_at": iso_from_epoch(row["created_at"]),
        "expires_at": iso_from_epoch(row["expires_at"]),
        "last_active_at": (None if row["last_active_at"] is None
                           else iso_from_epoch(row["last_active_at"])),
        "snapshot": row["snapshot"],
        "reachability": row["reachability"],
        "error": row["error"],
    }


def append_event(c: Conn, kind: str, status: SandboxStatus) -> None:
    """Append ``kind`` carrying ``status`` to the outbox, on ``c``'s open transaction."""
    append_document(c, kind, status.id, status.document())


def append_document(c: Conn, kind: str, sandbox_id: str, payload: dict[str, Any]) -> None:
    """Append ``kind`` of ``sandbox_id`` carrying ``payload``, on ``c``'s transaction."""
    # One statement: the lock is taken before the row (and its seq) is made.
    c.execute(
        "INSERT INTO events (id, sandbox_id, type, time, payload) "
        "SELECT %s, %s, %s, %s, %s FROM (SELECT pg_advisory_xact_lock(%s)) AS locked",
        (f"evt-{uuid.uuid4().hex}", sandbox_id, kind, time.time(),
         Json(payload, dumps=lambda v: json.dumps(v, separators=(",", ":"))),
         OUTBOX_LOCK),
    )


class Sandboxes(Connection):
    """Sandboxes and the events of their state changes."""

    @staticmethod
    def _status(row: dict[str, Any]) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(_document(row))

    def _record(self, row: dict[str, Any]) -> Record:
        return Record(status=self._status(row), handle=row["handle"],
                      max_expires_at=dt(row["max_expires_at"]),
                      updated_at=dt(row["updated_at"]), version=row["version"],
                      retain=row["retain"], pool=row["pool"])

    # -- sandboxes --------------------------------------------------------------------

    def insert(self, status: SandboxStatus, *, max_expires_at: datetime,
               creator: str | None = None, capacity: int | None = None,
               retain: float | None = None, pool: str | None = None,
               pool_size: int | None = None) -> None:
        now = time.time()

        def write(c: Conn) -> None:
            if pool is not None and pool_size is not None:
                # The pool's own lock, then a count in a statement of its own (as capacity).
                c.execute("SELECT pg_advisory_xact_lock(%s)", (key64("sandboxer.pool", pool),))
                held = c.execute(_POOL_COUNT, (pool,)).fetchone()
                if held and int(held["n"]) >= pool_size:
                    raise Conflict(f"the pool of {pool} holds {held['n']}/{pool_size} already")
            if capacity is not None:
                # Two statements, not one: under READ COMMITTED a statement's snapshot is
                # taken when it starts, so a count in the statement that waited for the
                # lock would miss the sandbox the previous holder just committed.
                c.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                          (key32(status.extension), key32(status.target or "")))
                row = c.execute(_LIVE_COUNT, (status.target, status.extension)).fetchone()
                used = int(row["n"]) if row else 0
                if used >= capacity:
                    raise TargetTaken(
                        f"target {status.target} of {status.extension} is full "
                        f"({used}/{capacity} sandboxes): another create took the last slot",
                        hint="destroy a sandbox there, pick another target with --target, "
                        "or raise its capacity")
            try:
                c.execute(
                    f"INSERT INTO sandboxes ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, %s, %s, NULL, NULL, %s, 1, %s, NULL, %s, %s, %s)",
                    (status.id, status.name, status.profile, status.extension, status.target,
                     status.state, status.reason, status.actor, Jsonb(status.labels),
                     ts(status.created_at), ts(status.expires_at), ts(max_expires_at), now,
                     status.error, creator, retain, pool, status.snapshot))
            except pg_errors.UniqueViolation as e:
                raise Conflict(f"a sandbox with id {status.id} exists already") from e
            append_event(c, "sandbox.created", status)

        self._run(write, write=True)

    def claim(self, pool: str, claim: Claim, *, born_after: datetime,
              targets: Iterable[str] | None = None) -> SandboxStatus | None:
        # One UPDATE whose pick skips rows another claim has locked (FOR UPDATE SKIP
        # LOCKED): concurrent claims take different sandboxes and never wait on each other.
        pick = "pool = %s AND state = 'ready' AND created_at > %s"
        args: list[Any] = [pool, ts(born_after)]
        if targets is not None:
            pick += " AND target = ANY(%s)"
            args.append(list(targets))

        def write(c: Conn) -> SandboxStatus | None:
            new = c.execute(
                "UPDATE sandboxes SET pool = NULL, state = 'provisioning', reason = NULL, "
                "actor = %s, name = %s, labels = %s, created_at = %s, expires_at = %s, "
                "max_expires_at = %s, creator = %s, updated_at = %s, version = version + 1 "
                f"WHERE id = (SELECT id FROM sandboxes WHERE {pick} ORDER BY created_at, id "
                "LIMIT 1 FOR UPDATE SKIP LOCKED) AND pool IS NOT NULL AND state = 'ready' "
                f"RETURNING {_COLUMNS}",
                (claim.actor, claim.name, Jsonb(claim.labels), ts(claim.created_at),
                 ts(claim.expires_at), ts(claim.max_expires_at), claim.creator, time.time(),
                 *args)).fetchone()
            if new is None:
                return None
            status = self._status(new)
            append_event(c, "sandbox.claimed", status)
            return status

        return self._run(write, write=True)

    def _row(self, sandbox_id: str) -> dict[str, Any] | None:
        return self._one(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = %s", (sandbox_id,))

    def get_record(self, sandbox_id: str) -> Record | None:
        row = self._one(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = %s", (sandbox_id,))
        return self._record(row) if row else None

    def get(self, sandbox_id: str) -> SandboxStatus | None:
        row = self._row(sandbox_id)
        return self._status(row) if row else None

    def get_document(self, sandbox_id: str) -> dict[str, Any] | None:
        # Only the document's columns: the API's hot read (GET /v1/sandboxes/{id}) skips
        # decoding the handle and the bookkeeping columns it never shows. On an event
        # loop's thread, outside a transaction block, it goes straight through libpq
        # (store/postgres/fastread.py); anywhere else, or when that cannot answer, the pool.
        if self._bound.conn is None:
            try:
                values = self._reader.row(b"sandboxer_get_document", _GET_DOCUMENT,
                                          [sandbox_id.encode()])
            except Skip:
                pass
            else:
                return None if values is None else _document_of_text(values)
        row = self._one(f"SELECT {_DOCUMENT_COLUMNS} FROM sandboxes WHERE id = %s",
                        (sandbox_id,))
        return _document(row) if row else None

    def transition(self, sandbox_id: str, *, from_states: Iterable[str], to_state: str,
                   event: str | None, **changes: Unpack[Changes]) -> SandboxStatus:
        allowed = sorted(set(from_states))
        sets = ["state = %s", "updated_at = %s", "version = version + 1"]
        args: list[Any] = [to_state, time.time()]
        items: dict[str, Any] = dict(changes)
        for key, value in items.items():
            if key == "expires_at":
                value = ts(value)
            elif key in ("reachability", "handle"):
                value = None if value is None else sorted_json(value)
            elif key not in ("reason", "error", "target", "retain"):
                raise ValueError(f"unknown sandbox field {key}")
            sets.append(f"{key} = %s")
            args.append(value)

        def write(c: Conn) -> SandboxStatus:
            # The state is re-checked by the UPDATE itself: a concurrent change of the row
            # makes it wait, then see the committed state.
            new = c.execute(
                f"UPDATE sandboxes SET {', '.join(sets)} WHERE id = %s AND state = ANY(%s) "
                f"RETURNING {_COLUMNS}", (*args, sandbox_id, allowed)).fetchone()
            if new is None:
                row = c.execute("SELECT state FROM sandboxes WHERE id = %s",
                                (sandbox_id,)).fetchone()
                if row is None:
                    raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
                raise Conflict(f"sandbox {sandbox_id} is {row['state']}; this needs it to be "
                               f"{' or '.join(allowed)}")
            status = self._status(new)
            if event:
                append_event(c, event, status)
            return status

        return self._run(write, write=True)

    def set_handle(self, sandbox_id: str, handle: dict[str, Any]) -> None:
        self._run(lambda c: c.execute(
            "UPDATE sandboxes SET handle = %s, updated_at = %s WHERE id = %s",
            (sorted_json(handle), time.time(), sandbox_id)), write=True)

    def set_last_active(self, sandbox_id: str, when: datetime) -> None:
        t = ts(when)
        self._run(lambda c: c.execute(
            "UPDATE sandboxes SET last_active_at = %s WHERE id = %s AND "
            "(last_active_at IS NULL OR last_active_at < %s)", (t, sandbox_id, t)),
            write=True)

    def query(self, **filters: Any) -> list[SandboxStatus]:
        return [self._status(r) for r in self._select(**filters)]

    def query_documents(self, **filters: Any) -> list[dict[str, Any]]:
        rows = self._select(**filters)
        with paused_gc():  # as the SQLite store does
            return [_document(r) for r in rows]

    def _select(self, *, states: Iterable[str] | None = None, profile: str | None = None,
                actor: str | None = None, extension: str | None = None,
                labels: dict[str, str] | None = None,
                limit: int | None = None, pooled: bool | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if pooled is not None:
            where.append("pool IS NOT NULL" if pooled else "pool IS NULL")
        if states is not None:
            where.append("state = ANY(%s)")
            args.append(list(states))
        for col, val in (("profile", profile), ("actor", actor), ("extension", extension)):
            if val is not None:
                where.append(f"{col} = %s")
                args.append(val)
        if labels:
            where.append("labels @> %s")
            args.append(Jsonb(labels))
        sql = f"SELECT {_COLUMNS} FROM sandboxes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(max(0, int(limit)))
        return self._all(sql, args)

    def reapable(self, now: datetime, *, extension: str | None = None,
                 stale_after: float = 1800.0) -> list[ReapCandidate]:
        t = ts(now)
        sql = ("SELECT id, state, updated_at, creator, reason, retain FROM sandboxes WHERE "
               f"(({_EXPIRING} AND expires_at <= %s) "
               "OR state = 'provisioning' OR (state = 'destroying' AND updated_at <= %s))")
        args: list[Any] = [t, t - stale_after]
        if extension is not None:
            sql += " AND extension = %s"
            args.append(extension)
        return [ReapCandidate(id=r["id"], state=r["state"], updated_at=dt(r["updated_at"]),
                              creator=r["creator"], reason=r["reason"], retain=r["retain"])
                for r in self._all(sql + " ORDER BY expires_at, id", args)]

    def has_reapable(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        t = ts(now)
        row = self._one(
            "SELECT 1 AS due FROM sandboxes WHERE "
            f"({_EXPIRING} AND expires_at <= %s) "
            "OR (state IN ('destroying', 'provisioning') AND updated_at <= %s) LIMIT 1",
            (t, t - stale_after))
        return row is not None

    def live_handles(self, extension: str) -> list[Handle]:
        from sandboxer.models.extension import Handle

        rows = self._all(f"SELECT handle FROM sandboxes WHERE extension = %s AND handle IS NOT "
                         f"NULL AND {LIVE}", (extension,))
        return [Handle.model_validate(r["handle"]) for r in rows]

    def live_ids(self) -> set[str]:
        return {r["id"] for r in self._all(f"SELECT id FROM sandboxes WHERE {LIVE}")}

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = self._all("SELECT id, state FROM sandboxes WHERE id = ANY(%s)", (wanted,))
        return {r["id"]: r["state"] for r in rows}

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM sandboxes")
        return int(row["n"]) if row else 0

    def live_count(self, target: str, extension: str) -> int:
        row = self._one(_LIVE_COUNT, (target, extension))
        return int(row["n"]) if row else 0
