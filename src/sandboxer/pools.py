"""Warm pools: sandboxes of a profile provisioned ahead, unclaimed, handed to a create.

A profile's ``pool: {size, max_age}`` keeps ``size`` sandboxes provisioned and proven
ready (an SSH command succeeded) but owned by nobody: no actor, no secret, no
``setup.env``, no setup step — the store marks them with the profile in its ``pool``
column. They are live rows (they take capacity), left out of every ``list``; the service
that hosts pools (``sandboxer serve``'s leader, the local service for its extension)
calls ``refill`` on an interval: it replaces those that reached ``max_age`` and
provisions what is missing (``Manager.create(pooled=True)``).

A ``create`` of the profile first tries ``claim``: the request is checked as a cold
create would check it, its secret refs validated and resolved at the boundary, then one
pooled sandbox is taken in one store transaction (``Store.claim``) and bound — actor,
labels, lease, name in the store; ``setup.env`` and the secrets through the extension's
``Binds`` capability, into that sandbox only; the descriptor assembled again in the
caller's environment — and the profile's setup steps run (they belong to the claim).
None when nothing can be claimed: the caller creates cold.

Core layer: this module reaches its siblings only through the ``Manager`` it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sandboxer.access import Caller
from sandboxer.errors import Conflict, NotFound, SandboxerError
from sandboxer.extensions.base import Binds, Extension
from sandboxer.models.common import format_duration, utcnow
from sandboxer.models.extension import Handle
from sandboxer.store.base import Claim

if TYPE_CHECKING:
    from sandboxer.manager import Manager
    from sandboxer.models.profile import PoolSpec, Profile
    from sandboxer.models.sandbox import SandboxStatus

log = logging.getLogger(__name__)
# A pooled sandbox this close to its max_age is no longer handed out, so that the refill
# that retires it (at max_age) never meets a claim of it, even across replicas' clocks.
CLAIM_MARGIN = timedelta(seconds=10)
REFILL_INTERVAL = 2.0  # seconds between two refill rounds of a host of pools
RETIRED = "pool_max_age"  # the reason a pooled sandbox replaced at max_age is destroyed


def unbindable(ext: Extension, profile: Profile) -> str | None:
    """Why a claim of ``profile``'s pool could not bind what the request needs (None:
    it can): environment or secrets, with an extension that cannot bind them later."""
    if isinstance(ext, Binds) or not (profile.setup.env or profile.setup.secret_refs):
        return None
    return (f"{ext.name} cannot bind setup.env or secrets to a running sandbox "
            "(no Binds capability)")


# -- claim -----------------------------------------------------------------------------


async def claim(manager: Manager, profile_id: str, *, ttl: str | None = None,
                actor: str | None = None, labels: dict[str, str] | None = None,
                target: str | None = None, name: str | None = None,
                caller: Caller | None = None) -> SandboxStatus | None:
    """A pooled sandbox of ``profile_id`` bound to this request and ready, or None (no
    pool, none free, or the extension cannot bind): then create cold."""
    profile = manager.catalog.get(profile_id)
    pool = profile.pool
    if pool is None or pool.size == 0:
        return None
    ext = manager.extension(profile.extension)
    if (why := unbindable(ext, profile)) is not None:
        log.info("%s: not claimed from its pool, created cold: %s", profile.id, why)
        return None
    if not manager.store.query_documents(profile=profile.id, pooled=True, states=["ready"],
                                         limit=1):
        log.info("%s: its pool has no ready sandbox; created cold", profile.id)
        return None  # before the refs are resolved: a cold create resolves them itself
    profile, refs, owner, lease, merged = manager.terms(
        profile_id, ttl=ttl, actor=actor, labels=labels, caller=caller)
    # Validated and resolved before anything is taken: a ref that fails costs no sandbox.
    _checks, secrets = await manager.secrets(profile, refs, resolve=True)
    from sandboxer import creator

    now = utcnow()
    terms = Claim(actor=owner or profile.actor, name=name, labels=merged, created_at=now,
                  expires_at=now + lease, max_expires_at=now + profile.ttl.max,
                  creator=creator.current())
    got = manager.store.claim(profile.id, terms,
                              born_after=now - pool.max_age + CLAIM_MARGIN,
                              targets=None if target is None else [target])
    if got is None:
        log.info("%s: its pool has no ready sandbox free; created cold", profile.id)
        return None
    rec = manager.store.get_record(got.id)
    handle = (Handle.model_validate(rec.handle) if rec is not None and rec.handle else
              Handle(sandbox_id=got.id, extension=ext.name, target=got.target))
    manager.progress(f"{got.id}: claimed from the pool of {profile.id}")
    try:
        if (profile.setup.env or secrets) and isinstance(ext, Binds):  # unbindable() said so
            await ext.bind(handle, dict(profile.setup.env), secrets)
        await manager._run_setup(ext, handle, profile, secrets)
        reach = manager.descriptor(got.id, await ext.endpoint(handle), profile)
        ready = manager.store.transition(
            got.id, from_states={"provisioning"}, to_state="ready", event="sandbox.ready",
            reachability=reach)
    except BaseException as e:
        await manager.failed_create(e, ext, handle, secrets, profile.id)
    manager.progress(f"{got.id}: ready")
    return ready


# -- refill ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What one refill round does to one pool."""

    retire: list[str]  # ready and unclaimed at max_age: destroyed, then replaced
    missing: int  # sandboxes to provision now


