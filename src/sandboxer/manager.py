"""Sandbox lifecycle: create, get, list, extend, destroy, reap, reconcile (docs/architecture.md).

States: provisioning -> ready -> destroying -> destroyed; provisioning -> failed. A
sandbox still provisioning may also be destroyed (provisioning -> destroying), so that an
operator can stop a create that hangs. ready <-> unreachable and unreachable -> failed
follow its target's health (``sandboxer.fleet``, run by reconcile). ready <-> stopped and
ready <-> paused (stop, start, pause, resume, rebind) are ``sandboxer.lifecycle``'s, behind
thin methods here; stopped and paused sandboxes may be extended, destroyed and reaped like
ready ones. Network and process
work never happens inside a store transaction: each transition is a short write on
either side of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from sandboxer import checks as inputs
from sandboxer import idling, lifecycle, placement, reaping, snapshots
from sandboxer.access import Caller, not_found, owner_for_create
from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    DestroyFailed,
    InvalidInput,
    ProvisionFailed,
    SandboxerError,
)
from sandboxer.extensions import base as extensions
from sandboxer.extensions.base import Extension, ProvisionRequest
from sandboxer.models.common import (
    format_duration,
    iso,
    new_sandbox_id,
    parse_duration,
    utcnow,
    validate_labels,
)
from sandboxer.models.extension import Endpoint, Handle, Target
from sandboxer.models.sandbox import FINAL_STATES, SandboxStatus
from sandboxer.secrets import boundary
from sandboxer.store import open_store
from sandboxer.store.base import Store
from sandboxer.values import not_reachable_hint

if TYPE_CHECKING:  # destroy, reap and extend never load the catalog (YAML, profile models)
    from pydantic import SecretStr

    from sandboxer.catalog import Catalog
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.snapshot import SnapshotStatus
    from sandboxer.models.target import TargetRecord
    from sandboxer.secrets.refs import Ref

log = logging.getLogger(__name__)
# Live states with a running lease: extended, destroyed and reaped (reason expired) alike.
_KEEPS_LEASE = ("ready", "unreachable", "stopped", "paused")
READY_TIMEOUT = 60.0
SETUP_STEP_TIMEOUT = 1800.0
# A sandbox made ahead for a pool is replaced at max_age (sandboxer.pools); its lease runs
# this much longer, so the reaper ends it when nobody hosts the pool any more.
POOL_GRACE = timedelta(minutes=1)


@dataclass
class Plan:
    """What ``create --dry-run`` would do; nothing has been created."""

    profile: Profile
    target: Target
    ttl: timedelta
    actor: str | None
    labels: dict[str, str]
    secret_checks: list[boundary.RefCheck] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {
            "schema": "sandboxer.plan/v1",
            "profile": self.profile.id,
            "extension": self.profile.extension,
            "target": self.target.name,
            "ttl": format_duration(self.ttl),
            "actor": self.actor,
            "labels": self.labels,
            "secret_refs": [c.document() for c in self.secret_checks],
        }


class Manager:
    """The one place that changes sandbox state; the shells (CLI, API, MCP) reach it
    through the application service in ``sandboxer.service``, not directly."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        progress: Callable[[str], None] | None = None,
        ensure: bool = True,
    ) -> None:
        self.settings = settings
        if ensure:
            settings.ensure()
        self.store = store or open_store(settings)
        self.progress = progress or (lambda _msg: None)
        self._catalog: Catalog | None = None
        self._catalog_read: tuple[Any, ...] = ()
        self._parent: Manager | None = None
        self._extensions: dict[str, Extension] = {}
        # Whether the process serves requests now (the local service sets it): extensions'
        # housekeeping asks through Host.busy before it ends for being idle.
        self.busy: Callable[[], bool] = lambda: False
        # One lifecycle operation per sandbox at a time in this process (sandboxer.lifecycle).
        self.lifecycle_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def for_environ(self, environ: Mapping[str, str]) -> Manager:
        """This manager as a caller with ``environ`` would have it (a request of the
        local service): the same store, parsed catalog and ``busy``; settings read in that
        environment — secret refs, tunnel variables, what extensions and the tools they
        run see — and extension instances of its own."""
        twin = Manager(self.settings.with_env(dict(environ)), store=self.store,
                       progress=self.progress, ensure=False)
        twin._parent = self
        twin.busy = self.busy
        twin.lifecycle_locks = self.lifecycle_locks
        return twin

    @property
    def catalog(self) -> Catalog:
        """The profiles, parsed again only when a profile file changed since."""
        if self._parent is not None:  # the same profile directories (service/wire.py)
            return self._parent.catalog
        from sandboxer.catalog import Catalog, fingerprint

        now = fingerprint(self.settings)
        if self._catalog is None or now != self._catalog_read:
            self._catalog, self._catalog_read = Catalog(self.settings), now
        return self._catalog

    def extension(self, name: str) -> Extension:
        if name not in self._extensions:
            self._extensions[name] = extensions.instance(name, self.settings,
                                                         _ManagerHost(self, name))
        return self._extensions[name]

    # -- reading ----------------------------------------------------------------------

    def get(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """One sandbox; ``caller`` (None: the local operator) sees only what it owns."""
        status = self.store.get(sandbox_id)
        if status is None or (caller is not None and not caller.may_see(status.actor)):
            raise not_found(sandbox_id)
        return status

    def reachability(self, sandbox_id: str, *, caller: Caller | None = None) -> Reachability:
        status = self.get(sandbox_id, caller=caller)
        if status.state != "ready" or status.reachability is None:
            why = f" ({status.reason})" if status.state == "unreachable" else ""
            raise Conflict(
                f"sandbox {sandbox_id} is {status.state}{why}; only a ready sandbox is "
                "reachable", hint=not_reachable_hint(sandbox_id, status.state))
        return status.reachability

    def descriptor(self, sandbox_id: str, endpoint: Endpoint,
                   profile: Profile) -> dict[str, Any]:
        """The reachability document to store for ``endpoint``, assembled in this
        manager's environment (the caller's: tunnel variables apply)."""
        from sandboxer.reachability import assemble

        reach = assemble(sandbox_id, endpoint, profile, self.settings.env, self.store)
        return reach.model_dump(mode="json", by_alias=True)

    async def refresh_reachability(self, sandbox_id: str) -> SandboxStatus | None:
        """Assemble a ready sandbox's descriptor again from its extension's endpoint.

        When it changed (an ext.local sandbox restored on a new port because its old one
        was taken), the new one is stored with a second ``sandbox.ready`` event, so State
        Hub and ``get`` never keep an endpoint that refuses connections. None: unchanged.
        """
        from sandboxer.reachability import assemble

        rec = self.store.get_record(sandbox_id)
        if rec is None or rec.status.state != "ready" or rec.handle is None:
            return None
        handle = Handle.model_validate(rec.handle)
        endpoint = await self.extension(rec.status.extension).endpoint(handle)
        profile = self.catalog.get(rec.status.profile)
        reach = assemble(sandbox_id, endpoint, profile, self.settings.env, self.store)
        new = reach.model_dump(mode="json", by_alias=True)
        old = rec.status.reachability
        if old is not None and old.model_dump(mode="json", by_alias=True) == new:
            return None
        data = {**handle.data, "port": endpoint.port} if "port" in handle.data else handle.data
        return self.store.transition(
            sandbox_id, from_states={"ready"}, to_state="ready", event="sandbox.ready",
            reachability=new, handle=handle.model_copy(update={"data": data}).model_dump(
                mode="json"))

    # -- create -----------------------------------------------------------------------

    async def plan(
        self,
        profile_id: str,
        *,
        ttl: str | None = None,
        actor: str | None = None,
        labels: dict[str, str] | None = None,
        target: str | None = None,
        resolve_secrets: bool = True,
        check_secrets: bool = True,
        caller: Caller | None = None,
    ) -> tuple[Plan, Extension, dict[str, SecretStr]]:
        """Validate everything a create needs, resolving secrets last; creates nothing.

        Secret refs are parsed first (grammar: exit 7 before any probe), validated after
        placement (unless not ``check_secrets``: a sandbox made ahead for a pool gets
        none), and resolved only when ``resolve_secrets`` (a create) and every ref
        validated; a dry run reports each ref's check in the plan instead of raising.
        """
        profile, refs, actor, lease, merged = self.terms(
            profile_id, ttl=ttl, actor=actor, labels=labels, caller=caller)
        ext = self.extension(profile.extension)
        spec = ext.parse_spec(profile)
        known = ext.targets(self.settings)
        candidates = [t for t in known if target in (None, t.name)]
        probed = await placement.probe_candidates(ext, candidates)
        others = [t for t in known if t not in candidates]
        chosen = placement.choose([*probed, *others], profile.route, pinned=target,
                        placement=profile.placement)
        ext.check(profile, spec, chosen, self.catalog.source(profile.id).path)
        checks, secrets = await self.secrets(profile, refs if check_secrets else [],
                                             resolve=resolve_secrets)
        plan = Plan(
            profile=profile,
            target=chosen,
            ttl=lease,
            actor=actor or profile.actor,
            labels=merged,
            secret_checks=checks,
        )
        return plan, ext, secrets

    def terms(self, profile_id: str, *, ttl: str | None, actor: str | None,
              labels: dict[str, str] | None, caller: Caller | None,
              ) -> tuple[Profile, list[Ref], str | None, timedelta,
                         dict[str, str]]:
        """What a request asks of a profile, checked: the profile, its parsed secret refs,
        the owner (None: the profile's actor), the lease and the merged labels."""
        actor = inputs.actor(actor)  # as the service checks it: one message everywhere
        actor = owner_for_create(actor, caller)  # an API caller owns what it creates
        profile = self.catalog.get(profile_id)
        refs = boundary.parse(profile, self.settings)
        try:
            lease = parse_duration(ttl) if ttl is not None else profile.ttl.default
            merged = validate_labels({**profile.labels, **(labels or {})})
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        if lease > profile.ttl.max:
            raise InvalidInput(
                f"--ttl {format_duration(lease)} exceeds {profile.id}'s ttl.max "
                f"({format_duration(profile.ttl.max)})",
                hint="ask for a shorter lease",
            )
        idling.check(profile, self.extension(profile.extension))  # idle it cannot do: exit 4
        from sandboxer.reachability import resolve_tunnel

        resolve_tunnel(profile.reachability, self.settings.env)  # bad SANDBOXER_TUNNEL_*: exit 4
        return profile, refs, actor, lease, merged

    async def secrets(self, profile: Profile, refs: list[Ref], *,
                      resolve: bool) -> tuple[list[boundary.RefCheck], dict[str, SecretStr]]:
        """Each ref validated at the boundary, and (``resolve``) every value read, in
        memory only; SecretError before any is read when one does not validate."""
        checks = await asyncio.to_thread(boundary.check, refs, self.settings) if refs else []
        secrets: dict[str, SecretStr] = {}
        if resolve and refs:
            boundary.ensure_valid(profile.id, checks)
            secrets = await asyncio.to_thread(boundary.read, refs, self.settings)
        return checks, secrets

    async def create(
        self,
        profile_id: str,
        *,
        ttl: str | None = None,
        actor: str | None = None,
        labels: dict[str, str] | None = None,
        target: str | None = None,
        name: str | None = None,
        caller: Caller | None = None,
        pooled: bool = False,
        from_snapshot: str | None = None,
    ) -> SandboxStatus:
        """Provision a sandbox and return it ``ready``, or record it ``failed`` and raise.

        ``pooled``: provision one ahead for the profile's pool (``sandboxer.pools``): no
        owner, no secrets, no ``setup.env``, no setup steps (they belong to the claim),
        its lease the pool's ``max_age``; refused (Conflict) when the pool is full.
        ``from_snapshot``: start from that ready snapshot's data, on its target
        (``sandboxer.snapshots.source`` says what is refused)."""
        name = inputs.name(name)
        artifact = None
        if from_snapshot is not None:
            artifact, target = snapshots.source(self, from_snapshot, profile_id,
                                                caller=caller, target=target)
        plan, ext, secrets = await self.plan(
            profile_id, ttl=ttl, actor=actor, labels=labels, target=target, caller=caller,
            check_secrets=not pooled, resolve_secrets=not pooled)
        now = utcnow()
        sid = new_sandbox_id()
        pool = plan.profile.pool if pooled else None
        lease = plan.ttl if pool is None else pool.max_age + POOL_GRACE
        status = SandboxStatus(
            id=sid, name=name, profile=plan.profile.id, extension=ext.name,
            target=plan.target.name, state="provisioning",
            actor=None if pooled else plan.actor, labels=plan.labels, created_at=now,
            expires_at=now + lease, snapshot=from_snapshot,
        )
        from sandboxer import creator

        # plan() saw a free slot; the insert takes it, or refuses when a concurrent create
        # took it meanwhile (STYLE 16: the check is in the transaction of the write).
        self.store.insert(status, max_expires_at=now + (lease if pooled
                                                        else plan.profile.ttl.max),
                          creator=creator.current(), capacity=plan.target.capacity,
                          retain=reaping.seconds(plan.profile.ttl.retain),
                          pool=plan.profile.id if pool else None,
                          pool_size=pool.size if pool else None)
        self.progress(f"{sid}: provisioning {plan.profile.id} on {plan.target.name}")
        handle = Handle(sandbox_id=sid, extension=ext.name, target=plan.target.name)
        try:
            req = ProvisionRequest(
                sandbox_id=sid, profile=plan.profile, spec=ext.parse_spec(plan.profile),
                target=plan.target, settings=self.settings,
                user=plan.profile.reachability.user, labels=plan.labels,
                env={} if pooled else dict(plan.profile.setup.env),
                expires_at=status.expires_at,
                progress=self.progress, source=self.catalog.source(plan.profile.id).path,
                snapshot=artifact, forward=tuple(plan.profile.reachability.forward),
            )
            handle = await ext.provision(req, secrets)
            self.store.set_handle(sid, handle.model_dump(mode="json"))
            self.progress(f"{sid}: waiting for SSH")
            await ext.wait_ready(handle, READY_TIMEOUT)
            if not pooled:
                await self._run_setup(ext, handle, plan.profile, secrets)
            reach = self.descriptor(sid, await ext.endpoint(handle), plan.profile)
            ready = self.store.transition(
                sid, from_states={"provisioning"}, to_state="ready", event="sandbox.ready",
                reachability=reach,
            )
        except BaseException as e:
            await self.failed_create(e, ext, handle, secrets, profile_id)
        placement.answered(ext, plan.target.name)
        if idling.watched(plan.profile, ext):  # its keeper watches it, serve or not
            try:
                ext.host.ensure_keeper()
            except (OSError, SandboxerError) as e:  # the sandbox is ready: say so, go on
                log.warning("%s: could not start the keeper that watches it for being "
                            "idle (%s); `sandboxer serve` or the next create does", sid, e)
        self.progress(f"{sid}: ready")
        return ready

    async def failed_create(self, e: BaseException, ext: Extension, handle: Handle,
                            secrets: dict[str, SecretStr], profile_id: str) -> NoReturn:
        """After ``e`` broke a create (or a claim) of ``handle``'s sandbox: clean up,
        record it failed, and raise what the caller should see."""
        sid = handle.sandbox_id
        placement.forget(ext, handle.target or "")
        cleaned = await self._fail(sid, ext, handle, e, secrets)
        # Destroyed by someone else meanwhile: whatever broke here (SSH to a jail that is
        # gone, a setup step killed) follows from that, and their record stands.
        if isinstance(e, Conflict) or (isinstance(e, Exception)
                                       and self._destroyed_meanwhile(sid)):
            raise Conflict(f"sandbox {sid} was destroyed while it was provisioning") from e
        if isinstance(e, SandboxerError) and not isinstance(e, ProvisionFailed):
            raise e
        if isinstance(e, Exception):
            detail = boundary.redact(e.render() if isinstance(e, SandboxerError)
                                     else f"{type(e).__name__}: {e}", secrets)
            left = ("nothing was left behind" if cleaned else "its cleanup failed too "
                    f"(`sandboxer destroy {sid}` retries it)")
            raise ProvisionFailed(f"creating {sid} from {profile_id} failed: {detail}",
                                  hint=f"{left}; see `sandboxer get {sid}` for the "
                                  "recorded error") from e
        raise e

    def _destroyed_meanwhile(self, sid: str) -> bool:
        current = self.store.get(sid)
        return current is not None and current.state in ("destroying", "destroyed")

    async def _run_setup(
        self, ext: Extension, handle: Handle, profile: Profile, secrets: dict[str, SecretStr]
    ) -> None:
        steps = profile.setup.instructions
        for i, step in enumerate(steps, 1):
            self.progress(f"{handle.sandbox_id}: setup step {i}/{len(steps)}")
            rc, out = await ext.run(handle, step, timeout=SETUP_STEP_TIMEOUT)
            if rc != 0:
                tail = "\n".join(boundary.redact(out, secrets).strip().splitlines()[-10:])
                raise ProvisionFailed(
                    f"setup step {i} of {len(steps)} exited {rc}"
                    + (f": {tail}" if tail else " (no output)")
                )

    async def _fail(
        self,
        sid: str,
        ext: Extension,
        handle: Handle,
        exc: BaseException,
        secrets: dict[str, SecretStr],
        reason: str = "provision_failed",
    ) -> bool:
        """Destroy partial resources, then record ``failed`` (unless destroyed meanwhile);
        whether the cleanup succeeded."""
        cleaned = True
        try:
            await asyncio.shield(ext.destroy(handle))
        except BaseException as e:  # a failed cleanup must not hide the original error
            cleaned = False
            log.warning("cleanup of %s after a failed create also failed: %s", sid, e)
        if isinstance(exc, SandboxerError):
            message = exc.render()
        elif isinstance(exc, Exception):
            message = f"{type(exc).__name__}: {exc}"
        else:
            message = f"interrupted ({type(exc).__name__})"
        # Conflict: destroyed by someone else while provisioning; their record stands.
        with contextlib.suppress(Conflict):
            self.store.transition(
                sid, from_states={"provisioning"}, to_state="failed", event="sandbox.failed",
                reason=reason, error=boundary.redact(message, secrets)[-2000:],
            )
        return cleaned

    # -- extend -----------------------------------------------------------------------

    def extend(self, sandbox_id: str, ttl: str, *, caller: Caller | None = None) -> SandboxStatus:
        """Renew the lease to now + ``ttl``, no later than creation + ``ttl.max``."""
        rec = self.store.get_record(sandbox_id)
        if rec is None or (caller is not None and not caller.may_see(rec.status.actor)):
            raise not_found(sandbox_id)
        try:
            lease = parse_duration(ttl)
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        new_expiry = utcnow() + lease
        if new_expiry > rec.max_expires_at:
            raise InvalidInput(
                f"cannot extend {sandbox_id} to {iso(new_expiry)}: its lease may not run "
                f"past {iso(rec.max_expires_at)} (ttl.max of {rec.status.profile}, "
                "counted from creation)",
                hint="ask for a shorter --ttl or create a new sandbox",
            )
        # An unreachable sandbox keeps its lease too (its host may come back); a stopped or
        # paused one is renewed in its state (`start`/`resume` bring it back).
        state = rec.status.state if rec.status.state in _KEEPS_LEASE else "ready"
        return self.store.transition(
            sandbox_id, from_states={state}, to_state=state, event="sandbox.extended",
            expires_at=new_expiry, **reaping.renewal(rec.status),  # leaves a retain stage
        )

    # -- destroy, reap, reconcile ---------------------------------------------------

    async def destroy(self, sandbox_id: str, *, reason: str = "destroyed",
                      caller: Caller | None = None) -> SandboxStatus:
        """Tear a sandbox down. Idempotent: a final sandbox is returned unchanged."""
        rec = self.store.get_record(sandbox_id)
        if rec is None or (caller is not None and not caller.may_see(rec.status.actor)):
            raise not_found(sandbox_id)
        if rec.status.state in FINAL_STATES:
            return rec.status
        if rec.status.state != "destroying":
            try:
                self.store.transition(
                    sandbox_id, from_states={"provisioning", *_KEEPS_LEASE},
                    to_state="destroying",
                    event="sandbox.expired" if reason == "expired" else None, reason=reason,
                )
            except Conflict:
                return await self.destroy(sandbox_id, reason=reason)
        handle = Handle.model_validate(rec.handle) if rec.handle else Handle(
            sandbox_id=sandbox_id, extension=rec.status.extension, target=rec.status.target
        )
        try:
            await self.extension(rec.status.extension).destroy(handle)
        except Exception as e:
            msg = e.render() if isinstance(e, SandboxerError) else f"{type(e).__name__}: {e}"
            self.store.transition(
                sandbox_id, from_states={"destroying"}, to_state="destroying", event=None,
                error=f"destroy failed: {msg}"[-2000:],
            )
            raise DestroyFailed(f"destroying {sandbox_id} failed: {msg}",
                                hint="retry `sandboxer destroy`; it is idempotent") from e
        try:
            return self.store.transition(
                sandbox_id, from_states={"destroying"}, to_state="destroyed",
                event="sandbox.destroyed", reason=reason,
            )
        except Conflict:
            return self.get(sandbox_id)  # another process finished the same destroy

    async def reap(self, *, extension: str | None = None) -> list[SandboxStatus]:
        """Destroy expired leases; finish abandoned destroys; fail abandoned creates."""
        done: list[SandboxStatus] = []
        now = utcnow()
        for sid in reaping.due(self.store, now, extension=extension):
            rec = self.store.get_record(sid)
            if rec is None:
                continue
            state = rec.status.state
            try:
                if state == "provisioning":
                    handle = Handle.model_validate(rec.handle) if rec.handle else Handle(
                        sandbox_id=sid, extension=rec.status.extension,
                        target=rec.status.target,
                    )
                    stopped = SandboxerError("the creating process stopped before ready")
                    await self._fail(sid, self.extension(rec.status.extension), handle,
                                     stopped, {}, reason="abandoned")
                    done.append(self.get(sid))
                    continue
                if state != "destroying" and not reaping.lapsed(rec, now):
                    continue  # extended meanwhile, or another reaper began its retain
                if reaping.retains(rec) and rec.pool is None:  # ttl.retain: stopped, kept
                    # (an unclaimed pooled sandbox holds no one's work: destroyed)
                    done.append(await reaping.retain(self, rec, now))
                    continue
                reason = ("expired" if state in _KEEPS_LEASE
                          else rec.status.reason or "abandoned")
                done.append(await self.destroy(sid, reason=reason))
            except SandboxerError as e:
                log.warning("reaping %s failed: %s", sid, e.render())
        await snapshots.reap(self, extension=extension, now=now)  # retention ended
        return done

    async def reconcile(self) -> list[Handle]:
        """Square store and targets: probe every target, mark the sandboxes of a down one
        ``unreachable`` and settle those of one that is back, then destroy what extensions
        own but no live sandbox in the store claims (``sandboxer.fleet``)."""
        from sandboxer import fleet

        await self.reap()  # creates whose process died are no longer "live"
        return await fleet.reconcile(self)

    # -- stop, start, pause, resume, rebind (sandboxer.lifecycle) ----------------------

    async def stop(self, sandbox_id: str, *, reason: str = "stopped", detail: str | None = None,
                   caller: Caller | None = None) -> SandboxStatus:
        """ready | paused -> stopped (event sandbox.stopped, reason ``reason: detail``)."""
        return await lifecycle.stop(self, sandbox_id, reason=reason, detail=detail,
                                    caller=caller)

    async def start(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """stopped -> ready, secrets resolved again, descriptor stored again."""
        return await lifecycle.start(self, sandbox_id, caller=caller)

    async def pause(self, sandbox_id: str, *, reason: str = "paused",
                    detail: str | None = None, caller: Caller | None = None) -> SandboxStatus:
        """ready -> paused (event sandbox.paused)."""
        return await lifecycle.pause(self, sandbox_id, reason=reason, detail=detail,
                                     caller=caller)

    async def resume(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """paused -> ready (event sandbox.resumed)."""
        return await lifecycle.resume(self, sandbox_id, caller=caller)

    async def rebind(self, sandbox_id: str) -> bool:
        """Secrets back after a restart (``Host.rebind``); False: stopped, unresolved."""
        return await lifecycle.rebind(self, sandbox_id)

    def exclusive(self, sandbox_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the sandbox's lifecycle lock of this process (stop, start, snapshot…)."""
        return lifecycle.one_at_a_time(self, sandbox_id)

    # -- snapshots and forks (sandboxer.snapshots) ---------------------------------------

    async def snapshot(self, sandbox_id: str, *, name: str | None = None,
                       retain: str | None = None, caller: Caller | None = None,
                       progress: Callable[[str], None] | None = None) -> SnapshotStatus:
        """Record a snapshot of a ready, stopped or paused sandbox (left in its state)."""
        return await snapshots.snapshot(self, sandbox_id, name=inputs.name(name), retain=retain,
                                        caller=caller, progress=progress)

    def get_snapshot(self, snapshot_id: str, *, caller: Caller | None = None) -> SnapshotStatus:
        return snapshots.get(self, snapshot_id, caller=caller)

    def list_snapshots(self, *, sandbox_id: str | None = None, caller: Caller | None = None,
                       all_states: bool = False) -> list[SnapshotStatus]:
        """Snapshots holding data (every state with ``all_states``), oldest first."""
        return snapshots.listing(self, sandbox_id=sandbox_id, caller=caller,
                                 all_states=all_states)

    async def delete_snapshot(self, snapshot_id: str, *, reason: str = "deleted",
                              caller: Caller | None = None) -> SnapshotStatus:
        """Remove a snapshot's data; idempotent."""
        return await snapshots.delete(self, snapshot_id, reason=reason, caller=caller)

    async def fork(self, sandbox_id: str, *, ttl: str | None = None,
                   labels: dict[str, str] | None = None, name: str | None = None,
                   actor: str | None = None, caller: Caller | None = None,
                   progress: Callable[[str], None] | None = None) -> SandboxStatus:
        """A snapshot of the sandbox and a new sandbox created from it."""
        return await snapshots.fork(self, sandbox_id, ttl=ttl, labels=labels,
                                    name=inputs.name(name),
                                    actor=actor, caller=caller, progress=progress)


class _ManagerHost:
    """The ``Host`` an extension gets: the manager's store and lifecycle, scoped to it."""

    def __init__(self, manager: Manager, extension: str) -> None:
        self._manager = manager
        self.settings = manager.settings
        self.extension = extension

    def targets(self) -> list[TargetRecord]:
        return self._manager.store.list_targets(self.extension)

    def live_count(self, target: str) -> int:
        return self._manager.store.live_count(target, self.extension)

    def live_handles(self) -> list[Handle]:
        return self._manager.store.live_handles(self.extension)

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        return self._manager.store.states(ids)

    def ensure_keeper(self) -> None:
        from sandboxer import keeper

        keeper.ensure(self.settings, self.extension)

    async def reap(self) -> int:
        return len(await self._manager.reap(extension=self.extension))

    async def refresh_reachability(self, sandbox_id: str) -> bool:
        return await self._manager.refresh_reachability(sandbox_id) is not None

    async def destroy(self, sandbox_id: str) -> dict[str, Any]:
        return dict((await self._manager.destroy(sandbox_id)).document())

    def busy(self) -> bool:
        return self._manager.busy()

    async def rebind(self, sandbox_id: str) -> bool:
        return await self._manager.rebind(sandbox_id)
