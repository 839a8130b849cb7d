"""LocalClient: the application service (``sandboxer.service``) in this process.

A thin synchronous adapter: each method builds the service's typed request and calls it
as ``caller`` (None: the local operator, an admin); ``asyncio.run`` only where the
service awaits. Reads (``get``, ``list``, ``events``) stay plain calls over the store, so
they import nothing that talks to SSH or docker, and no pydantic.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sandboxer.access import Caller
from sandboxer.client._reads import TypedReads
from sandboxer.config import Settings
from sandboxer.models.queries import LIVE_STATES, EventsQuery, ListRequest
from sandboxer.service.app import Service

if TYPE_CHECKING:  # pydantic models load only where a command needs them
    from sandboxer.manager import Manager
    from sandboxer.models.doctor import Check
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.requests import CreateRequest
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.snapshot import SnapshotStatus
    from sandboxer.store.base import Store

__all__ = ["LIVE_STATES", "LocalClient"]
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # 30+ ms to import: only commands that change state pay for it

    return asyncio.run(coro)


def _create_request(profile_id: str, **fields: Any) -> CreateRequest:
    """The service checks every value itself (one message per mistake, whatever the
    transport); a typed Python caller's request is taken as built."""
    from sandboxer.models.requests import CreateRequest

    return CreateRequest.model_construct(profile=profile_id, **fields)


