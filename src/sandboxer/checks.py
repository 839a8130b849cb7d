"""What a request's values must look like: one check and one message per value.

Every shell (CLI, HTTP API, MCP, the remote CLI through the API) hands its input to the
application service unchecked beyond its shape, and the service and the manager check it
here, so one input gets one error code and one message whatever the transport. Standard
library only: the CLI's reads use it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sandboxer.errors import InvalidInput
from sandboxer.models.queries import STATES
from sandboxer.values import parse_duration, safe_repr, validate_actor, validate_name


def ttl(text: str) -> str:
    """``text`` if it is a duration (90s, 15m, 8h, 7d); InvalidInput otherwise."""
    try:
        parse_duration(text)
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    return text


def actor(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return validate_actor(text)
    except ValueError as e:
        raise InvalidInput(f"actor {safe_repr(text) if isinstance(text, str) else ''}: "
                           f"{e}") from e


def name(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return validate_name(text)
    except ValueError as e:
        raise InvalidInput(f"name: {e}") from e


def states(values: Iterable[str] | None) -> list[str] | None:
    """The states of a list filter; an unknown one is refused, never an empty answer."""
    if values is None:
        return None
    out = list(values)
    for s in out:
        if s not in STATES:
            raise InvalidInput(f"state {safe_repr(str(s))} is not a sandbox state",
                               hint=f"expected one of {', '.join(STATES)}")
    return out
