"""Which Client the CLI talks to."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.client import Client
    from sandboxer.client.service import ServiceClient
    from sandboxer.config import Settings

Doc = dict[str, Any]


def make_client(progress: Callable[[str], None] | None = None) -> Client:
    """The in-process LocalClient, or an HttpClient when ``SANDBOXER_URL`` names a server
    (as the actor of ``SANDBOXER_TOKEN``); see ``sandboxer.client.make_client``."""
    from sandboxer.client import make_client as make

    return make(progress=progress)


class WarmClient:
    """The commands that change one sandbox or reach it (create, destroy, extend, stop,
    start, pause, resume, snapshot, fork, ssh, reachability show): through the warm local service
    (``client/service.py``) when it takes the request, else through ``make_client`` in
    this process, as before.

    Importing this, and a request through the service, loads neither pydantic nor asyncio
    nor an SSH library."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        from sandboxer.client.service import for_cli

        self._progress = progress
        self._thin: ServiceClient | None = for_cli(progress)
        self._full: Client | None = None

    @property
    def full(self) -> Client:
        """The usual client (in-process or HTTP), made on first use."""
        if self._full is None:
            self._full = make_client(progress=self._progress)
        return self._full

    @property
    def settings(self) -> Settings:
        return self._thin.settings if self._thin is not None else self.full.settings

    def _thin_or_none(self, op: Callable[[ServiceClient], Doc]) -> Doc | None:
        if self._thin is None:
            return None
        from sandboxer.client.service import Unavailable

        try:
            return op(self._thin)
        except Unavailable as e:
            self._thin = None  # other settings, or no service: this process from now on
            import os

            if os.environ.get("SANDBOXER_DEBUG") == "1":
                import sys

                sys.stderr.write(f"sandboxer: not through the local service ({e}); "
                                 "working in this process\n")
            return None

    def create(self, profile_id: str, **options: Any) -> Doc:
        doc = self._thin_or_none(lambda c: c.create(profile_id, **options))
        return doc if doc is not None else dict(self.full.create(profile_id,
                                                                 **options).document())

    def get_document(self, sandbox_id: str) -> Doc:
        doc = self._thin_or_none(lambda c: c.get_document(sandbox_id))
        return doc if doc is not None else self.full.get_document(sandbox_id)

    def extend(self, sandbox_id: str, ttl: str) -> Doc:
        doc = self._thin_or_none(lambda c: c.extend(sandbox_id, ttl))
        return doc if doc is not None else dict(self.full.extend(sandbox_id, ttl).document())

    def destroy_document(self, sandbox_id: str) -> Doc:
        doc = self._thin_or_none(lambda c: c.destroy_document(sandbox_id))
        return doc if doc is not None else self.full.destroy_document(sandbox_id)

    def lifecycle(self, op: str, sandbox_id: str) -> Doc:
        """``stop``, ``start``, ``pause`` or ``resume`` one sandbox."""
        doc = self._thin_or_none(lambda c: c.lifecycle(op, sandbox_id))
        if doc is not None:
            return doc
        change = {"stop": self.full.stop, "start": self.full.start,
                  "pause": self.full.pause, "resume": self.full.resume}[op]
        return dict(change(sandbox_id).document())

    def snapshot(self, sandbox_id: str, **options: Any) -> Doc:
        doc = self._thin_or_none(lambda c: c.snapshot(sandbox_id, **options))
        return doc if doc is not None else dict(self.full.snapshot(sandbox_id,
                                                                   **options).document())

    def fork(self, sandbox_id: str, **options: Any) -> Doc:
        doc = self._thin_or_none(lambda c: c.fork(sandbox_id, **options))
        return doc if doc is not None else dict(self.full.fork(sandbox_id,
                                                               **options).document())

    def identity(self, sandbox_id: str) -> str:
        return self.full.identity(sandbox_id)


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
