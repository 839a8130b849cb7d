"""LocalClient: the in-process manager over the embedded store.

Reads go straight to the store so that `get` and `list` stay fast and import nothing that
talks to SSH or docker; anything that changes state goes through the Manager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sandboxer import reaping
from sandboxer.access import Caller, actor_filter, require_admin, require_visible
from sandboxer.config import Settings
from sandboxer.errors import SandboxerError
from sandboxer.store import open_store

if TYPE_CHECKING:  # pydantic models load only where a command needs them
    from sandboxer.catalog import Catalog
    from sandboxer.manager import Manager
    from sandboxer.models.events import Event
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.store.base import Store

LIVE_STATES = ("destroying", "provisioning", "ready")
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # 30+ ms to import: only commands that change state pay for it

    return asyncio.run(coro)

log = logging.getLogger(__name__)


class LocalClient:
    """The Client that runs the manager in this process."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        reap_opportunistically: bool = True,
        caller: Caller | None = None,
        store: Store | None = None,
        manager: Manager | None = None,
    ) -> None:
        """``caller``: who is asking (an API or MCP actor); None is the local operator, an
        admin, as for the CLI. ``store``/``manager``: share those of a long-lived process."""
        self.settings = settings or Settings.from_env()
        self.caller = caller
        self.progress = progress
        self._store: Store | None = store
        self._manager: Manager | None = manager
        self._reap = reap_opportunistically

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

    def _catalog(self) -> Catalog:
        from sandboxer.catalog import Catalog

        return Catalog(self.settings)

    def _opportunistic_reap(self) -> None:
        """Every CLI call reaps expired leases it sees; one indexed query when none are."""
        if self._reap and reaping.any_due(self.store, datetime.now(UTC)):
            try:
                _run(self.manager.reap())
            except SandboxerError as e:
                log.warning("opportunistic reap failed: %s", e.render())

    # -- profiles ---------------------------------------------------------------------

    def list_profiles(self) -> list[dict[str, Any]]:
        from sandboxer.errors import ProfileInvalid

        catalog = self._catalog()
        for e in catalog.broken.values():
            log.warning("skipped: %s", e.message)
        out = []
        for pid in catalog.ids():
            src = catalog.source(pid)
            try:  # one broken profile (an extends cycle, a bad key) hides only itself
                extension = catalog.get(pid).extension
            except ProfileInvalid as e:
                log.warning("skipped %s: %s", pid, e.message)
                continue
            out.append({"id": pid, "description": src.raw.get("description", ""),
                        "extension": extension, "source": str(src.path)})
        return out

    def get_profile(self, profile_id: str) -> Profile:
        return self._catalog().get(profile_id)

    def validate_profiles(self, paths: list[Path]) -> list[dict[str, Any]]:
        from sandboxer.secrets import boundary

        catalog = self._catalog()
        loaded: dict[Path, str | SandboxerError] = {}
        for path in paths:  # all files first, so they may extend one another
            try:
                loaded[path] = catalog.add_file(path).id
            except SandboxerError as e:
                loaded[path] = e
        results = []
        for path in paths:
            outcome = loaded[path]
            try:
                if isinstance(outcome, SandboxerError):
                    raise outcome
                profile = catalog.get(outcome)
                self.manager.extension(profile.extension).parse_spec(profile)
                # The grammar and policy `create` applies (production refuses env:/file:);
                # nothing is resolved or looked up.
                boundary.parse(profile, self.settings)
                results.append({"file": str(path), "id": profile.id, "ok": True,
                                "error": None, "code": None})
            except SandboxerError as e:
                results.append({"file": str(path), "id": None if isinstance(outcome, Exception)
                                else outcome, "ok": False, "error": e.render(),
                                "code": e.code})
        return results

    # -- sandboxes --------------------------------------------------------------------

    def plan(self, profile_id: str, **options: Any) -> dict[str, Any]:
        plan, _ext, _secrets = _run(self.manager.plan(profile_id, resolve_secrets=False,
                                                      caller=self.caller, **options))
        return plan.document()

    def create(self, profile_id: str, **options: Any) -> SandboxStatus:
        self._opportunistic_reap()
        try:
            return _run(self.manager.create(profile_id, caller=self.caller, **options))
        finally:
            self._prune_events()

    def _prune_events(self) -> None:
        """Keep the outbox bounded (SANDBOXER_EVENTS_RETENTION); one indexed delete."""
        from sandboxer import events

        try:
            events.prune(self.settings, self.store)
        except SandboxerError as e:
            log.warning("pruning old events failed: %s", e.render())

    def get(self, sandbox_id: str) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(self.get_document(sandbox_id))

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        self._opportunistic_reap()
        doc = require_visible(self.store.get_document(sandbox_id), sandbox_id, self.caller)
        if self._serve_local([doc]):
            doc = require_visible(self.store.get_document(sandbox_id), sandbox_id, self.caller)
        return doc

    def _serve_local(self, docs: list[dict[str, Any]]) -> bool:
        """Bring the ext.local endpoint back when a ready local sandbox is not served.

        A killed endpoint takes every jail with it; the next command that shows or needs a
        local sandbox starts it again, which restores every live sandbox (on its recorded
        port, or a new one when that was taken: then the stored descriptor is renewed
        here). True when anything was restarted, so the caller reads the store again. One
        connect to the control socket when the endpoint is up. If it cannot be brought
        back, the documents say so in ``reason`` rather than claim a servable endpoint.
        """
        local = [d for d in docs if d.get("extension") == "ext.local" and d["state"] == "ready"]
        if not local:
            return False
        from sandboxer.extensions.local.wire import request_if_running

        listed = request_if_running(self.settings, "list", timeout=5)
        served = {e["sandbox_id"]: e["port"] for e in (listed or {}).get("sandboxes", [])}
        if listed is not None and all(
                served.get(d["id"]) == (d.get("reachability") or {}).get("port") for d in local):
            return False
        try:
            return _run(self._restore_local(local))
        except SandboxerError as e:
            for d in local:
                d["reason"] = f"unserved: {e.message}"
            return False

    async def _restore_local(self, docs: list[dict[str, Any]]) -> bool:
        from sandboxer.extensions.local import control

        await control.ensure_running(self.settings)
        listed = await control.request(self.settings, "list")
        served = {e["sandbox_id"]: e["port"] for e in listed["sandboxes"]}
        for d in docs:
            # Not restored by the daemon (serve it now), or restored on a new port.
            if served.get(d["id"]) != (d.get("reachability") or {}).get("port"):
                await self.manager.refresh_reachability(d["id"])
        return True

    def list_sandboxes(self, **filters: Any) -> list[SandboxStatus]:
        from sandboxer.models.sandbox import SandboxStatus

        return [SandboxStatus.model_validate(d) for d in self.list_documents(**filters)]

    def list_documents(self, **filters: Any) -> list[dict[str, Any]]:
        self._opportunistic_reap()
        states = filters.pop("states", None)
        if states is None and not filters.pop("all", False):
            states = list(LIVE_STATES)
        filters.pop("all", None)
        filters["actor"] = actor_filter(filters.get("actor"), self.caller)
        docs = self.store.query_documents(states=states, **filters)
        if self._serve_local(docs):
            docs = self.store.query_documents(states=states, **filters)
        return docs

    def extend(self, sandbox_id: str, ttl: str) -> SandboxStatus:
        self._opportunistic_reap()
        return self.manager.extend(sandbox_id, ttl, caller=self.caller)

    def destroy_document(self, sandbox_id: str) -> dict[str, Any]:
        """Destroy and return the final document; the fast path for the CLI.

        A running ext.local endpoint already has the manager loaded, so a local sandbox's
        destroy is handed to it; anything else (or no endpoint) runs in this process.
        """
        doc = self.get_document(sandbox_id)
        if doc["state"] in ("destroyed", "failed"):
            return doc
        if doc["extension"] == "ext.local":
            from sandboxer.errors import from_code
            from sandboxer.extensions.local.wire import request_if_running

            reply = request_if_running(self.settings, "destroy", sandbox_id=sandbox_id)
            if reply is not None:
                if not reply.get("ok"):
                    raise from_code(str(reply.get("code")), str(reply.get("error")))
                document: dict[str, Any] = reply["document"]
                return document
        return dict(self.destroy(sandbox_id).document())

    def destroy(self, sandbox_id: str) -> SandboxStatus:
        return _run(self.manager.destroy(sandbox_id, caller=self.caller))

    def reap(self) -> list[SandboxStatus]:
        require_admin(self.caller, "reap")
        reaped = _run(self.manager.reap())
        self._serve_local(self.store.query_documents(states=["ready"]))
        return reaped

    def reconcile(self) -> list[dict[str, Any]]:
        require_admin(self.caller, "reconcile")
        self._opportunistic_reap()
        self._serve_local(self.store.query_documents(states=["ready"]))
        removed = _run(self.manager.reconcile())
        return [h.model_dump(mode="json", include={"sandbox_id", "extension", "target"})
                for h in removed]

    def reachability(self, sandbox_id: str) -> Reachability:
        self.get_document(sandbox_id)  # reaps, and serves a local sandbox again if needed
        return self.manager.reachability(sandbox_id, caller=self.caller)

    def events(self, *, after: int = 0, sandbox_id: str | None = None,
               limit: int = 1000) -> list[Event]:
        from sandboxer.models.events import Event

        return [Event.model_validate(d) for d in self.event_documents(
            after=after, sandbox_id=sandbox_id, limit=limit)]

    def event_documents(self, *, after: int = 0, sandbox_id: str | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]:
        """Events with their delivery state, as sandboxer.event/v1 documents."""
        from sandboxer.store.outbox import Outbox

        actor = None if self.caller is None or self.caller.admin else self.caller.actor
        return Outbox(self.store).documents(after=after, sandbox_id=sandbox_id, limit=limit,
                                            actor=actor)

    # -- targets ----------------------------------------------------------------------

    def targets_list(self) -> list[dict[str, Any]]:
        from sandboxer.extensions.compose_ssh import targets

        return targets.list_targets(self.settings)

    def targets_add(self, **options: Any) -> dict[str, Any]:
        from sandboxer.extensions.compose_ssh import targets

        require_admin(self.caller, "adding a target")
        if options.get("identity") is None:
            options["identity"] = targets.default_identity()
        return _run(targets.add(self.settings, **options))

    def targets_check(self, name: str | None = None) -> list[dict[str, Any]]:
        from sandboxer.extensions.compose_ssh import targets

        return _run(targets.check(self.settings, name))

    def targets_remove(self, name: str) -> None:
        from sandboxer.extensions.compose_ssh import targets

        require_admin(self.caller, "removing a target")
        targets.remove(self.settings, name)

    async def _build_for_profile(self, profile_id: str, *, target: str,
                                 variables: dict[str, str], force: bool) -> dict[str, Any]:
        from sandboxer.errors import InvalidInput
        from sandboxer.extensions.base import BuildsImages

        catalog = self._catalog()
        profile = catalog.get(profile_id)
        ext = self.manager.extension(profile.extension)
        if not isinstance(ext, BuildsImages):
            raise InvalidInput(f"{profile_id} ({profile.extension}) needs no image to be built")
        return await ext.build_for_profile(profile, catalog.source(profile_id).path,
                                           target=target, variables=variables, force=force,
                                           progress=self.progress or (lambda _m: None))

    def images_build(self, name: str, *, target: str = "local",
                     variables: dict[str, str] | None = None,
                     force: bool = False) -> dict[str, Any]:
        from sandboxer.extensions.compose_ssh import images
        from sandboxer.extensions.vm_packer import build as vm_build

        require_admin(self.caller, "building an image")
        if name.startswith("profile."):  # whatever that profile's extension builds
            return _run(self._build_for_profile(name, target=target,
                                                variables=variables or {}, force=force))
        if vm_build.is_packer_name(self.settings, name):  # ext.vm-packer: Packer
            return _run(vm_build.build_named(self.settings, name, variables=variables or {},
                                             force=force,
                                             progress=self.progress or (lambda _m: None)))
        return _run(images.build(self.settings, name, target,
                                 progress=self.progress or (lambda _m: None)))
