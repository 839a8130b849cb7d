"""Snapshots and forks (docs/architecture.md, Snapshots; ADR 0012).

A snapshot records a sandbox's data through its extension's ``Snapshots`` capability and
is a record of its own (``sandboxer.snapshot/v1``):

    creating --the extension recorded it--> ready --delete, retention ended--> deleting
    creating --it failed, or its process died--> failed              deleting --> deleted

``snapshot`` writes the ``creating`` row before the extension makes anything (so
reconcile never takes a snapshot in progress for a leftover), then records the artifact
the extension returned with ``snapshot.created``; a failure records ``failed`` with
``snapshot.failed`` (the extension has cleaned up). ``delete_snapshot`` records
``deleting``, asks the extension, then records ``deleted`` with ``snapshot.deleted``
(reason ``deleted``, or ``expired`` from the reaper); a delete that failed stays
``deleting`` with its error and is retried by the next delete or reaper. A snapshot
belongs to the actor of its sandbox: another actor gets ``snapshot_not_found``, exactly
as for a snapshot that does not exist.

``source`` checks a ``create --from-snapshot`` (the profile's extension is the
snapshot's, the extension can provision from it; the caller places it on the snapshot's
target); ``fork`` is a snapshot plus such a create, binding what every create binds.

Core layer: this module reaches its siblings only through the ``Manager`` it is given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sandboxer.access import Caller, not_found
from sandboxer.errors import (
    Conflict,
    DestroyFailed,
    InvalidInput,
    ProvisionFailed,
    SandboxerError,
    SnapshotNotFound,
)
from sandboxer.extensions.base import Extension, Snapshots
from sandboxer.models.common import format_duration, parse_duration, utcnow
from sandboxer.models.extension import Handle, SnapshotArtifact, Target
from sandboxer.models.snapshot import SnapshotStatus
from sandboxer.values import (
    SNAPSHOT_FINAL_STATES,
    SNAPSHOTTABLE_STATES,
    new_snapshot_id,
    not_reachable_hint,
)

if TYPE_CHECKING:
    from sandboxer.manager import Manager
    from sandboxer.models.profile import SnapshotSpec
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.store.snapshots import SnapshotRecord

log = logging.getLogger(__name__)
# What `snapshots list` shows unless asked for every state: snapshots that hold data.
HELD_STATES = ("creating", "ready", "deleting")
# A snapshot or a delete that has not moved for this long is abandoned (its process died).
STALE_AFTER = 1800.0
DELETED, EXPIRED, ABANDONED = "deleted", "expired", "abandoned"


def snapshot_not_found(snapshot_id: str) -> SnapshotNotFound:
    """The one answer for "unknown" and "not yours" alike."""
    return SnapshotNotFound(f"no snapshot with id {snapshot_id!r}",
                            hint="see `sandboxer snapshots list`")


def _text(e: BaseException) -> str:
    return e.render() if isinstance(e, SandboxerError) else f"{type(e).__name__}: {e}"


def _record(manager: Manager, snapshot_id: str, caller: Caller | None) -> SnapshotRecord:
    rec = manager.store.get_snapshot_record(snapshot_id)
    if rec is None or (caller is not None and not caller.may_see(rec.status.actor)):
        raise snapshot_not_found(snapshot_id)
    return rec


def _capable(ext: Extension, what: str) -> Snapshots:
    if not isinstance(ext, Snapshots):
        raise InvalidInput(f"{what}: its extension {ext.name} cannot snapshot sandboxes",
                           hint="use a profile of an extension that takes snapshots")
    return ext


def _retention(manager: Manager, profile_id: str, retain: str | None) -> timedelta:
    """How long a snapshot of ``profile_id``'s sandbox is kept: ``retain``, at most the
    profile's ``snapshot.max``, else its ``snapshot.retain``."""
    from sandboxer.models.profile import SnapshotSpec

    spec: SnapshotSpec
    try:
        spec = manager.catalog.get(profile_id).snapshot
    except SandboxerError as e:  # the profile is gone since: the defaults apply
        log.info("snapshot of a %s sandbox: its profile cannot be read (%s); the default "
                 "retention applies", profile_id, e.message)
        spec = SnapshotSpec()
    if retain is None:
        return spec.retain
    try:
        kept = parse_duration(retain)
    except ValueError as e:
        raise InvalidInput(f"--retain: {e}") from e
    if kept <= timedelta(0):
        raise InvalidInput("--retain must be longer than 0s")
    if kept > spec.max:
        raise InvalidInput(f"--retain {format_duration(kept)} exceeds {profile_id}'s "
                           f"snapshot.max ({format_duration(spec.max)})",
                           hint="ask for a shorter retention")
    return kept


