"""The application service: every operation of sand-boxer, as one caller asks for it.

The CLI (through ``LocalClient``), the HTTP API (``api/service.py``) and the MCP server
call this and nothing below it. Each operation takes its typed request
(``models/requests.py``, ``models/queries.py``) and the ``caller`` (None: the local
operator, an admin); values are checked here (``sandboxer/checks.py``) and authorization is
decided here, once. Operations that await are ``async``; the reads (``get_document``,
``list_documents``, ``event_documents``) are plain calls over the store, so the CLI's
hot paths import neither asyncio nor pydantic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer import checks
from sandboxer.access import Caller, actor_filter, require_admin, require_visible
from sandboxer.errors import NotFound, SandboxerError, UsageError
from sandboxer.models.queries import LIVE_STATES, EventsQuery, ListRequest
from sandboxer.service.operator import OperatorOps
from sandboxer.service.snapshots import SnapshotOps
from sandboxer.values import LIFECYCLE

if TYPE_CHECKING:
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.requests import CreateRequest
    from sandboxer.models.sandbox import SandboxStatus

log = logging.getLogger(__name__)
PLACEMENT_ATTEMPTS = 3  # a create that loses its target to concurrent ones places again


class Service(SnapshotOps, OperatorOps):
    """One sand-boxer over one store: hosted in-process, by `sandboxer serve`, or by a
    keeper process; shells hold one and pass each call's ``caller``."""

    # -- identity ---------------------------------------------------------------------

    def authenticate(self, token: str) -> Caller | None:
        """The actor of a bearer token (API, MCP), or None when it is not one."""
        found = self.token_store.lookup(token)
        if found is None:
            return None
        tid, actor, admin = found
        self.touch_token(tid)
        return Caller(actor=actor, admin=admin)

    # -- profiles ---------------------------------------------------------------------

    def list_profiles(self, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Summaries: id, description, extension, source file (a broken one is skipped)."""
        from sandboxer.errors import ProfileInvalid

        catalog = self.catalog()
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

    def get_profile(self, profile_id: str, *, caller: Caller | None = None) -> Profile:
        return self.catalog().get(profile_id)

    def validate_profiles(self, paths: list[Path], *,
                          caller: Caller | None = None) -> list[dict[str, Any]]:
        """Per file: id, ok, error and code; creates nothing."""
        from sandboxer.secrets import boundary

        catalog = self.catalog()
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

    def validate_files(self, files: list[tuple[str, str]], *,
                       caller: Caller | None = None) -> list[dict[str, Any]]:
        """Validate uploaded (name, content) files in a private temporary directory;
        results name the files as uploaded."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="sbx-validate-") as tmp:
            paths, names = [], {}
            for i, (name, content) in enumerate(files):
                path = Path(tmp) / str(i) / name  # same names may come twice
                path.parent.mkdir()
                path.write_text(content, encoding="utf-8")
                paths.append(path)
                names[str(path)] = name
            results = self.validate_profiles(paths, caller=caller)
        from sandboxer.values import rename_files

        return rename_files(results, names)

    # -- create -----------------------------------------------------------------------

    def _checked(self, req: CreateRequest) -> dict[str, Any]:
        """The manager's options of a create or plan, every value checked once."""
        if req.ttl is not None:
            checks.ttl(req.ttl)
        checks.actor(req.actor)
        if req.target is not None:
            self._known_target(req.profile, req.target)
        return {"ttl": req.ttl, "actor": req.actor, "labels": dict(req.labels or {}),
                "target": req.target}

    def _known_target(self, profile_id: str, target: str) -> None:
        """A pinned target that does not exist is the caller's mistake (NotFound), not a
        lack of capacity (NoTarget) as placement would report it."""
        ext = self.manager.extension(self.manager.catalog.get(profile_id).extension)
        names = [t.name for t in ext.targets(self.settings)]
        if target not in names:
            raise NotFound(f"no target {target!r} for {ext.name}",
                           hint=f"known: {', '.join(names) or 'none'}")

    async def plan(self, req: CreateRequest, *,
                   caller: Caller | None = None) -> dict[str, Any]:
        """What a create would do (a dry run): validation, placement, secret-ref checks."""
        options = self._checked(req)
        plan, _ext, _secrets = await self.manager.plan(
            req.profile, resolve_secrets=False, caller=caller, **options)
        return plan.document()

    async def create(self, req: CreateRequest, *,
                     caller: Caller | None = None) -> SandboxStatus:
        """Provision and return a ready sandbox (or raise, leaving it recorded failed)."""
        from sandboxer.errors import TargetTaken

        checks.name(req.name)
        options = self._checked(req)
        source = req.from_snapshot  # a pooled sandbox has no such data: never claimed
        try:
            from sandboxer import pools

            claimed = None if source else await pools.claim(
                self.manager, req.profile, name=req.name, caller=caller, **options)
            if claimed is not None:
                return claimed
            if source:  # placed on the snapshot's target: no other to try
                return await self.manager.create(req.profile, name=req.name, caller=caller,
                                                 from_snapshot=source, **options)
            for attempt in range(1, PLACEMENT_ATTEMPTS):
                try:
                    return await self.manager.create(req.profile, name=req.name,
                                                     caller=caller, **options)
                except TargetTaken as e:
                    # Concurrent creates (other replicas) filled the target placement
                    # chose; nothing was recorded. Place again with the new counts,
                    # unless the caller named that target.
                    if req.target is not None:
                        raise
                    log.info("placing again (attempt %d): %s", attempt + 1, e.message)
            return await self.manager.create(req.profile, name=req.name, caller=caller,
                                             **options)
        finally:
            self.prune_events()

    # -- pools ------------------------------------------------------------------------

    def list_pools(self, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Every pool (sandboxer.pool/v1); an actor sees counts, an admin the sandboxes."""
        from sandboxer import pools

        return pools.documents(self.manager, caller=caller)

    def get_pool(self, profile_id: str, *, caller: Caller | None = None) -> dict[str, Any]:
        """One profile's pool; NotFound when it has none."""
        from sandboxer import pools

        return pools.document(self.manager, profile_id, caller=caller)

    async def refill_pools(self, *, extension: str | None = None) -> int:
        """One refill round of the pools this process hosts (``serve``'s leader: every
        profile's; the local service: its extension's); how many sandboxes were made."""
        from sandboxer import pools

        return await pools.refill(self.manager, extension=extension)

    # -- reads ------------------------------------------------------------------------

    def get_document(self, sandbox_id: str, *,
                     caller: Caller | None = None) -> dict[str, Any]:
        """One sandbox as its sandboxer.sandbox/v1 document; unknown and another actor's
        answer alike (SandboxNotFound)."""
        self.reap_seen()
        doc = self.read_document(sandbox_id, caller=caller)
        if self.serve([doc]):
            doc = self.read_document(sandbox_id, caller=caller)
        return doc

    def read_document(self, sandbox_id: str, *,
                      caller: Caller | None = None) -> dict[str, Any]:
        """``get_document`` without its upkeep: one store read (a server's reads, which
        check endpoints through ``claim_serve_checks`` and ``serve_claimed``)."""
        return require_visible(self.store.get_document(sandbox_id), sandbox_id, caller)

    def list_documents(self, req: ListRequest, *,
                       caller: Caller | None = None) -> list[dict[str, Any]]:
        """Sandboxes matching the filters, as documents; live ones unless ``all`` or
        ``states`` say otherwise; a non-admin sees only its own."""
        states = checks.states(req.states)
        if states is None and not req.all:
            states = list(LIVE_STATES)
        filters: dict[str, Any] = {"states": states, "profile": req.profile,
                   "actor": actor_filter(checks.actor(req.actor), caller),
                   "labels": dict(req.labels) or None}
        self.reap_seen()
        # A pooled sandbox is nobody's yet: `pools show` lists it, never `list`.
        docs = self.store.query_documents(**filters, pooled=False)
        if self.serve(docs):
            docs = self.store.query_documents(**filters, pooled=False)
        return docs

    def event_documents(self, query: EventsQuery, *,
                        caller: Caller | None = None) -> list[dict[str, Any]]:
        """Outbox events (sandboxer.event/v1) with their delivery state; a non-admin
        sees only its own sandboxes' events."""
        from sandboxer.store.outbox import Outbox

        actor = None if caller is None or caller.admin else caller.actor
        return Outbox(self.store).documents(after=query.after, sandbox_id=query.sandbox_id,
                                            limit=query.limit, actor=actor,
                                            newest=query.newest)

    def reachability(self, sandbox_id: str, *,
                     caller: Caller | None = None) -> Reachability:
        """The descriptor of a ready sandbox (Conflict otherwise)."""
        self.get_document(sandbox_id, caller=caller)  # reaps, serves a local one again
        return self.manager.reachability(sandbox_id, caller=caller)

    def identity(self, sandbox_id: str, *, caller: Caller | None = None) -> str:
        """The private key of a ready sandbox's descriptor, for its owner (or an admin) to
        ssh in from another machine. Only the per-sandbox key sand-boxer generated under
        ``$SANDBOXER_HOME/keys`` is ever read: a descriptor naming another file answers
        Conflict, so no key of the operator's (an attached VM's login) leaves."""
        from sandboxer.errors import Conflict
        from sandboxer.openssh import key_paths

        reach = self.reachability(sandbox_id, caller=caller)
        own = key_paths(self.settings, sandbox_id)["identity"]
        if Path(reach.identity_file) != own:
            raise Conflict(f"sandbox {sandbox_id} is reached with a key sand-boxer did not "
                           "make for it; it is not handed out",
                           hint="ssh from the server's machine, or use your own key")
        try:
            return own.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise Conflict(f"the key of sandbox {sandbox_id} cannot be read at {own}: "
                           f"{type(e).__name__}",
                           hint="`sandboxer doctor` checks the home's permissions") from e

    # -- changes ----------------------------------------------------------------------

    def extend(self, sandbox_id: str, ttl: str, *,
               caller: Caller | None = None) -> SandboxStatus:
        """Renew a lease to now + ``ttl``, never past the profile's ttl.max."""
        checks.ttl(ttl)
        self.reap_seen()
        return self.manager.extend(sandbox_id, ttl, caller=caller)

    async def destroy(self, sandbox_id: str, *,
                      caller: Caller | None = None) -> SandboxStatus:
        """Destroy one sandbox here; idempotent (a final one is returned unchanged)."""
        return await self.manager.destroy(sandbox_id, caller=caller)

    def destroy_fast(self, sandbox_id: str, *,
                     caller: Caller | None = None) -> dict[str, Any] | None:
        """The final document when the sandbox is final already or its extension's
        running process destroyed it; None: destroy it here (``destroy``)."""
        from sandboxer.service import bridges

        doc = self.get_document(sandbox_id, caller=caller)
        if doc["state"] in ("destroyed", "failed"):
            return doc
        return bridges.fast_destroy(self.settings, doc)

    async def lifecycle(self, op: str, sandbox_id: str, *,
                        caller: Caller | None = None) -> SandboxStatus:
        """``stop``, ``start``, ``pause`` or ``resume`` one sandbox; an actor only its own
        (another's answers not found, as the manager decides). Conflict (exit 8) in the
        wrong state, InvalidInput (exit 4) when its extension cannot."""
        if op not in LIFECYCLE:
            raise UsageError(f"unknown lifecycle operation {op!r}",
                             hint=f"one of {', '.join(LIFECYCLE)}")
        change = {"stop": self.manager.stop, "start": self.manager.start,
                  "pause": self.manager.pause, "resume": self.manager.resume}[op]
        try:
            return await change(sandbox_id, caller=caller)
        finally:
            self.prune_events()

    async def stop(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """ready | paused -> stopped: its processes end, its data stays."""
        return await self.lifecycle("stop", sandbox_id, caller=caller)

    async def start(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """stopped -> ready: booted again, secrets resolved again, descriptor stored again."""
        return await self.lifecycle("start", sandbox_id, caller=caller)

    async def pause(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """ready -> paused: frozen, memory kept."""
        return await self.lifecycle("pause", sandbox_id, caller=caller)

    async def resume(self, sandbox_id: str, *, caller: Caller | None = None) -> SandboxStatus:
        """paused -> ready: thawed where it was."""
        return await self.lifecycle("resume", sandbox_id, caller=caller)

    async def reap(self, *, caller: Caller | None = None) -> list[SandboxStatus]:
        """Destroy expired leases now (admin)."""
        require_admin(caller, "reap")
        reaped = await self.manager.reap()
        await self.serve_ready()
        return reaped

    async def reconcile(self, *, caller: Caller | None = None) -> list[dict[str, Any]]:
        """Destroy resources no live sandbox claims (admin); what was removed."""
        require_admin(caller, "reconcile")
        if self.upkeep:
            import asyncio

            await asyncio.to_thread(self.reap_seen)
        await self.serve_ready()
        removed = await self.manager.reconcile()
        return [h.model_dump(mode="json", include={"sandbox_id", "extension", "target"})
                for h in removed]
