"""SQLite store in WAL mode, safe for several sandboxer processes at once.

Every write runs in ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a read never
has to be upgraded and no update is lost), re-checks the sandbox's state inside the
transaction, and appends its event to the outbox in that same transaction. Lock waits are
absorbed by SQLite's busy handler plus a bounded retry, so "database is locked" never
reaches a user; after the deadline a StoreBusy error says what to do.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer.errors import Conflict, NoTarget, NotFound, SandboxNotFound, StoreBusy
from sandboxer.store.migrations import LATEST, MIGRATIONS
from sandboxer.values import LIVE_STATES

if TYPE_CHECKING:  # models import pydantic; read-only paths work on plain documents
    from sandboxer.models.events import Event
    from sandboxer.models.extension import Handle
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.target import TargetRecord

_LIVE = ", ".join(f"'{state}'" for state in LIVE_STATES)  # fixed names, no input
_COLUMNS = (
    "id, name, profile, extension, target, state, reason, actor, labels, created_at, "
    "expires_at, max_expires_at, updated_at, handle, reachability, error, version, creator"
)
# What takes a slot of a target's capacity.
_LIVE_COUNT = ("SELECT COUNT(*) FROM sandboxes WHERE target = ? AND extension = ? "
               f"AND state IN ({_LIVE})")


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _iso(ts: float) -> str:
    """The same RFC 3339 text pydantic writes for a UTC datetime."""
    return _dt(ts).isoformat().replace("+00:00", "Z")


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
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(row["expires_at"]),
        "reachability": json.loads(row["reachability"]) if row["reachability"] else None,
        "error": row["error"],
    }


@dataclass
class Record:
    """A stored sandbox: its public status plus what only sand-boxer itself sees."""

    status: SandboxStatus
    handle: dict[str, Any] | None
    max_expires_at: datetime
    updated_at: datetime
    version: int


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
        self._retry(self._conn.execute, "BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._retry(self._conn.execute, "COMMIT")

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

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
        """Record a new sandbox and its ``sandbox.created`` event in one transaction.

        With ``capacity``, the sandbox takes a slot on its target: the live sandboxes of its
        extension on that target are counted in the same transaction (SQLite: under the
        write lock of ``BEGIN IMMEDIATE``; a server backend: under a lock on the target's
        row), and NoTarget is raised, nothing written, when ``capacity`` are live already.
        """
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

    def get_record(self, sandbox_id: str) -> Record | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,)
        ).fetchone()
        return self._record(row) if row else None

    def get(self, sandbox_id: str) -> SandboxStatus | None:
        rec = self.get_record(sandbox_id)
        return rec.status if rec else None

    def get_document(self, sandbox_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,)
        ).fetchone()
        return _document(row) if row else None

    def transition(
        self,
        sandbox_id: str,
        *,
        from_states: Iterable[str],
        to_state: str,
        event: str | None,
        **changes: Any,
    ) -> SandboxStatus:
        """Move a sandbox between states atomically, with its event, or raise Conflict.

        ``changes`` may set reason, error, expires_at (datetime), reachability (dict),
        handle (dict) and target.
        """
        allowed = set(from_states)
        with self._write() as c:
            row = c.execute(
                f"SELECT {_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,)
            ).fetchone()
            if row is None:
                raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
            if row["state"] not in allowed:
                raise Conflict(
                    f"sandbox {sandbox_id} is {row['state']}; this needs it to be "
                    f"{' or '.join(sorted(allowed))}"
                )
            sets = ["state = ?", "updated_at = ?", "version = version + 1"]
            args: list[Any] = [to_state, time.time()]
            for key, value in changes.items():
                if key in ("expires_at",):
                    value = _ts(value)
                elif key in ("reachability", "handle"):
                    value = None if value is None else json.dumps(value, sort_keys=True)
                elif key not in ("reason", "error", "target"):
                    raise ValueError(f"unknown sandbox field {key}")
                sets.append(f"{key} = ?")
                args.append(value)
            sql = f"UPDATE sandboxes SET {', '.join(sets)} WHERE id = ?"
            c.execute(sql, (*args, sandbox_id))
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
        return self._conn.execute(sql, args).fetchall()

    def reapable(self, now: datetime, *, extension: str | None = None,
                 stale_after: float = 1800.0) -> list[str]:
        """Ids whose lease ran out, destroys abandoned for ``stale_after``, and creates
        whose creating process is gone (or silent for ``stale_after``)."""
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
            r["id"] for r in self._conn.execute(sql + " ORDER BY expires_at", args)
            if r["state"] != "provisioning" or self._abandoned(r, t - stale_after)
        ]

    @staticmethod
    def _abandoned(row: sqlite3.Row, stale_before: float) -> bool:
        from sandboxer.creator import is_gone

        return bool(row["updated_at"] <= stale_before or is_gone(row["creator"]))

    def has_reapable(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        """A cheap check for the opportunistic reap in every CLI call."""
        t = _ts(now)
        row = self._conn.execute(
            "SELECT 1 FROM sandboxes WHERE (state = 'ready' AND expires_at <= ?) "
            "OR (state = 'destroying' AND updated_at <= ?) LIMIT 1",
            (t, t - stale_after),
        ).fetchone()
        if row is not None:
            return True
        creating = self._conn.execute(
            "SELECT updated_at, creator FROM sandboxes WHERE state = 'provisioning'"
        ).fetchall()
        return any(self._abandoned(r, t - stale_after) for r in creating)

    def live_handles(self, extension: str) -> list[Handle]:
        """Handles of every not-final sandbox of one extension that has a handle."""
        from sandboxer.models.extension import Handle

        rows = self._conn.execute(
            "SELECT handle FROM sandboxes WHERE extension = ? AND handle IS NOT NULL "
            f"AND state IN ({_LIVE})",
            (extension,),
        )
        return [Handle.model_validate_json(r[0]) for r in rows]

    def live_ids(self) -> set[str]:
        rows = self._conn.execute(
            f"SELECT id FROM sandboxes WHERE state IN ({_LIVE})"
        )
        return {r[0] for r in rows}

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = self._conn.execute(
            f"SELECT id, state FROM sandboxes WHERE id IN ({', '.join('?' * len(wanted))})",
            wanted,
        )
        return {r[0]: r[1] for r in rows}

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM sandboxes").fetchone()[0])

    # -- events -----------------------------------------------------------------------

    def events(
        self, *, after: int = 0, sandbox_id: str | None = None, limit: int = 1000
    ) -> list[Event]:
        from sandboxer.models.events import Event
        from sandboxer.store.outbox import Outbox

        docs = Outbox(self).documents(after=after, sandbox_id=sandbox_id, limit=limit)
        return [Event.model_validate(d) for d in docs]

    # -- targets ----------------------------------------------------------------------

    def add_target(self, rec: TargetRecord) -> None:
        """Record a target; Conflict if the name is taken."""
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
        return [_target(r) for r in self._conn.execute(sql + " ORDER BY name", args)]

    def get_target(self, name: str) -> TargetRecord | None:
        row = self._conn.execute(
            "SELECT name, extension, config, created_at FROM targets WHERE name = ?", (name,)
        ).fetchone()
        return _target(row) if row else None

    def remove_target(self, name: str) -> None:
        """Forget a target; Conflict while live sandboxes sit on it."""
        with self._write() as c:
            live = c.execute(
                "SELECT COUNT(*) FROM sandboxes WHERE target = ? "
                f"AND state IN ({_LIVE})", (name,)
            ).fetchone()[0]
            if live:
                raise Conflict(f"target {name!r} still holds {live} live sandbox(es)",
                               hint="destroy them first (sandboxer list shows them)")
            if c.execute("DELETE FROM targets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")

    def live_count(self, target: str, extension: str) -> int:
        """Live sandboxes of ``extension`` on ``target``: target names are per extension
        (ext.local and ext.compose-ssh both have a ``local``)."""
        row = self._conn.execute(_LIVE_COUNT, (target, extension)).fetchone()
        return int(row[0])