# -- reading -----------------------------------------------------------------------------


def get(manager: Manager, snapshot_id: str, *, caller: Caller | None = None) -> SnapshotStatus:
    """One snapshot; ``caller`` (None: the local operator) sees only its own."""
    return _record(manager, snapshot_id, caller).status


def listing(manager: Manager, *, sandbox_id: str | None = None, caller: Caller | None = None,
            all_states: bool = False) -> list[SnapshotStatus]:
    """Snapshots that hold data (every state with ``all_states``), oldest first; only
    ``sandbox_id``'s when given; a non-admin caller sees only its own."""
    actor = None if caller is None or caller.admin else caller.actor
    return manager.store.query_snapshots(
        states=None if all_states else HELD_STATES, sandbox_id=sandbox_id, actor=actor)


# -- snapshot ----------------------------------------------------------------------------


def _snapshottable(manager: Manager, sandbox_id: str,
                   caller: Caller | None) -> tuple[SandboxStatus, Snapshots, Handle]:
    rec = manager.store.get_record(sandbox_id)
    if rec is None or (caller is not None and not caller.may_see(rec.status.actor)):
        raise not_found(sandbox_id)
    s = rec.status
    if rec.pool is not None:
        raise Conflict(f"cannot snapshot sandbox {sandbox_id}: it waits unclaimed in the "
                       f"pool of {rec.pool}", hint="snapshot a sandbox after its create")
    if s.state not in SNAPSHOTTABLE_STATES:
        why = f" ({s.reason})" if s.reason and s.reason != s.state else ""
        raise Conflict(f"cannot snapshot sandbox {sandbox_id}: it is {s.state}{why}; only a "
                       f"{', '.join(SNAPSHOTTABLE_STATES[:-1])} or "
                       f"{SNAPSHOTTABLE_STATES[-1]} sandbox can be snapshotted",
                       hint=not_reachable_hint(sandbox_id, s.state))
    ext = _capable(manager.extension(s.extension), f"cannot snapshot sandbox {sandbox_id}")
    handle = (Handle.model_validate(rec.handle) if rec.handle else
              Handle(sandbox_id=s.id, extension=s.extension, target=s.target))
    if refusal := ext.snapshottable(handle):
        raise InvalidInput(f"cannot snapshot sandbox {sandbox_id}: {s.extension} says: "
                           f"{refusal}")
    return s, ext, handle


