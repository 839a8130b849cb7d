"""The ``tokens`` and ``targets`` tables."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sandboxer.errors import Conflict, NotFound
from sandboxer.store.base import TokenRow
from sandboxer.store.postgres.connection import LIVE, Conn, Connection, dt, sorted_json, ts

if TYPE_CHECKING:
    from sandboxer.models.target import TargetRecord

_TOKEN_FIELDS = "id, hash, actor, admin, created_at, last_used_at"  # noqa: S105 - columns
_TARGET_FIELDS = "name, extension, config, created_at"


def _token(row: dict[str, Any]) -> TokenRow:
    return TokenRow(id=row["id"], hash=row["hash"], actor=row["actor"],
                    admin=bool(row["admin"]), created_at=row["created_at"],
                    last_used_at=row["last_used_at"])


def _target(row: dict[str, Any]) -> TargetRecord:
    from sandboxer.models.target import TargetRecord

    return TargetRecord(name=row["name"], extension=row["extension"], config=row["config"],
                        created_at=dt(row["created_at"]))


class Records(Connection):
    """API token rows (hashes only) and recorded targets (config documents)."""

    # -- API tokens -------------------------------------------------------------------

    def add_token(self, row: TokenRow) -> None:
        def write(c: Conn) -> None:
            added = c.execute(
                f"INSERT INTO tokens ({_TOKEN_FIELDS}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (row.id, row.hash, row.actor, row.admin, row.created_at, row.last_used_at))
            if added.rowcount == 0:
                raise Conflict(f"a token with id {row.id} exists already")

        self._run(write, write=True)

    def token_by_hash(self, digest: str) -> TokenRow | None:
        row = self._one(f"SELECT {_TOKEN_FIELDS} FROM tokens WHERE hash = %s", (digest,))
        return _token(row) if row else None

    def touch_token(self, token_id: str, when: float) -> None:
        self._run(lambda c: c.execute("UPDATE tokens SET last_used_at = %s WHERE id = %s",
                                      (when, token_id)), write=True)

    def list_tokens(self) -> list[TokenRow]:
        rows = self._all(f"SELECT {_TOKEN_FIELDS} FROM tokens ORDER BY actor, created_at, id")
        return [_token(r) for r in rows]

    def remove_token(self, token_id: str) -> TokenRow | None:
        row = self._run(lambda c: c.execute(
            f"DELETE FROM tokens WHERE id = %s RETURNING {_TOKEN_FIELDS}", (token_id,)
        ).fetchone(), write=True)
        return _token(row) if row else None

    # -- targets ----------------------------------------------------------------------

    def add_target(self, rec: TargetRecord) -> None:
        created = ts(rec.created_at) if rec.created_at else time.time()

        def write(c: Conn) -> None:
            added = c.execute(
                f"INSERT INTO targets ({_TARGET_FIELDS}) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (rec.name, rec.extension,
                 sorted_json(rec.config), created))
            if added.rowcount == 0:
                raise Conflict(f"a target named {rec.name!r} exists already",
                               hint="remove it first with `sandboxer targets remove`")

        self._run(write, write=True)

    def list_targets(self, extension: str | None = None) -> list[TargetRecord]:
        sql = f"SELECT {_TARGET_FIELDS} FROM targets"
        args: list[Any] = []
        if extension is not None:
            sql += " WHERE extension = %s"
            args.append(extension)
        return [_target(r) for r in self._all(sql + " ORDER BY name", args)]

    def get_target(self, name: str) -> TargetRecord | None:
        row = self._one(f"SELECT {_TARGET_FIELDS} FROM targets WHERE name = %s", (name,))
        return _target(row) if row else None

    def remove_target(self, name: str) -> None:
        def write(c: Conn) -> None:
            row = c.execute(f"SELECT COUNT(*) AS n FROM sandboxes WHERE target = %s AND {LIVE}",
                            (name,)).fetchone()
            live = int(row["n"]) if row else 0
            if live:
                raise Conflict(f"target {name!r} still holds {live} live sandbox(es)",
                               hint="destroy them first (sandboxer list shows them)")
            if c.execute("DELETE FROM targets WHERE name = %s", (name,)).rowcount == 0:
                raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")

        self._run(write, write=True)
