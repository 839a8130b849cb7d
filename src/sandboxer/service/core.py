"""What every part of the application service shares: settings, the store, the Manager.

Importing this stays cheap (no pydantic, no asyncio): the CLI's ``get`` and ``list`` run
through it. The Manager, the catalog and anything that awaits load only when used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from sandboxer.config import Settings
from sandboxer.errors import SandboxerError
from sandboxer.store import open_store
from sandboxer.store.base import Store

if TYPE_CHECKING:
    from sandboxer.catalog import Catalog
    from sandboxer.manager import Manager

log = logging.getLogger(__name__)
# A long-lived server that found a sandbox served trusts that for this long before it asks
# the extension's process again on a read (at most one check a second, not one a request).
SERVED_CHECK_SECONDS = 1.0


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
        self._served: dict[str, tuple[Any, float]] = {}  # id -> (reachability, checked)

    def for_environ(self, environ: Mapping[str, str]) -> Self:
        """This service as a caller with ``environ`` would run it in its own process (a
        request of the local service, ``service/local.py``): the same store and warm
        manager state, everything else read in that environment (``Manager.for_environ``).
        """
        return type(self)(self.settings.with_env(dict(environ)), store=self.store,
                          manager=self.manager.for_environ(environ),
                          progress=self.progress, upkeep=self.upkeep)

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
        own unless something must be restarted. A long-lived server (no ``upkeep``)
        checks only those ``claim_serve_checks`` finds due."""
        from sandboxer.service import bridges

        if self.upkeep:
            return bridges.ensure_served(self.settings, docs, lambda: self.manager)
        due = self.claim_serve_checks(docs)
        return self.serve_claimed(due) if due else False

    def claim_serve_checks(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A server's reads: the ready ones among ``docs`` not found served (at the same
        reachability) within ``SERVED_CHECK_SECONDS`` — at most one check a second per
        sandbox, not one per request. They are claimed: until ``serve_claimed`` has
        checked them, other reads trust the last finding, rather than all asking at
        once."""
        now = time.monotonic()
        due = []
        for d in docs:
            if d.get("state") != "ready":
                continue
            key = str(d.get("id"))
            seen = self._served.get(key)
            if (seen is None or now - seen[1] >= SERVED_CHECK_SECONDS
                    or seen[0] != d.get("reachability")):
                due.append(d)
                if len(self._served) > 10_000:
                    self._served.clear()
                self._served[key] = (d.get("reachability"), now)
        return due

    def serve_claimed(self, due: list[dict[str, Any]]) -> bool:
        """``serve`` for what ``claim_serve_checks`` returned (it may block: it asks the
        extension's process, and may start one); True when anything was restarted."""
        from sandboxer.service import bridges

        try:
            restarted = bridges.ensure_served(self.settings, due, lambda: self.manager)
        except BaseException:
            for d in due:
                self._served.pop(str(d.get("id")), None)
            raise
        for d in due:
            if restarted or str(d.get("reason") or "").startswith("unserved:"):
                self._served.pop(str(d.get("id")), None)  # not known served: check again
        return restarted

    async def serve_ready(self) -> None:
        """After a reap or reconcile in an in-process host: every ready sandbox served."""
        if self.upkeep:
            import asyncio

            docs = self.store.query_documents(states=["ready"])
            await asyncio.to_thread(self.serve, docs)
