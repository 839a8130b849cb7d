"""Which Client the CLI talks to."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxer.client import Client


def make_client(progress: Callable[[str], None] | None = None) -> Client:
    """The in-process LocalClient, or an HttpClient when ``SANDBOXER_URL`` names a server
    (as the actor of ``SANDBOXER_TOKEN``); httpx is imported only then."""
    from sandboxer import envvars

    url, verify = envvars.server(os.environ)
    if url:
        from sandboxer.client.http import HttpClient

        return HttpClient(url, os.environ.get("SANDBOXER_TOKEN") or None,
                          progress=progress, verify=verify)
    from sandboxer.client.local import LocalClient

    return LocalClient(progress=progress)


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``k=v`` pairs from repeated --label options, validated like profile labels."""
    from sandboxer.errors import InvalidInput
    from sandboxer.values import parse_labels as parse

    try:
        return parse(items or [])
    except ValueError as e:
        raise InvalidInput(str(e)) from e
