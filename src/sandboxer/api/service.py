"""What the HTTP API does, as the caller it authenticated: the application service.

A thin layer over ``sandboxer.service.Service`` (one store, one Manager) that keeps what
only a server needs: a create runs as its own task, shielded from the request, so a
client that hangs up does not cancel it, and on shutdown the server waits for it (then
cancels it, which records it failed cleanly); each state change wakes the State Hub
publisher; the reaper's round. Store writes are short and never span an await, so the one
SQLite connection is safe here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sandboxer.access import Caller
from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed
from sandboxer.manager import Manager
from sandboxer.models.requests import (
    CreateRequest,
    ForkRequest,
    ImageBuildRequest,
    SnapshotRequest,
    TargetAddRequest,
    ValidateRequest,
)
from sandboxer.service.app import Service as AppService
from sandboxer.store.base import Store

if TYPE_CHECKING:
    from sandboxer.models.doctor import Check
    from sandboxer.service.leader import Campaign

log = logging.getLogger(__name__)
# How long an accepted token is trusted without asking the store again: the bound on how
# long a removed token keeps working (in each server process). Documented in docs/api.md.
TOKEN_CACHE_SECONDS = 1.0
TOKEN_CACHE_SIZE = 4096


class Service:
    """The API's state: the application service, in-flight creates, publisher wake-up."""

    def __init__(self, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        settings.ensure()
        # A server reaps and prunes on its own loops (api/app.py), never in a request.
        self.app = AppService(settings, upkeep=False)
        self.settings = settings
        self.creates: set[asyncio.Task[Any]] = set()
        self.changed = asyncio.Event()  # set after each state change: wakes the publisher
        self._clock = clock
        self._callers: dict[str, tuple[Caller, float]] = {}  # token hash -> caller, seen
        self.app.on_token_removed = self._callers.clear  # removed here: refused at once
        self.campaign: Campaign | None = None  # for the leader role (api/app.py sets it)

    @property
    def store(self) -> Store:
        return self.app.store

    @property
    def manager(self) -> Manager:
        return self.app.manager

    def client(self, caller: Caller) -> LocalClient:
        """The service's reads as a Client, scoped to ``caller``."""
        return LocalClient(service=self.app, caller=caller)

    def authenticate(self, token: str) -> Caller | None:
        """The actor of a bearer token. A token the store accepted is trusted for
        ``TOKEN_CACHE_SECONDS`` without asking it again (one lookup a second per token,
        not one per request); an unknown one is looked up every time, so a new token
        works at once and a removed one stops within that bound (at once in the process
        that removed it, through the API)."""
        from sandboxer.store.tokens import hash_token

        digest = hash_token(token)  # the key: the token itself is not kept
        trusted = self._trusted(digest)
        if trusted is not None:
            return trusted
        now = self._clock()
        found = self.app.authenticate(token)
        if found is None:
            self._callers.pop(digest, None)
            return None
        if len(self._callers) >= TOKEN_CACHE_SIZE:  # many tokens: drop the stale ones
            self._callers = {k: v for k, v in self._callers.items()
                             if now - v[1] < TOKEN_CACHE_SECONDS}
        self._callers[digest] = (found, now)
        return found

    async def authenticate_on_loop(self, token: str) -> Caller | None:
        """``authenticate`` for the event loop: a token trusted within the bound answers at
        once; any other is looked up in a worker thread, so unknown tokens (sent by anyone,
        as fast as they like) never hold the loop on a database round trip."""
        from sandboxer.store.tokens import hash_token

        trusted = self._trusted(hash_token(token))
        if trusted is not None:
            return trusted
        return await asyncio.to_thread(self.authenticate, token)

    def _trusted(self, digest: str) -> Caller | None:
        """The caller of a token hash the store accepted within TOKEN_CACHE_SECONDS."""
        hit = self._callers.get(digest)
        if hit is not None and self._clock() - hit[1] < TOKEN_CACHE_SECONDS:
            return hit[0]
        return None

    # -- sandboxes --------------------------------------------------------------------

    async def get_document(self, caller: Caller, sandbox_id: str) -> dict[str, Any]:
        """One sandbox's document: one store read on the event loop (the reads are short,
        as the writes are); only when its endpoint is due a check (at most once a second
        per sandbox: ServiceCore.claim_serve_checks) does that check run, in a worker
        thread, since it asks another process and may start one."""
        doc = self.app.read_document(sandbox_id, caller=caller)
        due = self.app.claim_serve_checks([doc])
        if due:
            restarted = await asyncio.to_thread(self.app.serve_claimed, due)
            if restarted:
                doc = self.app.read_document(sandbox_id, caller=caller)
        return doc

    async def create(self, caller: Caller, req: CreateRequest) -> dict[str, Any]:
        if req.dry_run:
            return await self.app.plan(req, caller=caller)
        return await self.in_flight(self.app.create(req, caller=caller))

    async def fork(self, caller: Caller, sandbox_id: str, req: ForkRequest) -> dict[str, Any]:
        """A fork creates: it runs as a create does (shielded, drained at shutdown)."""
        return await self.in_flight(self.app.fork(sandbox_id, req, caller=caller))

    async def snapshot(self, caller: Caller, sandbox_id: str,
                       req: SnapshotRequest) -> dict[str, Any]:
        """A snapshot may copy a whole workspace or disk: shielded from the request too."""
        return await self.in_flight(self.app.snapshot(sandbox_id, req, caller=caller))

    async def delete_snapshot(self, caller: Caller, snapshot_id: str) -> dict[str, Any]:
        status = await self.app.delete_snapshot(snapshot_id, caller=caller)
        self.changed.set()
        return dict(status.document())

    async def in_flight(self, work: Coroutine[Any, Any, Any]) -> dict[str, Any]:
        """Run a create (or fork, or snapshot) as a task of its own, shielded from the
        request; its document."""
        task = asyncio.ensure_future(work)
        self.creates.add(task)
        task.add_done_callback(self._created)
        try:
            status = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The server is stopping and gave up on this request (uvicorn cancels requests
            # after its graceful timeout): the create still finishes or is cancelled by
            # drain(); answer with what became of it, as an error document, not a bare 500.
            await asyncio.wait({task})
            if task.cancelled():
                raise ProvisionFailed(
                    "the server shut down before the sandbox was ready; it was destroyed "
                    "and recorded failed", hint="retry against a running server") from None
            status = task.result()  # raises the create's own error, mapped as usual
        return dict(status.document())

    def _created(self, task: asyncio.Task[Any]) -> None:
        self.creates.discard(task)
        self.changed.set()
        if not task.cancelled():
            task.exception()  # retrieved: the request (if still there) reports it

    def extend(self, caller: Caller, sandbox_id: str, ttl: str) -> dict[str, Any]:
        status = self.app.extend(sandbox_id, ttl, caller=caller)
        self.changed.set()
        return dict(status.document())

    async def destroy(self, caller: Caller, sandbox_id: str) -> dict[str, Any]:
        status = await self.app.destroy(sandbox_id, caller=caller)
        self.changed.set()
        return dict(status.document())

    async def lifecycle(self, caller: Caller, op: str, sandbox_id: str) -> dict[str, Any]:
        """``stop``, ``start``, ``pause`` or ``resume`` (the application service's)."""
        status = await self.app.lifecycle(op, sandbox_id, caller=caller)
        self.changed.set()
        return dict(status.document())

    async def reap(self, caller: Caller) -> list[dict[str, Any]]:
        done = await self.app.reap(caller=caller)
        self.changed.set()
        return [dict(s.document()) for s in done]

    async def reconcile(self, caller: Caller) -> list[dict[str, Any]]:
        removed = await self.app.reconcile(caller=caller)
        self.changed.set()
        return removed

    async def reap_due(self) -> None:
        """The server's reaper: one cheap query when nothing is due."""
        from datetime import UTC, datetime

        from sandboxer import reaping

        if reaping.any_due(self.store, datetime.now(UTC)):
            done = await self.manager.reap()
            if done:
                log.info("reaped %d sandbox(es)", len(done))
            self.changed.set()  # a snapshot whose retention ended is no sandbox

    async def drain(self, grace: float) -> None:
        """Shutdown: let in-flight creates finish for ``grace`` seconds, then cancel them
        (the manager destroys what they made and records them failed)."""
        pending = set(self.creates)
        if not pending:
            return
        log.info("waiting up to %.0fs for %d create(s) in flight", grace, len(pending))
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=60)
            await asyncio.sleep(0.1)  # their requests answer (create() above) before we stop
            log.warning("cancelled %d create(s) at shutdown; they are recorded failed",
                        len(late))

    # -- profiles, targets, images ----------------------------------------------------

    def validate(self, caller: Caller, req: ValidateRequest) -> list[dict[str, Any]]:
        """Validate uploaded profile files (in a private temporary directory)."""
        return self.app.validate_files([(f.name, f.content) for f in req.files],
                                       caller=caller)

    async def targets_add(self, caller: Caller, req: TargetAddRequest) -> dict[str, Any]:
        return await self.app.targets_add(req, caller=caller)

    async def targets_check(self, caller: Caller, name: str | None) -> list[dict[str, Any]]:
        return await self.app.targets_check(name, caller=caller)

    async def images_build(self, caller: Caller, name: str,
                           req: ImageBuildRequest) -> dict[str, Any]:
        """A build is long and rare: it runs in a worker thread with its own service (and
        store connection), so the shared one never crosses threads."""
        from sandboxer.access import require_admin

        require_admin(caller, "building an image")
        own = AppService(self.settings, upkeep=False)
        try:
            return await asyncio.to_thread(
                lambda: asyncio.run(own.images_build(name, req, caller=caller)))
        finally:
            own.close()

    async def events_publish(self, caller: Caller) -> dict[str, Any]:
        """`sandboxer events publish` on the server's home (admin): one delivery pass, in a
        worker thread with a service of its own (it runs its own event loop); Conflict
        when another process — normally a replica leading, maybe this one — holds the
        leader role (``skipped`` stays false: kept for older clients)."""
        from sandboxer.access import require_admin

        require_admin(caller, "publishing events")

        def once() -> tuple[dict[str, Any], bool]:
            own = AppService(self.settings, upkeep=False)
            try:
                return own.publish_events(caller=caller)
            finally:
                own.close()

        doc, held = await asyncio.to_thread(once)
        return {**doc, "skipped": not held}

    async def doctor(self, caller: Caller) -> list[Check]:
        """The server's machine, as `sandboxer doctor` sees it (the service allows an admin
        only); its checks run
        subprocesses, so in a worker thread, with a service of their own (store
        connection), as image builds do."""
        checks = await asyncio.to_thread(
            lambda: AppService(self.settings, upkeep=False).doctor(caller=caller))
        if self.campaign is not None and self.campaign.since is not None:  # we lead
            mine = self.app.leader_check(leading=self.campaign.since)
            checks = [mine if c.name == mine.name else c for c in checks]
        return checks
