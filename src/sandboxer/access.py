"""Who is asking: an actor, and whether it is an admin (docs/api.md#authentication-and-ownership).

An actor sees and changes only its own sandboxes unless it is an admin. A sandbox of
another actor answers exactly like one that does not exist, so that its existence never
leaks. The CLI over the in-process LocalClient acts as the local operator, an admin.
Standard library only: the CLI's read paths import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandboxer.errors import Forbidden, SandboxNotFound


@dataclass(frozen=True)
class Caller:
    """The authenticated actor of a request (API token, MCP server) or the local operator."""

    actor: str
    admin: bool = False

    def may_see(self, owner: str | None) -> bool:
        return self.admin or owner == self.actor


def not_found(sandbox_id: str) -> SandboxNotFound:
    """The one answer for "unknown" and "not yours" alike."""
    return SandboxNotFound(f"no sandbox with id {sandbox_id!r}",
                           hint="see `sandboxer list --all`")


def require_visible(doc: dict[str, Any] | None, sandbox_id: str,
                    caller: Caller | None) -> dict[str, Any]:
    """``doc`` when ``caller`` may see it (None: the local operator); else SandboxNotFound."""
    if doc is None or (caller is not None and not caller.may_see(doc.get("actor"))):
        raise not_found(sandbox_id)
    return doc


def owner_for_create(requested: str | None, caller: Caller | None) -> str | None:
    """The actor a new sandbox belongs to: an admin may name anyone, others only themselves."""
    if caller is None:
        return requested
    if requested is None or requested == caller.actor:
        return caller.actor
    if caller.admin:
        return requested
    raise Forbidden(f"actor {caller.actor!r} may not create sandboxes for {requested!r}",
                    hint="leave the actor out, or use an admin token")


def actor_filter(requested: str | None, caller: Caller | None) -> str | None:
    """The ``actor`` filter of a listing: a non-admin lists only its own sandboxes."""
    if caller is None or caller.admin:
        return requested
    if requested not in (None, caller.actor):
        raise Forbidden(f"actor {caller.actor!r} may list only its own sandboxes",
                        hint="leave the actor filter out, or use an admin token")
    return caller.actor


def require_admin(caller: Caller | None, what: str) -> None:
    if caller is not None and not caller.admin:
        raise Forbidden(f"{what} needs an admin token; actor {caller.actor!r} is not one",
                        hint="ask an operator: `sandboxer tokens add ACTOR --admin`")
