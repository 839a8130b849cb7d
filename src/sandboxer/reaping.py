"""What the reaper acts on: the store's candidates, judged against this host's processes.

The store knows times; only core can tell whether the process that started a create is
still running (``sandboxer.creator``), so that judgement happens here, not in the store.

Two-stage expiry (``ttl.retain``, kept in the store at create so the reaper never loads
the catalog): when the lease of a ready, paused or stopped sandbox ends, it is stopped
(event ``sandbox.stopped``, reason ``expired: …``) and its ``expires_at`` becomes the end
of its retain; when that passes it is destroyed as any expired lease is (``sandbox.expired``,
then ``sandbox.destroyed``). ``extend`` renews such a sandbox (``renewal``), ``start``
brings it back. An extension that cannot stop it is destroyed at once, with a warning.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from sandboxer.extensions.base import Extension, StopsAndStarts
    from sandboxer.manager import Manager
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.store.base import ReapCandidate, Record, Store

log = logging.getLogger(__name__)
# A destroy or create that has not moved for this long is abandoned, whatever its process.
STALE_AFTER = 1800.0
EXPIRED = "expired"
# States a lease runs out in that ttl.retain keeps (an unreachable sandbox cannot be
# stopped: its target does not answer; it is destroyed as before).
RETAINABLE = ("ready", "paused", "stopped")


def _due(c: ReapCandidate, stale_before: datetime) -> bool:
    # The store returns every provisioning sandbox: only a create whose process is gone or
    # that has been silent too long is abandoned; a slow one is left alone.
    if c.state != "provisioning" or c.updated_at <= stale_before:
        return True
    from sandboxer.creator import is_gone  # socket: only when a create is in flight

    return is_gone(c.creator)


def due(store: Store, now: datetime, *, extension: str | None = None,
        stale_after: float = STALE_AFTER) -> list[str]:
    """Ids whose lease (or retain) ran out, destroys abandoned for ``stale_after``, and
    creates whose creating process is gone (or silent for ``stale_after``),
    soonest-expiring first."""
    stale_before = now - timedelta(seconds=stale_after)
    candidates = store.reapable(now, extension=extension, stale_after=stale_after)
    return [c.id for c in candidates if _due(c, stale_before)]


def any_due(store: Store, now: datetime, *, stale_after: float = STALE_AFTER) -> bool:
    """A cheap check for the opportunistic reap in every CLI call: two indexed queries (a
    sandbox or a snapshot due), plus a look at the creators of the sandboxes being
    created, if any."""
    if store.has_reapable(now, stale_after=stale_after) or store.has_reapable_snapshots(
            now, stale_after=stale_after):
        return True
    stale_before = now - timedelta(seconds=stale_after)
    return any(_due(c, stale_before) for c in store.reapable(now, stale_after=stale_after)
               if c.state == "provisioning")


def seconds(retain: timedelta | None) -> float | None:
    """A profile's ``ttl.retain`` as the store keeps it (None: destroyed at the lease's end)."""
    return retain.total_seconds() if retain else None


def retaining(status: SandboxStatus) -> bool:
    """Whether a sandbox is in its retain stage: stopped because its lease ended, its
    ``expires_at`` the time it is destroyed."""
    return status.state == "stopped" and (status.reason or "").split(":")[0] == EXPIRED


def renewal(status: SandboxStatus) -> dict[str, Any]:
    """What ``extend`` changes besides the lease: a sandbox in its retain stage leaves it
    (it stays stopped, with a new lease, until ``start``)."""
    return {"reason": "stopped"} if retaining(status) else {}


def lapsed(rec: Record, now: datetime) -> bool:
    """Whether a live sandbox's lease (or retain) still ended by ``now`` when re-read: a
    concurrent ``extend`` or another reaper's retain moved ``expires_at`` meanwhile."""
    return rec.status.expires_at <= now


def retains(rec: Record) -> bool:
    """Whether the end of this sandbox's lease starts its retain stage (rather than its
    destroy): its profile had ``ttl.retain`` and it is not in that stage already."""
    # Reason expired already: its retain ran out (or was recorded before a stop that never
    # finished): destroyed now, never kept a second time.
    s = rec.status
    return (bool(rec.retain) and s.state in RETAINABLE
            and (s.reason or "").split(":")[0] != EXPIRED)


def _can_stop(ext: Extension) -> bool:
    from sandboxer.extensions.base import StopsAndStarts

    return isinstance(ext, StopsAndStarts)


async def retain(manager: Manager, rec: Record, now: datetime) -> SandboxStatus:
    """Start the retain stage: stop the sandbox (reason ``expired``) and set its
    ``expires_at`` to ``now`` + its retain; destroy it when its extension cannot stop it."""
    from sandboxer.errors import SandboxerError
    from sandboxer.models.common import format_duration, iso
    from sandboxer.models.extension import Handle

    s, sid = rec.status, rec.status.id
    kept = timedelta(seconds=rec.retain or 0)
    until = now + kept
    detail = (f"lease ended; kept stopped until {iso(until)} (ttl.retain "
              f"{format_duration(kept)}), then destroyed")
    reason = f"{EXPIRED}: {detail}"
    if s.state == "stopped":  # stopped by a caller or for being idle: only the time moves
        return manager.store.transition(sid, from_states={"stopped"}, to_state="stopped",
                                        event="sandbox.stopped", reason=reason,
                                        expires_at=until)
    ext = manager.extension(s.extension)
    why = f"{ext.name} cannot stop sandboxes"
    if _can_stop(ext) and rec.handle is not None:
        why = cast("StopsAndStarts", ext).stoppable(Handle.model_validate(rec.handle)) or ""
    if why:
        log.warning("%s: ttl.retain needs a stopped sandbox but %s; destroying it as its "
                    "lease ended", sid, why)
        return await manager.destroy(sid, reason=EXPIRED)
    # The end of the retain is recorded first: a reaper that reads it meanwhile sees a lease
    # that has not ended, never a stopped sandbox whose retain already ran out.
    manager.store.transition(sid, from_states={s.state}, to_state=s.state, event=None,
                             reason=reason, expires_at=until)
    try:
        return await manager.stop(sid, reason=EXPIRED, detail=detail)
    except SandboxerError as e:
        log.warning("%s: stopping it as its lease ended failed (%s); destroying it", sid,
                    e.render())
        return await manager.destroy(sid, reason=EXPIRED)
