"""Targets' health and the sandboxes on them: what reconcile squares (docs/architecture.md).

Every target of every extension is probed. When one fails its probe, its ``ready``
sandboxes become ``unreachable`` (event ``sandbox.unreachable``; the reason names the
target and why), so nobody is handed an endpoint that cannot answer. When it answers
again, each of its ``unreachable`` sandboxes is looked at (``Extension.inspect``): still
there → ``ready`` (event ``sandbox.ready``, reason null); gone → ``failed`` (reason
``lost``). Destroys that failed while it was down are retried, and what it holds that no
live sandbox claims is destroyed (orphans), as before, and so is the snapshot data no
snapshot record claims (``sandboxer.snapshots.sweep``). A target that cannot be reached is
never swept: its sandboxes are left as they are until it can be.

The manager calls ``reconcile``; state changes happen one sandbox at a time through the
store's transitions, so a concurrent destroy or extend simply wins (Conflict is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from sandboxer import placement, snapshots
from sandboxer.errors import Conflict, SandboxerError
from sandboxer.extensions import base as extensions
from sandboxer.models.extension import Handle, Target

if TYPE_CHECKING:
    from sandboxer.extensions.base import Extension
    from sandboxer.manager import Manager
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.store.base import Store

log = logging.getLogger(__name__)
LOST = "lost"
# A destroy that failed records this prefix in ``error`` (Manager.destroy): retried here
# once the target answers again.
_DESTROY_FAILED = "destroy failed:"


def unreachable_reason(target: Target) -> str:
    """What an unreachable sandbox's ``reason`` says: which target, and why."""
    return f"target {target.name} is unhealthy: {target.reason or 'no reason given'}"


async def probe(ext: Extension, targets: list[Target]) -> list[Target]:
    """Every target of ``ext`` probed now (in parallel); a probe that raises counts as
    unhealthy with its message rather than stopping the others."""
    found = await asyncio.gather(*(ext.probe(t) for t in targets), return_exceptions=True)
    out: list[Target] = []
    for t, got in zip(targets, found, strict=True):
        if isinstance(got, BaseException):
            why = got.render() if isinstance(got, SandboxerError) else f"{type(got).__name__}"
            got = t.model_copy(update={"healthy": False, "reason": f"probe failed: {why}"})
        out.append(got)
    placement.record(ext, out)
    return out


def _handle(store: Store, status: SandboxStatus) -> Handle:
    rec = store.get_record(status.id)
    if rec is not None and rec.handle:
        return Handle.model_validate(rec.handle)
    return Handle(sandbox_id=status.id, extension=status.extension, target=status.target)


def mark_unreachable(store: Store, target: Target,
                     sandboxes: list[SandboxStatus]) -> list[SandboxStatus]:
    """Each ``ready`` sandbox of an unhealthy target becomes ``unreachable``."""
    changed: list[SandboxStatus] = []
    reason = unreachable_reason(target)
    for s in sandboxes:
        if s.state != "ready":
            continue
        with contextlib.suppress(Conflict):  # destroyed or extended meanwhile: theirs wins
            changed.append(store.transition(
                s.id, from_states={"ready"}, to_state="unreachable",
                event="sandbox.unreachable", reason=reason))
            log.warning("%s is unreachable: %s", s.id, reason)
    return changed


async def settle(manager: Manager, ext: Extension, target: Target,
                 sandboxes: list[SandboxStatus]) -> list[SandboxStatus]:
    """A healthy target's ``unreachable`` sandboxes back to ``ready`` or ``failed``
    (lost), and its failed destroys retried. Returns what changed."""
    store = manager.store
    changed: list[SandboxStatus] = []
    for s in sandboxes:
        try:
            if s.state == "unreachable":
                seen = await ext.inspect(_handle(store, s))
                if seen.live:
                    new = store.transition(s.id, from_states={"unreachable"},
                                           to_state="ready", event="sandbox.ready",
                                           reason=None)
                else:
                    detail = seen.detail or "not found"
                    new = store.transition(
                        s.id, from_states={"unreachable"}, to_state="failed",
                        event="sandbox.failed", reason=LOST,
                        error=f"gone from target {target.name} while it was unreachable: "
                        f"{detail}"[-2000:])
                    log.warning("%s was lost on target %s: %s", s.id, target.name, detail)
                changed.append(new)
            elif s.state == "destroying" and (s.error or "").startswith(_DESTROY_FAILED):
                changed.append(await manager.destroy(s.id, reason=s.reason or "destroyed"))
        except Conflict:
            continue  # someone else moved it meanwhile
        except SandboxerError as e:  # the target may fail again mid-way: next time
            log.warning("reconcile of %s on target %s: %s", s.id, target.name, e.render())
    return changed


async def _orphans(store: Store, ext: Extension, target: Target) -> list[Handle]:
    removed: list[Handle] = []
    owned = await ext.owned(target)
    # Read after owned(): a create (here or on another replica) records its row before it
    # makes anything, so whatever owned() saw is claimed by now.
    live = store.live_ids()
    for handle in owned:
        if handle.sandbox_id not in live:
            await ext.destroy(handle)
            removed.append(handle)
    return removed


async def reconcile(manager: Manager) -> list[Handle]:
    """Probe, mark, settle, then destroy orphans on every healthy target; the orphans
    destroyed. An extension or target that fails is logged and skipped."""
    store = manager.store
    removed: list[Handle] = []
    for name in extensions.available():
        try:
            ext = manager.extension(name)
            targets = await probe(ext, ext.targets(manager.settings))
        except SandboxerError as e:
            log.warning("reconcile skips %s: %s", name, e.render())
            continue
        mine = store.query(states=["ready", "unreachable", "destroying"], extension=name)
        for target in targets:
            on = [s for s in mine if s.target == target.name]
            if not target.healthy:
                mark_unreachable(store, target, on)
                continue
            await settle(manager, ext, target, on)
        for target in (t for t in targets if t.healthy):
            try:
                removed += await _orphans(store, ext, target)
            except SandboxerError as e:
                log.warning("reconcile skips orphans on %s: %s", target.name, e.render())
            try:  # snapshot data no snapshot record claims
                await snapshots.sweep(manager, ext, target)
            except SandboxerError as e:
                log.warning("reconcile skips snapshot data on %s: %s", target.name,
                            e.render())
    return removed
