"""SQLite store in WAL mode, safe for several sandboxer processes at once: the ``Store``
of store/base.py for one machine, and the only module that speaks SQL.

Every write runs in ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a read never
has to be upgraded and no update is lost), re-checks the sandbox's state inside the
transaction, and appends its event to the outbox in that same transaction; a write inside
``transaction()`` joins it through a savepoint. Lock waits are absorbed by SQLite's busy
handler plus a bounded retry, so "database is locked" never reaches a user; after the
deadline a StoreBusy error says what to do. One connection per store, shared by the
threads of a process under one lock.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer.errors import Conflict, NoTarget, NotFound, SandboxNotFound, StoreBusy
from sandboxer.store.base import (
    LIVE_STATES,
    OutboxCounts,
    OutboxRow,
    ReapCandidate,
    Record,
    TokenRow,
    iso_from_epoch,
)
from sandboxer.store.migrations import LATEST, MIGRATIONS

if TYPE_CHECKING:  # models import pydantic; read-only paths work on plain documents
    from typing_extensions import Unpack

    from sandboxer.extensions.base import Handle
    from sandboxer.models.events import Event
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.target import TargetRecord
    from sandboxer.store.base import Changes

_COLUMNS = (
    "id, name, profile, extension, target, state, reason, actor, labels, created_at, "
    "expires_at, max_expires_at, updated_at, handle, reachability, error, version, creator"
)
_LIVE = "state IN (" + ", ".join(f"'{s}'" for s in LIVE_STATES) + ")"
# What takes a slot of a target's capacity.
_LIVE_COUNT = f"SELECT COUNT(*) FROM sandboxes WHERE target = ? AND extension = ? AND {_LIVE}"
_EVENT_FIELDS = ("e.seq, e.id, e.sandbox_id, e.type, e.time, e.payload, e.delivered_at, "
                 "e.attempts, e.next_attempt_at, e.last_error")
_TOKEN_FIELDS = "id, hash, actor, admin, created_at, last_used_at"  # noqa: S105 - columns


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _document(row: sqlite3.Row) -> dict[str, Any]:
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
        "labels": json.loads(row["labels"]),
        "created_at": iso_from_epoch(row["created_at"]),
        "expires_at": iso_from_epoch(row["expires_at"]),
        "reachability": json.loads(row["reachability"]) if row["reachability"] else None,
        "error": row["error"],
    }


def _event(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        seq=row["seq"], id=row["id"], sandbox_id=row["sandbox_id"], type=row["type"],
        time=row["time"], payload=json.loads(row["payload"]), delivered_at=row["delivered_at"],
        attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


def _token(row: sqlite3.Row) -> TokenRow:
    return TokenRow(id=row["id"], hash=row["hash"], actor=row["actor"],
                    admin=bool(row["admin"]), created_at=row["created_at"],
                    last_used_at=row["last_used_at"])


def _target(row: sqlite3.Row) -> TargetRecord:
    from sandboxer.models.target import TargetRecord

    return TargetRecord(name=row["name"], extension=row["extension"],
                        config=json.loads(row["config"]), created_at=_dt(row["created_at"]))


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class SqliteStore:
    """The embedded store at ``$SANDBOXER_HOME/state.db``."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()  # one transaction at a time on the one connection
        self._depth = 0  # open transaction blocks; beyond the first, savepoints
        self._retry(self._setup)

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def _retry(self, fn: Any, *args: Any) -> Any:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"the state store {self.path} stayed locked for "
                        f"{self.busy_timeout:.0f}s",
                        hint="another sandboxer process holds it; retry, or check for a "
                        "hung process with `fuser` on that file",
                    ) from e
                time.sleep(delay * (1 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 0.2)

    def _setup(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # WAL + NORMAL: commits stay atomic and the file consistent; only the last
        # transactions before a power cut may be lost (they are replayed by reconcile).
        c.execute("PRAGMA synchronous = NORMAL")
        if c.execute("PRAGMA user_version").fetchone()[0] == LATEST:
            return
        if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            c.execute("PRAGMA journal_mode = WAL")
        c.execute("BEGIN IMMEDIATE")
        try:
            current = c.execute("PRAGMA user_version").fetchone()[0]
            for version, script in MIGRATIONS:
                if version <= current:
                    continue
                for stmt in script.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {version}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, or a savepoint inside the one already open."""
        with self._lock:
            c = self._conn
            if self._depth:
                name = f"sp{self._depth}"
                c.execute(f"SAVEPOINT {name}")
                self._depth += 1
                try:
                    yield c
                except BaseException:
                    c.execute(f"ROLLBACK TO {name}")
                    c.execute(f"RELEASE {name}")
                    raise
                finally:
                    self._depth -= 1
                c.execute(f"RELEASE {name}")
                return
            self._retry(c.execute, "BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield c
                self._retry(c.execute, "COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._write():
            yield

    def _one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, tuple(args)).fetchone()
            return row

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def schema_version(self) -> int:
        row = self._one("PRAGMA user_version")
        return int(row[0]) if row else 0

    # -- rows -------------------------------------------------------------------------

    @staticmethod
    def _status(row: sqlite3.Row) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(_document(row))

    def _record(self, row: sqlite3.Row) -> Record:
        return Record(
            status=self._status(row),
            handle=json.loads(row["handle"]) if row["handle"] else None,
            max_expires_at=_dt(row["max_expires_at"]),
            updated_at=_dt(row["updated_at"]),
            version=row["version"],
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
        capacity: int | None = None,
    ) -> None:
        # SQLite counts under the write lock of BEGIN IMMEDIATE; a server backend locks the
        # target's row instead.
        now = time.time()
        with self._write() as c:
            if capacity is not None:
                used = c.execute(_LIVE_COUNT, (status.target, status.extension)).fetchone()[0]
                if used >= capacity:
                    raise NoTarget(
                        f"target {status.target} of {status.extension} is full "
                        f"({used}/{capacity} sandboxes): another create took the last slot",
                        hint="destroy a sandbox there, pick another target with --target, "
                        "or raise its capacity",
                    )
            c.execute(
                f"INSERT INTO sandboxes ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, 1, ?)",
                (
                    status.id, status.name, status.profile, status.extension, status.target,
                    status.state, status.reason, status.actor,
                    json.dumps(status.labels, sort_keys=True),
                    _ts(status.created_at), _ts(status.expires_at), _ts(max_expires_at), now,
                    status.error, creator,
                ),
            )
            self._append_event(c, "sandbox.created", status)

    def _row(self, sandbox_id: str) -> sqlite3.Row | None:
        return self._one(f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,))

    def get_record(self, sandbox_id: str) -> Record | None:
        row = self._row(sandbox_id)
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
                value = _ts(value)
            elif key in ("reachability", "handle"):
                value = None if value is None else json.dumps(value, sort_keys=True)
            elif key not in ("reason", "error", "target"):
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

    def query(self, **filters: Any) -> list[SandboxStatus]:
        return [self._status(r) for r in self._select(**filters)]

    def query_documents(self, **filters: Any) -> list[dict[str, Any]]:
        return [_document(r) for r in self._select(**filters)]

    def _select(
        self,
        *,
        states: Iterable[str] | None = None,
        profile: str | None = None,
        actor: str | None = None,
        extension: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> list[sqlite3.Row]:
        where: list[str] = []
        args: list[Any] = []
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
        sql = f"SELECT {_COLUMNS} FROM sandboxes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._all(sql, args)

    def reapable(self, now: datetime, *, extension: str | None = None,
                 stale_after: float = 1800.0) -> list[ReapCandidate]:
        t = _ts(now)
        sql = (
            "SELECT id, state, updated_at, creator FROM sandboxes WHERE "
            "((state = 'ready' AND expires_at <= ?) "
            "OR state = 'provisioning' OR (state = 'destroying' AND updated_at <= ?))"
        )
        args: list[Any] = [t, t - stale_after]
        if extension is not None:
            sql += " AND extension = ?"
            args.append(extension)
        return [
            ReapCandidate(id=r["id"], state=r["state"], updated_at=_dt(r["updated_at"]),
                          creator=r["creator"])
            for r in self._all(sql + " ORDER BY expires_at", args)
        ]

    def has_reapable(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        t = _ts(now)
        row = self._one(
            "SELECT 1 FROM sandboxes WHERE (state = 'ready' AND expires_at <= ?) "
            "OR (state IN ('destroying', 'provisioning') AND updated_at <= ?) LIMIT 1",
            (t, t - stale_after),
        )
        return row is not None

    def live_handles(self, extension: str) -> list[Handle]:
        from sandboxer.extensions.base import Handle

        rows = self._all(
            f"SELECT handle FROM sandboxes WHERE extension = ? AND handle IS NOT NULL "
            f"AND {_LIVE}", (extension,))
        return [Handle.model_validate_json(r[0]) for r in rows]

    def live_ids(self) -> set[str]:
        return {r[0] for r in self._all(f"SELECT id FROM sandboxes WHERE {_LIVE}")}

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

    # -- the outbox -------------------------------------------------------------------

    def event_rows(self, *, after: int = 0, sandbox_id: str | None = None,
                   limit: int = 1000, actor: str | None = None) -> list[OutboxRow]:
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
        sql += " WHERE " + " AND ".join(where) + " ORDER BY e.seq LIMIT ?"
        return [_event(r) for r in self._all(sql, [*args, max(0, int(limit))])]

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
            c.execute("UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, "
                      "last_error = ? WHERE id = ?", (next_attempt_at, error[:500], event_id))
            row = c.execute("SELECT attempts FROM events WHERE id = ?", (event_id,)).fetchone()
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

    # -- API tokens -------------------------------------------------------------------

    def add_token(self, row: TokenRow) -> None:
        with self._write() as c:
            if c.execute("SELECT 1 FROM tokens WHERE id = ? OR hash = ?",
                         (row.id, row.hash)).fetchone():
                raise Conflict(f"a token with id {row.id} exists already")
            c.execute(f"INSERT INTO tokens ({_TOKEN_FIELDS}) VALUES (?, ?, ?, ?, ?, ?)",
                      (row.id, row.hash, row.actor, int(row.admin), row.created_at,
                       row.last_used_at))

    def token_by_hash(self, digest: str) -> TokenRow | None:
        row = self._one(f"SELECT {_TOKEN_FIELDS} FROM tokens WHERE hash = ?", (digest,))
        return _token(row) if row else None

    def touch_token(self, token_id: str, when: float) -> None:
        with self._write() as c:
            c.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (when, token_id))

    def list_tokens(self) -> list[TokenRow]:
        rows = self._all(f"SELECT {_TOKEN_FIELDS} FROM tokens ORDER BY actor, created_at, id")
        return [_token(r) for r in rows]

    def remove_token(self, token_id: str) -> TokenRow | None:
        with self._write() as c:
            row = c.execute(f"SELECT {_TOKEN_FIELDS} FROM tokens WHERE id = ?",
                            (token_id,)).fetchone()
            if row is not None:
                c.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        return _token(row) if row else None

    # -- targets ----------------------------------------------------------------------

    def add_target(self, rec: TargetRecord) -> None:
        created = _ts(rec.created_at) if rec.created_at else time.time()
        with self._write() as c:
            if c.execute("SELECT 1 FROM targets WHERE name = ?", (rec.name,)).fetchone():
                raise Conflict(f"a target named {rec.name!r} exists already",
                               hint="remove it first with `sandboxer targets remove`")
            c.execute(
                "INSERT INTO targets (name, extension, config, created_at) VALUES (?, ?, ?, ?)",
                (rec.name, rec.extension, json.dumps(rec.config, sort_keys=True), created),
            )

    def list_targets(self, extension: str | None = None) -> list[TargetRecord]:
        sql = "SELECT name, extension, config, created_at FROM targets"
        args: list[Any] = []
        if extension is not None:
            sql += " WHERE extension = ?"
            args.append(extension)
        return [_target(r) for r in self._all(sql + " ORDER BY name", args)]

    def get_target(self, name: str) -> TargetRecord | None:
        row = self._one(
            "SELECT name, extension, config, created_at FROM targets WHERE name = ?", (name,))
        return _target(row) if row else None

    def remove_target(self, name: str) -> None:
        with self._write() as c:
            live = c.execute(
                f"SELECT COUNT(*) FROM sandboxes WHERE target = ? AND {_LIVE}", (name,)
            ).fetchone()[0]
            if live:
                raise Conflict(f"target {name!r} still holds {live} live sandbox(es)",
                               hint="destroy them first (sandboxer list shows them)")
            if c.execute("DELETE FROM targets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")
