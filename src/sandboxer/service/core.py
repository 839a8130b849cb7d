"""What every part of the application service shares: settings, the store, the Manager.

Importing this stays cheap (no pydantic, no asyncio): the CLI's ``get`` and ``list`` run
through it. The Manager, the catalog and anything that awaits load only when used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sandboxer.config import Settings
from sandboxer.errors import SandboxerError
from sandboxer.store import open_store
from sandboxer.store.base import Store

if TYPE_CHECKING:
    from sandboxer.catalog import Catalog
    from sandboxer.manager import Manager

log = logging.getLogger(__name__)


class ServiceCore:
    """Settings, store and Manager of one service, plus the upkeep an in-process host
    does on each call (``upkeep``: reap expired leases it sees, prune old events, serve
    local sandboxes again after a reap); a long-lived server has its own loops for that."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        manager: Manager | None = None,
        progress: Callable[[str], None] | None = None,
        upkeep: bool = True,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.progress = progress
        self.upkeep = upkeep
        self._store: Store | None = store
        self._manager: Manager | None = manager

    @property
    def store(self) -> Store:
        if self._store is None:
            self.settings.ensure()
            self._store = open_store(self.settings)
        return self._store

    @property
    def manager(self) -> Manager:
        if self._manager is None:
            from sandboxer.manager import Manager

            self._manager = Manager(self.settings, store=self.store, progress=self.progress)
        return self._manager

    def catalog(self) -> Catalog:
        """A fresh catalog (profile files may have changed since the last call)."""
        from sandboxer.catalog import Catalog

        return Catalog(self.settings)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def _report(self) -> Callable[[str], None]:
        return self.progress or (lambda _m: None)

    # -- upkeep -----------------------------------------------------------------------

    def reap_seen(self) -> None:
        """An in-process call reaps the expired leases it sees; one indexed query when
        none are. Never in a running event loop (a server reaps on its own loop)."""
        from sandboxer import reaping

        if self.upkeep and reaping.any_due(self.store, datetime.now(UTC)):
            import asyncio  # 30+ ms to import: only when something is due

            try:
                asyncio.run(self.manager.reap())
            except SandboxerError as e:
                log.warning("opportunistic reap failed: %s", e.render())

    def prune_events(self) -> None:
        """Keep the outbox bounded (SANDBOXER_EVENTS_RETENTION); one indexed delete."""
        if not self.upkeep:
            return
        from sandboxer import events

        try:
            events.prune(self.settings, self.store)
        except SandboxerError as e:
            log.warning("pruning old events failed: %s", e.render())

    def serve(self, docs: list[dict[str, Any]]) -> bool:
        """Serve again the ready sandboxes among ``docs`` whose endpoint is gone; True
        when anything was restarted (read the store again). Runs no event loop of its
        own unless something must be restarted."""
        from sandboxer.service import bridges

        return bridges.ensure_served(self.settings, docs, lambda: self.manager)

    async def serve_ready(self) -> None:
        """After a reap or reconcile in an in-process host: every ready sandbox served."""
        if self.upkeep:
            import asyncio

            docs = self.store.query_documents(states=["ready"])
            await asyncio.to_thread(self.serve, docs)
