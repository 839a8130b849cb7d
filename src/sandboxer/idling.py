"""Idle handling: stop or pause a ready sandbox that did nothing for its profile's
``idle.after`` (docs/meta-framework.md, ``idle``; docs/architecture.md, background work).

Idle means inactive, not unconnected. Every ``SANDBOXER_IDLE_INTERVAL`` seconds the
watcher asks the extension (``ReportsActivity.activity``) how many SSH sessions the sandbox
has open and how much CPU its processes used so far. A sample is *active* when a session is
open or when the CPU used since the previous sample is above ``CPU_THRESHOLD``; each
active sample is stored as the sandbox's ``last_active_at``. A setup step never runs in a
``ready`` sandbox (create runs them while it is ``provisioning``, which is never watched).
A sandbox is idle once ``idle.after`` has passed since the latest of its
``last_active_at`` and its last change of state (ready, started, resumed, extended): then
the watcher calls ``Manager.stop`` or ``Manager.pause`` with reason ``idle`` and a detail
saying why, which records ``sandbox.stopped`` or ``sandbox.paused``.

The watcher runs in core's keeper for the extension (``sandboxer.service.daemon``, started
by the create of a profile with ``idle``) and in the leader of ``sandboxer serve``; two of
them watching one sandbox is harmless (``last_active_at`` only moves forward; the second
stop finds the sandbox stopped). A watcher that has no previous sample of a sandbox (it just
started) never judges its CPU from one sample: it acts from its second sample on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sandboxer.errors import Conflict, InvalidInput, SandboxerError
from sandboxer.extensions.base import Pauses, ReportsActivity, StopsAndStarts
from sandboxer.models.common import format_duration, iso, utcnow

if TYPE_CHECKING:
    from sandboxer.catalog import Catalog
    from sandboxer.extensions.base import Extension
    from sandboxer.manager import Manager
    from sandboxer.models.extension import Activity
    from sandboxer.models.profile import IdleSpec, Profile
    from sandboxer.store.base import Record

log = logging.getLogger(__name__)
# CPU seconds per second of wall time (1% of one core) above which a sandbox counts as
# busy. Its own idle processes (an SSH server waiting in accept, an init reaping) account a
# few milliseconds a minute, far below it; anything someone really runs — a build, a test
# loop, an agent's background job, even a shell loop that mostly sleeps — is far above it.
CPU_THRESHOLD = 0.01
SAMPLE_TIMEOUT = 30.0  # one activity() answer; a sandbox that does not answer is left alone
IDLE = "idle"


@dataclass(frozen=True)
class Sample:
    """One ``activity()`` answer and when it was taken (monotonic and wall clock)."""

    at: float
    wall: datetime
    sessions: int
    cpu_seconds: float


def sample(activity: Activity, *, at: float | None = None,
           wall: datetime | None = None) -> Sample:
    return Sample(at=time.monotonic() if at is None else at, wall=wall or utcnow(),
                  sessions=activity.sessions, cpu_seconds=activity.cpu_seconds)


def busy(prev: Sample | None, cur: Sample, *,
         threshold: float = CPU_THRESHOLD) -> str | None:
    """Why the sandbox counts as active at ``cur`` (None: it is idle, as far as these two
    samples tell). Without ``prev``, or when the CPU counter went back (its processes were
    started again), only the sessions can tell."""
    if cur.sessions > 0:
        return f"{cur.sessions} session(s) open"
    if prev is None or cur.cpu_seconds < prev.cpu_seconds:
        return None
    used, span = cur.cpu_seconds - prev.cpu_seconds, max(cur.at - prev.at, 1e-3)
    if used > threshold * span:
        return f"{used:.2f}s of CPU in {span:.1f}s"
    return None


def idle_since(rec: Record) -> datetime:
    """When the sandbox was last seen active or last changed state, whichever is later."""
    seen = rec.status.last_active_at
    return rec.updated_at if seen is None or seen < rec.updated_at else seen


def due(rec: Record, idle: IdleSpec, now: datetime) -> bool:
    return now - idle_since(rec) >= idle.after


def detail(rec: Record, idle: IdleSpec) -> str:
    """What the event of an idle action says."""
    return (f"idle for {format_duration(idle.after)}: no session open, no setup step "
            f"running, no CPU used since {iso(idle_since(rec))}")


def check(profile: Profile, ext: Extension) -> None:
    """Refuse (``InvalidInput``, at create and its dry run) a profile's ``idle`` that its
    extension cannot carry out, rather than create a sandbox that is never stopped."""
    if profile.idle is None:
        return
    action = profile.idle.action
    missing = ("ReportsActivity" if not isinstance(ext, ReportsActivity) else
               "StopsAndStarts" if action == "stop" and not isinstance(ext, StopsAndStarts)
               else "Pauses" if action == "pause" and not isinstance(ext, Pauses) else None)
    if missing is not None:
        what = "report a sandbox's activity" if missing == "ReportsActivity" else \
            f"{action} a sandbox"
        raise InvalidInput(
            f"profile {profile.id} has idle ({action} after "
            f"{format_duration(profile.idle.after)}) but {ext.name} cannot {what} "
            f"(it lacks {missing})",
            hint="remove idle from the profile, or use an extension that can")


def watched(profile: Profile, ext: Extension) -> bool:
    """Whether sandboxes of ``profile`` need a watcher (the create starts the keeper)."""
    return profile.idle is not None and isinstance(ext, ReportsActivity)


class Watcher:
    """Samples the ready sandboxes of profiles with ``idle`` (of one extension, or all)
    and acts on the idle ones; ``round()`` is one pass, ``run()`` the loop."""

    def __init__(self, manager: Manager, *, extension: str | None = None,
                 threshold: float = CPU_THRESHOLD) -> None:
        self.manager = manager
        self.extension = extension
        self.threshold = threshold
        self.samples: dict[str, Sample] = {}
        self._warned: set[str] = set()

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        log.log(level, msg, *args)

    @staticmethod
    def _idle_of(catalog: Catalog, profile_id: str) -> IdleSpec | None:
        try:
            return catalog.get(profile_id).idle
        except SandboxerError:  # a profile removed since: nothing to go by
            return None

    async def round(self) -> list[str]:
        """One pass over the watched sandboxes; the ids stopped or paused for being idle."""
        acted: list[str] = []
        seen: set[str] = set()
        catalog = self.manager.catalog  # read again only when a profile file changed
        for status in self.manager.store.query(states=["ready"], extension=self.extension,
                                                 pooled=False):  # unclaimed: nobody's
            idle = self._idle_of(catalog, status.profile)
            if idle is None:
                continue
            ext = self.manager.extension(status.extension)
            if not isinstance(ext, ReportsActivity):
                self._warn_once(f"ext:{ext.name}", "idle of %s is ignored: %s cannot report "
                                "activity", status.profile, ext.name)
                continue
            rec = self.manager.store.get_record(status.id)
            if rec is None or rec.handle is None or rec.status.state != "ready":
                continue
            seen.add(status.id)
            if await self._one(ext, rec, idle):
                acted.append(status.id)
        for gone in set(self.samples) - seen:
            del self.samples[gone]
        return acted

    async def _one(self, ext: ReportsActivity, rec: Record, idle: IdleSpec) -> bool:
        from sandboxer.models.extension import Handle

        sid = rec.status.id
        try:
            got = await asyncio.wait_for(ext.activity(Handle.model_validate(rec.handle)),
                                         SAMPLE_TIMEOUT)
        except Exception as e:  # a sandbox we cannot see is not judged idle
            self._warn_once(f"sample:{sid}", "activity of %s: %s", sid,
                            e.render() if isinstance(e, SandboxerError) else repr(e))
            return False
        cur = sample(got)
        prev = self.samples.get(sid)
        self.samples[sid] = cur
        why = busy(prev, cur, threshold=self.threshold)
        if why is not None:
            log.debug("%s is active: %s", sid, why)
            self.manager.store.set_last_active(sid, cur.wall)
            return False
        if prev is None or not due(rec, idle, cur.wall):
            return False
        return await self._act(rec, idle)

    async def _act(self, rec: Record, idle: IdleSpec) -> bool:
        sid, text = rec.status.id, detail(rec, idle)
        try:
            if idle.action == "pause":
                await self.manager.pause(sid, reason=IDLE, detail=text)
            else:
                await self.manager.stop(sid, reason=IDLE, detail=text)
        except Conflict:  # changed meanwhile (destroyed, stopped by its owner)
            return False
        except SandboxerError as e:
            self._warn_once(f"act:{sid}", "%s of idle sandbox %s failed: %s", idle.action,
                            sid, e.render())
            return False
        log.info("%s %s: %s", "paused" if idle.action == "pause" else "stopped", sid, text)
        self.samples.pop(sid, None)
        return True

    async def run(self, interval: float) -> None:
        """``round()`` every ``interval`` seconds until cancelled; never raises otherwise."""
        while True:
            try:
                await self.round()
            except Exception as e:  # the loop outlives one bad round (a busy store)
                self._warn_once("round", "idle handling round failed: %s", e)
            await asyncio.sleep(interval)


def interval_of(manager: Manager) -> float:
    from sandboxer import envvars

    return envvars.idle_interval(manager.settings.env)