async def snapshot(manager: Manager, sandbox_id: str, *, name: str | None = None,
                   retain: str | None = None, caller: Caller | None = None,
                   progress: Callable[[str], None] | None = None) -> SnapshotStatus:
    """Record a snapshot of a ready, stopped or paused sandbox and return it ``ready``, or
    record it ``failed`` and raise. The sandbox is left in its state. ``name`` is checked
    by the caller (``Manager.snapshot``)."""
    report = progress or manager.progress
    s, ext, handle = _snapshottable(manager, sandbox_id, caller)
    kept = _retention(manager, s.profile, retain)
    async with manager.exclusive(sandbox_id):  # no stop, start, pause meanwhile here
        s, ext, handle = _snapshottable(manager, sandbox_id, caller)  # as it is now
        now = utcnow()
        snap = SnapshotStatus(id=new_snapshot_id(), name=name, sandbox_id=s.id,
                              profile=s.profile, extension=s.extension, target=s.target,
                              state="creating", actor=s.actor, created_at=now,
                              expires_at=now + kept)
        manager.store.insert_snapshot(snap)
        report(f"{snap.id}: recording a snapshot of {sandbox_id} ({s.state})")
        try:
            artifact = await ext.snapshot(handle, snap.id, report)
            if (artifact.snapshot_id, artifact.extension) != (snap.id, s.extension):
                await _quietly(ext.delete_snapshot(artifact))
                raise ProvisionFailed(
                    f"{s.extension} returned the artifact of {artifact.snapshot_id} "
                    f"({artifact.extension}) for {snap.id}")
        except BaseException as e:
            with contextlib.suppress(Conflict):
                manager.store.snapshot_transition(
                    snap.id, from_states={"creating"}, to_state="failed",
                    event="snapshot.failed", reason="snapshot_failed",
                    error=_text(e)[-2000:] if isinstance(e, Exception)
                    else f"interrupted ({type(e).__name__})")
            if isinstance(e, SandboxerError) and not isinstance(e, ProvisionFailed):
                raise
            if not isinstance(e, Exception):
                raise
            raise ProvisionFailed(f"snapshot {snap.id} of {sandbox_id} failed: {_text(e)}",
                                  hint="nothing was kept; see `sandboxer snapshots show "
                                  f"{snap.id}` for the recorded error") from e
    try:
        done = manager.store.snapshot_transition(
            snap.id, from_states={"creating"}, to_state="ready", event="snapshot.created",
            artifact=artifact.model_dump(mode="json"), size_bytes=artifact.size_bytes,
            content_hash=artifact.content_hash, target=artifact.target or s.target)
    except Conflict:  # the reaper took it for abandoned meanwhile: nothing may claim it
        await _quietly(ext.delete_snapshot(artifact))
        raise Conflict(f"snapshot {snap.id} was given up while it was being recorded",
                       hint=f"take another: `sandboxer snapshot {sandbox_id}`") from None
    report(f"{snap.id}: ready")
    return done


async def _quietly(coro: Awaitable[None]) -> None:
    import asyncio

    try:
        await asyncio.shield(coro)
    except Exception as e:  # cleanup after a failure must not hide the failure
        log.warning("cleaning up a snapshot failed too: %s", e)


# -- delete ------------------------------------------------------------------------------


async def delete(manager: Manager, snapshot_id: str, *, reason: str = DELETED,
                 caller: Caller | None = None) -> SnapshotStatus:
    """Remove a snapshot's data and record it ``deleted``. Idempotent: a deleted or failed
    snapshot is returned unchanged; a delete that failed before is retried."""
    rec = _record(manager, snapshot_id, caller)
    s = rec.status
    if s.state in SNAPSHOT_FINAL_STATES:
        return s
    if s.state == "creating":
        raise Conflict(f"snapshot {snapshot_id} is still being recorded",
                       hint=f"delete it once it is ready: `sandboxer snapshots show "
                       f"{snapshot_id}`")
    if s.state == "ready":
        try:
            manager.store.snapshot_transition(snapshot_id, from_states={"ready"},
                                              to_state="deleting", event=None, reason=reason)
        except Conflict:
            return await delete(manager, snapshot_id, reason=reason)
    if rec.artifact is not None:
        ext = manager.extension(s.extension)
        artifact = SnapshotArtifact.model_validate(rec.artifact)
        try:
            await _capable(ext, f"cannot delete snapshot {snapshot_id}").delete_snapshot(
                artifact)
        except Exception as e:
            manager.store.snapshot_transition(
                snapshot_id, from_states={"deleting"}, to_state="deleting", event=None,
                error=f"delete failed: {_text(e)}"[-2000:])
            raise DestroyFailed(f"deleting snapshot {snapshot_id} failed: {_text(e)}",
                                hint="retry `sandboxer snapshots delete`; it is "
                                "idempotent") from e
    try:
        return manager.store.snapshot_transition(
            snapshot_id, from_states={"deleting"}, to_state="deleted",
            event="snapshot.deleted", reason=reason, error=None)
    except Conflict:
        return get(manager, snapshot_id)  # another process finished the same delete


# -- create from a snapshot, fork --------------------------------------------------------