class LocalClient(TypedReads):
    """The Client that runs the application service in this process."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        reap_opportunistically: bool = True,
        caller: Caller | None = None,
        store: Store | None = None,
        manager: Manager | None = None,
        service: Service | None = None,
    ) -> None:
        """``caller``: who is asking (an API or MCP actor); None is the local operator, an
        admin, as for the CLI. ``service`` (or ``store``/``manager``): share those of a
        long-lived process."""
        self.service = service or Service(settings, store=store, manager=manager,
                                          progress=progress, upkeep=reap_opportunistically)
        self.settings = self.service.settings
        self.caller = caller

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def manager(self) -> Manager:
        return self.service.manager

    # -- profiles ---------------------------------------------------------------------

    def list_profiles(self) -> list[dict[str, Any]]:
        return self.service.list_profiles(caller=self.caller)

    def get_profile(self, profile_id: str) -> Profile:
        return self.service.get_profile(profile_id, caller=self.caller)

    def validate_profiles(self, paths: list[Path]) -> list[dict[str, Any]]:
        return self.service.validate_profiles(paths, caller=self.caller)

    # -- sandboxes --------------------------------------------------------------------

    def plan(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
             labels: dict[str, str] | None = None,
             target: str | None = None) -> dict[str, Any]:
        req = _create_request(profile_id, ttl=ttl, actor=actor, labels=labels or {},
                              target=target, dry_run=True)
        return _run(self.service.plan(req, caller=self.caller))

    def create(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
               labels: dict[str, str] | None = None, target: str | None = None,
               name: str | None = None, from_snapshot: str | None = None) -> SandboxStatus:
        self.service.reap_seen()
        req = _create_request(profile_id, ttl=ttl, actor=actor, labels=labels or {},
                              target=target, name=name, from_snapshot=from_snapshot)
        return _run(self.service.create(req, caller=self.caller))

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        return self.service.get_document(sandbox_id, caller=self.caller)

    def list_documents(self, *, states: list[str] | None = None, profile: str | None = None,
                       actor: str | None = None, labels: dict[str, str] | None = None,
                       all: bool = False) -> list[dict[str, Any]]:
        req = ListRequest(states=None if states is None else tuple(states), profile=profile,
                          actor=actor, labels=dict(labels or {}), all=all)
        return self.service.list_documents(req, caller=self.caller)

    def extend(self, sandbox_id: str, ttl: str) -> SandboxStatus:
        return self.service.extend(sandbox_id, ttl, caller=self.caller)

    def destroy_document(self, sandbox_id: str) -> dict[str, Any]:
        """Destroy and return the final document; a sandbox whose extension's process
        runs already is destroyed by it (the CLI's fast path), anything else here."""
        done = self.service.destroy_fast(sandbox_id, caller=self.caller)
        if done is not None:
            return done
        return dict(self.destroy(sandbox_id).document())

    def destroy(self, sandbox_id: str) -> SandboxStatus:
        return _run(self.service.destroy(sandbox_id, caller=self.caller))

    def stop(self, sandbox_id: str) -> SandboxStatus:
        return _run(self.service.stop(sandbox_id, caller=self.caller))

    def start(self, sandbox_id: str) -> SandboxStatus:
        return _run(self.service.start(sandbox_id, caller=self.caller))

    def pause(self, sandbox_id: str) -> SandboxStatus:
        return _run(self.service.pause(sandbox_id, caller=self.caller))

    def resume(self, sandbox_id: str) -> SandboxStatus:
        return _run(self.service.resume(sandbox_id, caller=self.caller))

    def snapshot(self, sandbox_id: str, *, name: str | None = None,
                 retain: str | None = None) -> SnapshotStatus:
        from sandboxer.models.requests import SnapshotRequest

        self.service.reap_seen()
        req = SnapshotRequest.model_construct(name=name, retain=retain)
        return _run(self.service.snapshot(sandbox_id, req, caller=self.caller))

    def get_snapshot(self, snapshot_id: str) -> SnapshotStatus:
        return self.service.get_snapshot(snapshot_id, caller=self.caller)

    def list_snapshots(self, *, sandbox_id: str | None = None,
                       all: bool = False) -> list[SnapshotStatus]:
        self.service.reap_seen()
        return self.service.list_snapshots(sandbox_id=sandbox_id, all=all,
                                           caller=self.caller)

    def delete_snapshot(self, snapshot_id: str) -> SnapshotStatus:
        return _run(self.service.delete_snapshot(snapshot_id, caller=self.caller))

    def fork(self, sandbox_id: str, *, ttl: str | None = None,
             labels: dict[str, str] | None = None, name: str | None = None,
             actor: str | None = None) -> SandboxStatus:
        from sandboxer.models.requests import ForkRequest

        self.service.reap_seen()
        req = ForkRequest.model_construct(ttl=ttl, labels=dict(labels or {}), name=name,
                                          actor=actor)
        return _run(self.service.fork(sandbox_id, req, caller=self.caller))

    def reap(self) -> list[SandboxStatus]:
        return _run(self.service.reap(caller=self.caller))

    def reconcile(self) -> list[dict[str, Any]]:
        return _run(self.service.reconcile(caller=self.caller))

    def reachability(self, sandbox_id: str) -> Reachability:
        return self.service.reachability(sandbox_id, caller=self.caller)

    def identity(self, sandbox_id: str) -> str:
        return self.service.identity(sandbox_id, caller=self.caller)

    def event_documents(self, *, after: int = 0, sandbox_id: str | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]:
        """Events with their delivery state, as sandboxer.event/v1 documents."""
        query = EventsQuery(after=after, sandbox_id=sandbox_id, limit=limit)
        return self.service.event_documents(query, caller=self.caller)

    # -- targets and images -----------------------------------------------------------

    def pools_list(self) -> list[dict[str, Any]]:
        return self.service.list_pools(caller=self.caller)

    def pools_show(self, profile_id: str) -> dict[str, Any]:
        return self.service.get_pool(profile_id, caller=self.caller)

    def targets_list(self) -> list[dict[str, Any]]:
        return self.service.targets_list(caller=self.caller)

    def targets_add(self, *, name: str, url: str, identity: str | None = None,
                    public_host: str | None = None, capacity: int | None = None,
                    kind: str = "self-hosted", allow: list[str] | None = None,
                    fingerprint: str | None = None, extension: str | None = None,
                    confirm: Callable[[str], bool] | None = None,
                    labels: dict[str, str] | None = None) -> dict[str, Any]:
        from sandboxer.models.requests import TargetAddRequest

        fields: dict[str, Any] = {
            "name": name, "url": url, "identity": identity, "public_host": public_host,
            "capacity": capacity, "kind": kind, "allow": list(allow or []),
            "host_key_fingerprint": fingerprint, "accept_new_host_key": False,
            "extension": extension, "labels": dict(labels or {})}
        req = TargetAddRequest.model_construct(**fields)
        return _run(self.service.targets_add(req, caller=self.caller, confirm=confirm))

    def targets_check(self, name: str | None = None) -> list[dict[str, Any]]:
        return _run(self.service.targets_check(name, caller=self.caller))

    def targets_remove(self, name: str) -> None:
        self.service.targets_remove(name, caller=self.caller)

    def images_build(self, name: str, *, target: str = "local",
                     variables: dict[str, str] | None = None,
                     force: bool = False) -> dict[str, Any]:
        from sandboxer.models.requests import ImageBuildRequest

        req = ImageBuildRequest.model_construct(target=target, variables=variables or {},
                                                force=force)
        return _run(self.service.images_build(name, req, caller=self.caller))

    # -- the operator's: tokens, the outbox, doctor (admin) ----------------------------

    def tokens_add(self, actor: str, *, admin: bool = False) -> tuple[str, dict[str, Any]]:
        return self.service.tokens_add(actor, admin=admin, caller=self.caller)

    def tokens_list(self) -> list[dict[str, Any]]:
        return self.service.tokens_list(caller=self.caller)

    def tokens_remove(self, token_id: str) -> dict[str, Any]:
        return self.service.tokens_remove(token_id, caller=self.caller)

    def events_publish(self) -> tuple[dict[str, Any], bool]:
        return self.service.publish_events(caller=self.caller)

    def doctor(self) -> list[Check]:
        return self.service.doctor(caller=self.caller)