def _time(doc: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(doc[key].replace("Z", "+00:00"))


def decide(pool: PoolSpec, pooled: Iterable[dict[str, Any]], now: datetime) -> Decision:
    """Given the live unclaimed sandboxes of a pool (documents): those to retire at
    ``max_age`` and how many to provision. One being provisioned counts as there; an
    unreachable or destroying one does not. A pool over its size (shrunk) retires none
    early: its extra sandboxes age out and are not replaced."""
    retire, kept = [], 0
    for doc in pooled:
        if doc["state"] == "ready" and _time(doc, "created_at") <= now - pool.max_age:
            retire.append(doc["id"])
        elif doc["state"] in ("ready", "provisioning"):
            kept += 1
    return Decision(retire=retire, missing=max(0, pool.size - kept))


def pooled_profiles(manager: Manager, extension: str | None = None) -> list[Profile]:
    """Profiles with a pool (of ``extension`` when given); a broken profile is skipped."""
    from sandboxer.errors import ProfileInvalid

    found = []
    for pid in manager.catalog.ids():
        try:
            profile = manager.catalog.get(pid)
        except ProfileInvalid:
            continue
        if profile.pool is not None and extension in (None, profile.extension):
            found.append(profile)
    return found


async def refill(manager: Manager, *, extension: str | None = None) -> int:
    """One round over every pool (of ``extension``'s profiles when given): retire what
    reached max_age, provision what is missing, one at a time. How many were made."""
    made = 0
    for profile in pooled_profiles(manager, extension):
        if (pool := profile.pool) is None:
            continue
        docs = manager.store.query_documents(profile=profile.id, pooled=True,
                                             states=["provisioning", "ready", "unreachable"])
        plan = decide(pool, docs, utcnow())
        for sid in plan.retire:
            await _retire(manager, sid, pool)
        for _ in range(plan.missing):
            try:
                await manager.create(profile.id, pooled=True)
            except Conflict:
                break  # another host of pools filled it meanwhile
            except SandboxerError as e:
                log.warning("filling the pool of %s failed: %s", profile.id, e.render())
                break
            made += 1
    return made


async def _retire(manager: Manager, sid: str, pool: PoolSpec) -> None:
    # Read again: a claim since the round began gave it a new owner (and a new
    # created_at); CLAIM_MARGIN keeps claims away from one this old.
    rec = manager.store.get_record(sid)
    if (rec is None or rec.status.state != "ready"
            or rec.status.created_at > utcnow() - pool.max_age):
        return
    try:
        await manager.destroy(sid, reason=RETIRED)
    except SandboxerError as e:
        log.warning("retiring %s from its pool failed: %s", sid, e.render())


# -- reading ---------------------------------------------------------------------------


def documents(manager: Manager, *, caller: Caller | None = None) -> list[dict[str, Any]]:
    """Every pool as a ``sandboxer.pool/v1`` document, by profile: its profiles with a
    pool, and any profile whose pool still holds sandboxes. An actor (not an admin)
    sees each pool's counts but not its sandboxes."""
    docs = manager.store.query_documents(pooled=True, states=[
        "provisioning", "ready", "unreachable", "destroying"])
    held: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        held.setdefault(doc["profile"], []).append(doc)
    specs = {p.id: p for p in pooled_profiles(manager)}
    return [_document(pid, specs.get(pid), held.get(pid, []), caller)
            for pid in sorted({*specs, *held})]


def document(manager: Manager, profile_id: str, *,
             caller: Caller | None = None) -> dict[str, Any]:
    """One profile's pool (``sandboxer.pool/v1``); NotFound when it has none."""
    for doc in documents(manager, caller=caller):
        if doc["profile"] == profile_id:
            return doc
    manager.catalog.get(profile_id)  # an unknown profile: ProfileNotFound
    raise NotFound(f"{profile_id} has no pool",
                   hint="add `pool: {size: N, max_age: D}` to the profile")


def _document(pid: str, profile: Profile | None, held: list[dict[str, Any]],
              caller: Caller | None) -> dict[str, Any]:
    spec = profile.pool if profile is not None else None
    counts = {s: sum(1 for d in held if d["state"] == s)
              for s in ("ready", "provisioning", "unreachable", "destroying")}
    doc: dict[str, Any] = {
        "schema": "sandboxer.pool/v1", "profile": pid,
        "extension": profile.extension if profile else (held[0]["extension"]
                                                        if held else None),
        "size": spec.size if spec else 0,
        "max_age": format_duration(spec.max_age) if spec else None,
        **counts,
    }
    doc["sandboxes"] = ([{k: d[k] for k in ("id", "state", "target", "created_at")}
                         for d in held] if caller is None or caller.admin else None)
    return doc
