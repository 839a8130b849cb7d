"""Which Client the CLI talks to."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxer.client import Client


def make_client(progress: Callable[[str], None] | None = None) -> Client:
    """The in-process LocalClient, or an HttpClient when ``SANDBOXER_URL`` names a server
    (as the actor of ``SANDBOXER_TOKEN``); see ``sandboxer.client.make_client``."""
    from sandboxer.client import make_client as make

    return make(progress=progress)


def local_only(command: str, why: str) -> None:
    """Refuse (exit 2) a command that acts on this machine's home or database only, when
    ``SANDBOXER_URL`` says the user means a server: it must not silently act here."""
    import os

    from sandboxer.errors import UsageError

    url = os.environ.get("SANDBOXER_URL")
    if url:
        raise UsageError(f"`sandboxer {command}` cannot work through SANDBOXER_URL: {why}",
                         hint="run it on the server's machine, with SANDBOXER_URL unset")


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``k=v`` pairs from repeated --label options, validated like profile labels."""
    from sandboxer.errors import InvalidInput
    from sandboxer.values import parse_labels as parse

    try:
        return parse(items or [])
    except ValueError as e:
        raise InvalidInput(str(e)) from e
