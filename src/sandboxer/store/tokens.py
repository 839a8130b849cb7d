"""API bearer tokens: only a sha256 hash of each token is stored, mapped to an actor.

The policy (token format, actor ids, hashing) lives here; the rows live in any ``Store``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from sandboxer.errors import InvalidInput, NotFound
from sandboxer.store.base import TokenRow, iso_from_epoch
from sandboxer.values import safe_repr

if TYPE_CHECKING:
    from sandboxer.store.base import Store

PREFIX = "sbxt_"
ACTOR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as ADR 0002 spells actor ids


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast unsalted hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _summary(row: TokenRow) -> dict[str, Any]:
    return {"id": row.id, "actor": row.actor, "admin": row.admin,
            "created_at": iso_from_epoch(row.created_at),
            "last_used_at": iso_from_epoch(row.last_used_at) if row.last_used_at else None}


class Tokens:
    """The API tokens of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, actor: str, *, admin: bool = False) -> tuple[str, dict[str, Any]]:
        """A new token for ``actor``: returns the token (shown once) and its summary."""
        if not ACTOR_ID.fullmatch(actor):
            raise InvalidInput(f"actor {safe_repr(actor)}: expected 1-64 characters of "
                               "A-Z a-z 0-9 . _ -")
        token = PREFIX + secrets.token_urlsafe(32)
        digest = hash_token(token)
        row = TokenRow(id="tok-" + digest[:12], hash=digest, actor=actor, admin=admin,
                       created_at=time.time(), last_used_at=None)
        self.store.add_token(row)
        return token, _summary(row)

    def lookup(self, token: str) -> tuple[str, str, bool] | None:
        """(id, actor, admin) of a presented token, or None."""
        row = self.store.token_by_hash(hash_token(token))
        return (row.id, row.actor, row.admin) if row else None

    def touch(self, token_id: str) -> None:
        self.store.touch_token(token_id, time.time())

    def list(self) -> list[dict[str, Any]]:
        return [_summary(r) for r in self.store.list_tokens()]

    def remove(self, token_id: str) -> dict[str, Any]:
        """Revoke one token by id; NotFound when there is none."""
        row = self.store.remove_token(token_id)
        if row is None:
            raise NotFound(f"no token with id {safe_repr(token_id)}",
                           hint="see `sandboxer tokens list`")
        return _summary(row)
