"""API bearer tokens: only a sha256 hash of each token is stored, mapped to an actor."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from typing import Any

from sandboxer.errors import InvalidInput, NotFound
from sandboxer.store.sqlite import SqliteStore, _iso
from sandboxer.values import safe_repr

PREFIX = "sbxt_"
ACTOR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as ADR 0002 spells actor ids


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast unsalted hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "actor": row["actor"], "admin": bool(row["admin"]),
            "created_at": _iso(row["created_at"]),
            "last_used_at": _iso(row["last_used_at"]) if row["last_used_at"] else None}


class Tokens:
    """The ``tokens`` table of one store."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def add(self, actor: str, *, admin: bool = False) -> tuple[str, dict[str, Any]]:
        """A new token for ``actor``: returns the token (shown once) and its summary."""
        if not ACTOR_ID.fullmatch(actor):
            raise InvalidInput(f"actor {safe_repr(actor)}: expected 1-64 characters of "
                               "A-Z a-z 0-9 . _ -")
        token = PREFIX + secrets.token_urlsafe(32)
        digest = hash_token(token)
        tid = "tok-" + digest[:12]
        now = time.time()
        with self.store._write() as c:
            c.execute("INSERT INTO tokens (id, hash, actor, admin, created_at) "
                      "VALUES (?, ?, ?, ?, ?)", (tid, digest, actor, int(admin), now))
        return token, {"id": tid, "actor": actor, "admin": admin, "created_at": _iso(now),
                       "last_used_at": None}

    def lookup(self, token: str) -> tuple[str, str, bool] | None:
        """(id, actor, admin) of a presented token, or None."""
        row = self.store._conn.execute(
            "SELECT id, actor, admin FROM tokens WHERE hash = ?", (hash_token(token),)
        ).fetchone()
        return (row["id"], row["actor"], bool(row["admin"])) if row else None

    def touch(self, token_id: str) -> None:
        with self.store._write() as c:
            c.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (time.time(), token_id))

    def list(self) -> list[dict[str, Any]]:
        rows = self.store._conn.execute(
            "SELECT id, actor, admin, created_at, last_used_at FROM tokens "
            "ORDER BY actor, created_at").fetchall()
        return [_summary(r) for r in rows]

    def remove(self, token_id: str) -> dict[str, Any]:
        """Revoke one token by id; NotFound when there is none."""
        with self.store._write() as c:
            row = c.execute("SELECT id, actor, admin, created_at, last_used_at FROM tokens "
                            "WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFound(f"no token with id {safe_repr(token_id)}",
                               hint="see `sandboxer tokens list`")
            c.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        return _summary(row)