def source(manager: Manager, snapshot_id: str, profile_id: str, *,
           caller: Caller | None = None,
           target: str | None = None) -> tuple[SnapshotArtifact, str | None]:
    """What a ``create --from-snapshot`` starts from: the ready snapshot's artifact and the
    target the new sandbox must be placed on. InvalidInput when the profile's extension
    is not the snapshot's or cannot provision from a snapshot, or ``target`` (pinned by
    the caller) is another; Conflict when it is not ready."""
    rec = _record(manager, snapshot_id, caller)
    s = rec.status
    if target is not None and target != s.target:
        raise InvalidInput(f"a sandbox made from snapshot {snapshot_id} is placed on its "
                           f"target {s.target}, not {target}",
                           hint="leave --target out")
    if s.state != "ready" or rec.artifact is None:
        raise Conflict(f"snapshot {snapshot_id} is {s.state}; only a ready snapshot can be "
                       "created from", hint="see `sandboxer snapshots list`")
    profile = manager.catalog.get(profile_id)
    if profile.extension != s.extension:
        raise InvalidInput(f"cannot create {profile.id} from snapshot {snapshot_id}: the "
                           f"profile's extension is {profile.extension}, the snapshot's "
                           f"{s.extension}",
                           hint=f"create a profile of {s.extension} from it (its own "
                           f"profile is {s.profile})")
    _capable(manager.extension(s.extension),
             f"cannot create {profile.id} from snapshot {snapshot_id}")
    return SnapshotArtifact.model_validate(rec.artifact), s.target


async def fork(manager: Manager, sandbox_id: str, *, ttl: str | None = None,
               labels: dict[str, str] | None = None, name: str | None = None,
               actor: str | None = None, caller: Caller | None = None,
               progress: Callable[[str], None] | None = None) -> SandboxStatus:
    """A snapshot of the sandbox, then a new sandbox of its profile created from it (on
    the snapshot's target) with a new lease, new keys and the profile's secrets resolved
    again; its owner and labels are the original's unless given. The snapshot stays (the
    new sandbox's ``snapshot``) until its retention ends or it is deleted. ``name`` is
    checked by the caller (``Manager.fork``), before the snapshot is taken."""
    original = manager.get(sandbox_id, caller=caller)
    snap = await snapshot(manager, sandbox_id, caller=caller, progress=progress)
    return await manager.create(
        original.profile, ttl=ttl, actor=actor if actor is not None else original.actor,
        labels={**original.labels, **(labels or {})}, name=name, caller=caller,
        from_snapshot=snap.id)


# -- the reaper and reconcile ------------------------------------------------------------


async def reap(manager: Manager, *, extension: str | None = None,
               now: datetime | None = None) -> list[SnapshotStatus]:
    """Delete snapshots whose retention ended (reason ``expired``), finish abandoned
    deletes, and record abandoned snapshots ``failed`` (reconcile removes what they left)."""
    done: list[SnapshotStatus] = []
    now = now or utcnow()
    for s in manager.store.reapable_snapshots(now, extension=extension,
                                              stale_after=STALE_AFTER):
        try:
            if s.state == "creating":
                done.append(manager.store.snapshot_transition(
                    s.id, from_states={"creating"}, to_state="failed",
                    event="snapshot.failed", reason=ABANDONED,
                    error="the process recording it stopped before it was ready"))
            elif s.state == "ready" and s.expires_at <= now:
                done.append(await delete(manager, s.id, reason=EXPIRED))
            elif s.state == "deleting":
                done.append(await delete(manager, s.id, reason=s.reason or DELETED))
        except Conflict:
            continue  # someone else moved it meanwhile
        except SandboxerError as e:
            log.warning("reaping snapshot %s failed: %s", s.id, e.render())
    return done


async def sweep(manager: Manager, ext: Extension, target: Target) -> list[SnapshotArtifact]:
    """Remove the artifacts ``ext`` holds on ``target`` that no snapshot record claims
    (a snapshot that failed or was abandoned, a record lost); what was removed."""
    if not isinstance(ext, Snapshots):
        return []
    owned = await ext.owned_snapshots(target)
    if not owned:
        return []
    # Read after owned_snapshots(): a snapshot records its row before it makes anything.
    claimed = manager.store.claimed_snapshots(ext.name)
    removed = []
    for artifact in owned:
        if artifact.snapshot_id not in claimed:
            await ext.delete_snapshot(artifact)
            log.info("reconcile removed snapshot data %s on %s (%s): no snapshot claims it",
                     artifact.snapshot_id, target.name, ext.name)
            removed.append(artifact)
    return removed
