"""The operator's side of the service: targets, images, tokens, events publishing, doctor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandboxer.access import Caller, require_admin
from sandboxer.errors import SandboxerError
from sandboxer.service import bridges
from sandboxer.service.core import ServiceCore

if TYPE_CHECKING:
    from sandboxer.models.doctor import Check
    from sandboxer.models.requests import ImageBuildRequest, TargetAddRequest
    from sandboxer.store.tokens import Tokens

log = logging.getLogger(__name__)


class OperatorOps(ServiceCore):
    """Operations on this home's targets, images, tokens and outbox."""

    _tokens: Tokens | None = None
    _touched: dict[str, float] | None = None
    on_token_removed: Callable[[], None] | None = None  # called after tokens_remove

    # -- targets ----------------------------------------------------------------------

    def targets_list(self, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Every extension's targets (with the implicit ones)."""
        return bridges.target_summaries(self.manager)

    async def target_health(self, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Every extension's targets (those without ``targets add`` too: ext.local's,
        the VMs'), probed now: name, extension, kind, healthy, reason, capacity, used,
        free, labels. Counts only, so any caller may ask."""
        from sandboxer import fleet

        return [{**t.model_dump(mode="json"), "free": t.free}
                for t in await fleet.health(self.manager)]

    async def targets_add(self, req: TargetAddRequest, *, caller: Caller | None = None,
                          confirm: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Record a target after first contact (its host key is pinned), admin only.
        Without a fingerprint the key seen is pinned when ``confirm`` agrees, or — with
        no ``confirm`` — when the request accepts new host keys."""
        require_admin(caller, "adding a target")
        if confirm is None:
            accept = req.accept_new_host_key

            def confirm(_fingerprint: str) -> bool:
                return accept
        options = {"identity": req.identity, "public_host": req.public_host,
                   "capacity": req.capacity, "kind": req.kind, "allow": req.allow,
                   "labels": dict(req.labels) or None,
                   "fingerprint": req.host_key_fingerprint}
        return await bridges.add_target(self.manager, name=req.name, url=req.url,
                                        options=options, confirm=confirm,
                                        extension=req.extension)

    async def targets_check(self, name: str | None = None, *,
                            caller: Caller | None = None) -> list[dict[str, Any]]:
        """Reachability and capacity of one target (NotFound if none has it) or all."""
        return await bridges.check_targets(self.manager, name)

    def targets_remove(self, name: str, *, caller: Caller | None = None) -> None:
        """Forget a target, admin only (refused while it holds live sandboxes)."""
        require_admin(caller, "removing a target")
        bridges.remove_target(self.manager, name)

    # -- images -----------------------------------------------------------------------

    async def images_build(self, name: str, req: ImageBuildRequest, *,
                           caller: Caller | None = None) -> dict[str, Any]:
        """Build what a profile needs, or a name one extension claims (admin)."""
        require_admin(caller, "building an image")
        return await bridges.build_image(self.manager, name, target=req.target,
                                         variables=dict(req.variables), force=req.force,
                                         progress=self._report(),
                                         # a token's holder names files of this machine
                                         # only inside the extensions' own directories
                                         confined=caller is not None)

    # -- tokens -----------------------------------------------------------------------

    @property
    def token_store(self) -> Tokens:
        if self._tokens is None:
            from sandboxer.store.tokens import Tokens

            self._tokens = Tokens(self.store)
        return self._tokens

    def touch_token(self, token_id: str) -> None:
        """Record a token's use (last_used_at), at most once a minute per token."""
        if self._touched is None:
            self._touched = {}
        now = time.monotonic()
        if now - self._touched.get(token_id, -1e9) > 60:
            self._touched[token_id] = now
            try:
                self.token_store.touch(token_id)
            except SandboxerError as e:
                log.warning("recording the use of token %s failed: %s", token_id, e.render())

    def tokens_add(self, actor: str, *, admin: bool = False,
                   caller: Caller | None = None) -> tuple[str, dict[str, Any]]:
        """A new bearer token for ``actor`` (returned once) and its summary (admin)."""
        require_admin(caller, "adding a token")
        return self.token_store.add(actor, admin=admin)

    def tokens_list(self, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Every token's summary, never its value (admin)."""
        require_admin(caller, "listing tokens")
        return self.token_store.list()

    def tokens_remove(self, token_id: str, *,
                      caller: Caller | None = None) -> dict[str, Any]:
        """Revoke one token by id (admin); NotFound when there is none."""
        require_admin(caller, "removing a token")
        removed = self.token_store.remove(token_id)
        if self.on_token_removed is not None:
            self.on_token_removed()  # a server forgets the tokens it trusts at once
        return removed

    # -- events -----------------------------------------------------------------------

    def publish_events(self, *, caller: Caller | None = None) -> tuple[dict[str, Any], bool]:
        """One pass of delivering the store's undelivered events to State Hub (admin): the
        sandboxer.publish/v1 document, and True (it published). It takes the leader role
        for the pass, so it never publishes beside a `sandboxer serve` leader: when another
        process holds the role, Conflict names it and nothing is done."""
        import asyncio

        from sandboxer import envvars, events
        from sandboxer.errors import Conflict, UsageError
        from sandboxer.events.statehub import publish_once
        from sandboxer.service.leader import ROLE, holder, settle_seconds
        from sandboxer.store.outbox import Outbox

        require_admin(caller, "publishing events")
        config = events.hub_config(self.settings)
        if config is None:
            raise UsageError("no State Hub configured", hint="set SANDBOXER_STATE_HUB_URL "
                             "(and SANDBOXER_STATE_HUB_TOKEN)")
        store = self.store
        lease = store.try_lead(ROLE)
        if lease is None:
            who = holder(store) or "another process"
            raise Conflict(f"events publish: the leader role of this store is held by {who} "
                           "(a `sandboxer serve` replica, or another `events publish`); it "
                           "delivers these events, so nothing was done here",
                           hint="nothing to do while it runs; `sandboxer events` shows what "
                           "is still undelivered")
        try:
            # A leader that has just lost the role may still be sending: wait as long as a
            # new leader would before its first delivery, then make sure the role is still
            # ours.
            time.sleep(settle_seconds(envvars.leader_interval(self.settings.env)))
            if not lease.held():
                raise Conflict("events publish: lost the leader role while waiting for a "
                               "previous leader to stop; nothing was done here")
            done = asyncio.run(publish_once(self.settings, store, config))
            events.prune(self.settings, store)
        finally:
            lease.release()
        counts = Outbox(store).counts()
        return done.document(counts["pending"] + counts["retrying"]), True

    # -- doctor -----------------------------------------------------------------------

    def doctor(self, *, caller: Caller | None = None) -> list[Check]:
        """What is missing on this machine: every extension's checks, then core's (home
        permissions, ssh client, state store)."""
        import shutil

        from sandboxer.models.doctor import Check

        require_admin(caller, "doctor")
        permissions = _permissions(self)  # before anything repairs them
        from sandboxer.store import describe

        where = describe(self.settings)  # a PostgreSQL URL without its password
        try:
            version = self.store.schema_version()
            store = Check("state store", True, f"{where} (schema {version})")
        except Exception as e:
            said = str(e)  # a store error names the database already
            store = Check("state store", False, said if where in said else f"{where}: {said}",
                          "set SANDBOXER_HOME to a writable directory, or fix "
                          "SANDBOXER_DATABASE_URL")
        extensions = bridges.doctor_checks(lambda: self.manager)
        ssh = shutil.which("ssh")
        try:
            leader = self.leader_check()
        except Exception as e:  # doctor reports a store it cannot open; it never fails on it
            leader = Check("leader", False, f"cannot tell who leads: {e}",
                           "fix the state store first (see its check)")
        return [*extensions, permissions,
                Check("ssh client", ssh is not None, ssh or "ssh not on PATH",
                      "apt-get install openssh-client"), store, leader]

    def leader_check(self, *, leading: float | None = None) -> Check:
        """Who runs the reaper, reconcile and State Hub delivery for this store: the
        leader role's holder; ``leading``: this process leads, since then (epoch)."""
        from sandboxer.models.doctor import Check
        from sandboxer.service.leader import UNKNOWN, holder
        from sandboxer.store.base import iso_from_epoch

        if leading is not None:
            return Check("leader", True, f"this replica leads (since "
                         f"{iso_from_epoch(round(leading))}): it runs the reaper, reconcile "
                         "and State Hub delivery")
        who = holder(self.store)
        if who == UNKNOWN:
            return Check("leader", True, "this store cannot tell who holds the leader role")
        if who is None:
            return Check("leader", True, "nobody holds the leader role: no `sandboxer serve` "
                         "runs on this store (leases end through CLI calls and `sandboxer "
                         "reap`; `sandboxer events publish` delivers events)")
        return Check("leader", True, f"the leader role is held by {who}: it runs the "
                     "reaper, reconcile and State Hub delivery")


def _permissions(service: ServiceCore) -> Check:
    """Who can write the home, its parents and the local root (before ensure() repairs)."""
    import os

    from sandboxer import perms
    from sandboxer.models.doctor import Check

    settings = service.settings
    found = perms.findings(settings)
    refused = [f for f in found if f.mode is None]
    if not found:
        detail = (f"{settings.home} and {settings.local_root}: only you (uid {os.geteuid()}) "
                  "and root can write them")
    else:
        detail = "; ".join(
            f"{f.path} {f.problem}" + ("" if f.mode is None else " (repaired on use)")
            for f in found)
    return Check("home permissions", not refused, detail, "; ".join(f.fix for f in refused))
