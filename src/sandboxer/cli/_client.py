"""Which Client the CLI talks to."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxer.client import Client
    from sandboxer.client.local import LocalClient


def make_client(progress: Callable[[str], None] | None = None) -> Client:
    """The in-process LocalClient, or an HttpClient when ``SANDBOXER_URL`` names a server
    (as the actor of ``SANDBOXER_TOKEN``); see ``sandboxer.client.make_client``."""
    from sandboxer.client import make_client as make

    return make(progress=progress)


def local_client() -> LocalClient:
    """This machine's service as its operator, even with ``SANDBOXER_URL`` set: tokens,
    the outbox and doctor are the local operator's business."""
    from sandboxer.client.local import LocalClient

    return LocalClient()


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``k=v`` pairs from repeated --label options, validated like profile labels."""
    from sandboxer.errors import InvalidInput
    from sandboxer.values import parse_labels as parse

    try:
        return parse(items or [])
    except ValueError as e:
        raise InvalidInput(str(e)) from e
