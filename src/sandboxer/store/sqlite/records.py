"""The ``tokens`` and ``targets`` tables."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from sandboxer.errors import Conflict, NotFound
from sandboxer.store.base import TokenRow
from sandboxer.store.sqlite.connection import LIVE, Connection, dt, ts

if TYPE_CHECKING:
    from sandboxer.models.target import TargetRecord

_TOKEN_FIELDS = "id, hash, actor, admin, created_at, last_used_at"  # noqa: S105 - columns


def _token(row: sqlite3.Row) -> TokenRow:
    return TokenRow(id=row["id"], hash=row["hash"], actor=row["actor"],
                    admin=bool(row["admin"]), created_at=row["created_at"],
                    last_used_at=row["last_used_at"])


def _target(row: sqlite3.Row) -> TargetRecord:
    from sandboxer.models.target import TargetRecord

    return TargetRecord(name=row["name"], extension=row["extension"],
                        config=json.loads(row["config"]), created_at=dt(row["created_at"]))


class Records(Connection):
    """API token rows (hashes only) and recorded targets (config documents)."""

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
        created = ts(rec.created_at) if rec.created_at else time.time()
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
                f"SELECT COUNT(*) FROM sandboxes WHERE target = ? AND {LIVE}", (name,)
            ).fetchone()[0]
            if live:
                raise Conflict(f"target {name!r} still holds {live} live sandbox(es)",
                               hint="destroy them first (sandboxer list shows them)")
            if c.execute("DELETE FROM targets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")
