"""What the HTTP API does, as the caller it authenticated: one Manager, one store.

Everything runs on the server's event loop (store writes are short and never span an
await), so the one SQLite connection is never used by two threads. Reads reuse the
LocalClient's plain-document paths; state changes await the Manager directly. A create runs
as its own task, shielded from the request: a client that hangs up does not cancel it, and
on shutdown the server waits for it (then cancels it, which records it failed cleanly).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from sandboxer.access import Caller, require_admin
from sandboxer.api.models import (
    CreateRequest,
    ImageBuildRequest,
    TargetAddRequest,
    ValidateRequest,
)
from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import NotFound, ProvisionFailed, SandboxerError
from sandboxer.manager import Manager
from sandboxer.store import open_store
from sandboxer.store.tokens import Tokens

log = logging.getLogger(__name__)


class Service:
    """The API's state: store, manager, tokens, in-flight creates, publisher wake-up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.ensure()
        self.store = open_store(settings)
        self.manager = Manager(settings, store=self.store)
        self.tokens = Tokens(self.store)
        self.creates: set[asyncio.Task[Any]] = set()
        self.changed = asyncio.Event()  # set after each state change: wakes the publisher
        self._touched: dict[str, float] = {}

    def client(self, caller: Caller) -> LocalClient:
        """The in-process client's read paths, scoped to ``caller``; reaping is the
        server's own loop's business, never a request's."""
        return LocalClient(self.settings, caller=caller, reap_opportunistically=False,
                           store=self.store, manager=self.manager)

    def authenticate(self, token: str) -> Caller | None:
        found = self.tokens.lookup(token)
        if found is None:
            return None
        tid, actor, admin = found
        now = time.monotonic()
        if now - self._touched.get(tid, -1e9) > 60:  # last_used_at, at most once a minute
            self._touched[tid] = now
            try:
                self.tokens.touch(tid)
            except SandboxerError as e:
                log.warning("recording the use of token %s failed: %s", tid, e.render())
        return Caller(actor=actor, admin=admin)

    # -- sandboxes --------------------------------------------------------------------

    async def create(self, caller: Caller, req: CreateRequest) -> dict[str, Any]:
        options: dict[str, Any] = {"ttl": req.ttl, "actor": req.actor, "labels": req.labels,
                                   "target": req.target}
        if req.target is not None:
            self._known_target(req.profile, req.target)
        if req.dry_run:
            plan, _ext, _secrets = await self.manager.plan(
                req.profile, resolve_secrets=False, caller=caller, **options)
            return plan.document()
        task = asyncio.ensure_future(
            self.manager.create(req.profile, name=req.name, caller=caller, **options))
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

    def _known_target(self, profile_id: str, target: str) -> None:
        """A pinned target that does not exist is the caller's mistake (404), not the
        server's lack of capacity (NoTarget, 503) as placement would report it."""
        ext = self.manager.extension(self.manager.catalog.get(profile_id).extension)
        names = [t.name for t in ext.targets(self.settings)]
        if target not in names:
            raise NotFound(f"no target {target!r} for {ext.name}",
                           hint=f"known: {', '.join(names) or 'none'}")

    def _created(self, task: asyncio.Task[Any]) -> None:
        self.creates.discard(task)
        self.changed.set()
        if not task.cancelled():
            task.exception()  # retrieved: the request (if still there) reports it

    def extend(self, caller: Caller, sandbox_id: str, ttl: str) -> dict[str, Any]:
        status = self.manager.extend(sandbox_id, ttl, caller=caller)
        self.changed.set()
        return dict(status.document())

    async def destroy(self, caller: Caller, sandbox_id: str) -> dict[str, Any]:
        status = await self.manager.destroy(sandbox_id, caller=caller)
        self.changed.set()
        return dict(status.document())

    async def reap(self, caller: Caller) -> list[dict[str, Any]]:
        require_admin(caller, "reap")
        done = await self.manager.reap()
        self.changed.set()
        return [dict(s.document()) for s in done]

    async def reconcile(self, caller: Caller) -> list[dict[str, Any]]:
        require_admin(caller, "reconcile")
        removed = await self.manager.reconcile()
        self.changed.set()
        return [h.model_dump(mode="json", include={"sandbox_id", "extension", "target"})
                for h in removed]

    async def reap_due(self) -> None:
        """The server's reaper: one cheap query when nothing is due."""
        from datetime import UTC, datetime

        from sandboxer import reaping

        if reaping.any_due(self.store, datetime.now(UTC)):
            done = await self.manager.reap()
            if done:
                log.info("reaped %d sandbox(es)", len(done))
                self.changed.set()

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
        """Validate uploaded profile files in a private temporary directory."""
        with tempfile.TemporaryDirectory(prefix="sbx-validate-") as tmp:
            paths, names = [], {}
            for i, f in enumerate(req.files):
                path = Path(tmp) / str(i) / f.name  # same names may come twice
                path.parent.mkdir()
                path.write_text(f.content, encoding="utf-8")
                paths.append(path)
                names[str(path)] = f.name
            results = self.client(caller).validate_profiles(paths)
        for r in results:
            original = names.get(r["file"], r["file"])
            if r.get("error"):
                r["error"] = r["error"].replace(r["file"], original)
            r["file"] = original
        return results

    async def targets_add(self, caller: Caller, req: TargetAddRequest) -> dict[str, Any]:
        from sandboxer.extensions.compose_ssh import targets

        require_admin(caller, "adding a target")
        return await targets.add(
            self.settings, name=req.name, url=req.url,
            identity=req.identity or targets.default_identity(),
            public_host=req.public_host, capacity=req.capacity, kind=req.kind,
            allow=req.allow, fingerprint=req.host_key_fingerprint,
            confirm=lambda _fp: req.accept_new_host_key)

    async def targets_check(self, caller: Caller, name: str | None) -> list[dict[str, Any]]:
        from sandboxer.extensions.compose_ssh import targets

        return await targets.check(self.settings, name)

    async def images_build(self, caller: Caller, name: str,
                           req: ImageBuildRequest) -> dict[str, Any]:
        """A build is long and rare: it runs in a worker thread with its own client (and
        store connection), so the shared one never crosses threads."""
        require_admin(caller, "building an image")
        client = LocalClient(self.settings, caller=caller, reap_opportunistically=False)
        return await asyncio.to_thread(client.images_build, name, target=req.target,
                                       variables=req.variables, force=req.force)
