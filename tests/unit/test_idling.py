"""sandboxer.idling decides from Activity samples; the watcher acts through the manager."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, SecretStr

from sandboxer import idling
from sandboxer.config import Settings
from sandboxer.errors import Conflict, InvalidInput
from sandboxer.extensions.base import Extension, Pauses, ReportsActivity, StopsAndStarts
from sandboxer.models.common import utcnow
from sandboxer.models.extension import Activity, Handle
from sandboxer.models.profile import IdleSpec, Profile
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.store import open_store
from sandboxer.store.base import Record, Store


def _sample(at: float, cpu: float, sessions: int = 0) -> idling.Sample:
    return idling.sample(Activity(sessions=sessions, cpu_seconds=cpu), at=at)


def test_a_session_open_is_activity_whatever_the_cpu() -> None:
    assert idling.busy(None, _sample(0, 0, sessions=1)) == "1 session(s) open"
    assert idling.busy(_sample(0, 5), _sample(5, 5, sessions=2)) == "2 session(s) open"


def test_cpu_above_the_threshold_between_two_samples_is_activity() -> None:
    assert idling.busy(_sample(0, 1.0), _sample(5, 1.5)) == "0.50s of CPU in 5.0s"
    # Its own idle processes' few milliseconds stay below 1% of a core.
    assert idling.busy(_sample(0, 1.0), _sample(5, 1.02)) is None
    assert idling.busy(_sample(0, 1.0), _sample(5, 1.0)) is None
    assert idling.busy(_sample(0, 1.0), _sample(5, 1.02), threshold=0.001) is not None


def test_one_sample_or_a_counter_that_went_back_tells_nothing_about_cpu() -> None:
    assert idling.busy(None, _sample(5, 100.0)) is None
    assert idling.busy(_sample(0, 100.0), _sample(5, 3.0)) is None  # started again


def _record(**kw: Any) -> Record:
    now = utcnow()
    fields: dict[str, Any] = {"id": "sbx-aaaaaaaaaa", "profile": "p", "extension": "ext.x",
                              "state": "ready", "created_at": now - timedelta(hours=1),
                              "expires_at": now + timedelta(hours=1)}
    updated = kw.pop("updated_at", now - timedelta(minutes=50))
    fields.update(kw)
    return Record(status=SandboxStatus.model_validate(fields), handle={}, version=2,
                  max_expires_at=now + timedelta(hours=8), updated_at=updated)


def test_idle_counts_from_the_last_activity_or_the_last_change_whichever_is_later() -> None:
    now = utcnow()
    after = IdleSpec(after=timedelta(minutes=30))
    never_seen = _record()  # ready 50 minutes ago, never seen active
    assert idling.idle_since(never_seen) == never_seen.updated_at
    assert idling.due(never_seen, after, now)
    seen = _record(last_active_at=now - timedelta(minutes=10))
    assert not idling.due(seen, after, now)
    assert idling.due(seen, after, now + timedelta(minutes=21))
    started = _record(last_active_at=now - timedelta(hours=2), updated_at=now)  # just started
    assert idling.idle_since(started) == now
    assert not idling.due(started, after, now + timedelta(minutes=29))
    text = idling.detail(seen, after)
    assert text.startswith("idle for 30m: no session open, no setup step running, no CPU "
                           "used since ")


class _Bare(Extension):
    name: ClassVar[str] = "ext.bare"
    Spec: ClassVar[type[BaseModel]] = BaseModel


class _Watched(_Bare, ReportsActivity, StopsAndStarts):
    name: ClassVar[str] = "ext.watched"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.answers: dict[str, Activity] = {}

    async def activity(self, handle: Handle) -> Activity:
        return self.answers[handle.sandbox_id]

    async def stop(self, handle: Handle) -> Handle:
        return handle

    async def start(self, handle: Handle, env: Mapping[str, str],
                    secrets: Mapping[str, SecretStr]) -> Handle:
        return handle


class _Freezes(_Bare, ReportsActivity, Pauses):
    name: ClassVar[str] = "ext.freezes"

    async def activity(self, handle: Handle) -> Activity:
        return Activity()

    async def pause(self, handle: Handle) -> None:
        return None

    async def resume(self, handle: Handle) -> None:
        return None


# Only the capabilities matter here, not provisioning.
for _cls in (_Bare, _Watched, _Freezes):
    _cls.__abstractmethods__ = frozenset()


def _profile(idle: dict[str, Any] | None) -> Profile:
    return Profile.model_validate({"id": "profile.p", "extension": "ext.x", "idle": idle})


def test_an_idle_the_extension_cannot_carry_out_is_refused(settings: Settings) -> None:
    idling.check(_profile(None), _Bare(settings))  # no idle: nothing to check
    with pytest.raises(InvalidInput, match=r"ext\.bare cannot report a sandbox's activity"):
        idling.check(_profile({"after": "30m"}), _Bare(settings))
    idling.check(_profile({"after": "30m"}), _Watched(settings))
    with pytest.raises(InvalidInput, match=r"cannot pause a sandbox \(it lacks Pauses"):
        idling.check(_profile({"after": "30m", "action": "pause"}), _Watched(settings))
    with pytest.raises(InvalidInput, match="lacks StopsAndStarts"):
        idling.check(_profile({"after": "30m"}), _Freezes(settings))
    idling.check(_profile({"after": "30m", "action": "pause"}), _Freezes(settings))
    assert idling.watched(_profile({"after": "1s"}), _Watched(settings))
    assert not idling.watched(_profile({"after": "1s"}), _Bare(settings))
    assert not idling.watched(_profile(None), _Watched(settings))


@dataclass
class _Catalog:
    idle: dict[str, IdleSpec | None]

    def get(self, profile_id: str) -> Profile:
        if profile_id not in self.idle:
            raise InvalidInput(f"no profile {profile_id}")
        spec = self.idle[profile_id]
        return _profile(None if spec is None else spec.model_dump())


@dataclass
class _Manager:
    """What the watcher uses of a Manager: store, catalog, extension, stop and pause."""

    store: Store
    catalog: _Catalog
    ext: _Watched
    calls: list[tuple[str, str, str, str]] = field(default_factory=list)

    def extension(self, name: str) -> Extension:
        return self.ext

    async def stop(self, sandbox_id: str, *, reason: str = "stopped",
                   detail: str | None = None) -> SandboxStatus:
        self.calls.append(("stop", sandbox_id, reason, detail or ""))
        return self.store.transition(sandbox_id, from_states={"ready"}, to_state="stopped",
                                     event="sandbox.stopped", reason=f"{reason}: {detail}")

    async def pause(self, sandbox_id: str, *, reason: str = "paused",
                    detail: str | None = None) -> SandboxStatus:
        self.calls.append(("pause", sandbox_id, reason, detail or ""))
        raise Conflict("changed meanwhile")


def _add(store: Store, profile: str, state: str = "ready", pool: str | None = None) -> str:
    now = utcnow()
    s = SandboxStatus.model_validate({
        "id": f"sbx-{profile[:1] * 10}", "profile": profile, "extension": "ext.watched",
        "state": state, "created_at": now, "expires_at": now + timedelta(hours=1)})
    store.insert(s, max_expires_at=now + timedelta(hours=2), pool=pool)
    store.set_handle(s.id, Handle(sandbox_id=s.id, extension="ext.watched").model_dump(
        mode="json"))
    return s.id


def test_the_watcher_stops_what_idled_and_keeps_what_is_busy(settings: Settings) -> None:
    asyncio.run(_watch(settings))


async def _watch(settings: Settings) -> None:
    settings.ensure()
    store = open_store(settings)
    tiny = IdleSpec(after=timedelta(seconds=1))
    cat = _Catalog({"quiet": tiny, "talky": tiny, "cpu": tiny, "free": None, "new": tiny,
                    "ice": IdleSpec(after=timedelta(seconds=1), action="pause")})
    ext = _Watched(settings)
    manager = _Manager(store, cat, ext)
    quiet, talky, busy = _add(store, "quiet"), _add(store, "talky"), _add(store, "cpu")
    free, frozen = _add(store, "free"), _add(store, "ice")
    _add(store, "zgone")  # its profile was removed: left alone
    _add(store, "new", pool="new")  # unclaimed in a warm pool: nobody's, never idle
    for sid in (quiet, frozen):
        ext.answers[sid] = Activity(cpu_seconds=2.0)
    ext.answers[talky] = Activity(sessions=1)
    ext.answers[busy] = Activity(cpu_seconds=1.0)
    watcher = idling.Watcher(manager)  # type: ignore[arg-type]  # what it uses of one
    # The first round only samples (and records the session): nothing is judged on one.
    assert await watcher.round() == []
    assert manager.calls == []
    talked = store.get(talky)
    assert talked is not None
    assert talked.last_active_at is not None
    assert set(watcher.samples) == {quiet, talky, busy, frozen}
    # Pretend the samples are old and the sandboxes became ready long ago.
    for sid, s in watcher.samples.items():
        watcher.samples[sid] = idling.Sample(s.at - 10, s.wall, s.sessions, s.cpu_seconds)
    ext.answers[busy] = Activity(cpu_seconds=5.0)  # 4 s of CPU in 10 s
    back = utcnow() - timedelta(minutes=5)
    _age(store, [quiet, frozen, busy, talky], back)
    assert await watcher.round() == [quiet]
    # The pause lost to a change meanwhile (Conflict): not counted, tried again next round.
    assert [c[:3] for c in manager.calls] == [("stop", quiet, "idle"),
                                              ("pause", frozen, "idle")]
    assert "no session open, no setup step running, no CPU used since" in manager.calls[0][3]
    stopped = store.get(quiet)
    assert stopped is not None
    assert stopped.state == "stopped"
    assert stopped.reason is not None
    assert stopped.reason.startswith("idle: idle for 1s")
    kept = store.get(busy)
    assert kept is not None
    assert kept.state == "ready"
    assert kept.last_active_at is not None
    assert store.get(free).state == "ready"  # type: ignore[union-attr]
    assert quiet not in watcher.samples  # a stopped sandbox is no longer watched
    assert [e.type for e in store.events(sandbox_id=quiet)][-1] == "sandbox.stopped"


def _age(store: Store, ids: list[str], when: Any) -> None:
    """Move the sandboxes' last change back to ``when``, as if ready since then."""
    from sandboxer.store.sqlite import SqliteStore

    assert isinstance(store, SqliteStore)
    with store._write() as c:
        for sid in ids:
            c.execute("UPDATE sandboxes SET updated_at = ? WHERE id = ?",
                      (when.timestamp(), sid))


def test_the_last_activity_only_moves_forward(settings: Settings) -> None:
    settings.ensure()
    store = open_store(settings)
    sid = _add(store, "quiet")
    now = utcnow()
    store.set_last_active(sid, now)
    store.set_last_active(sid, now - timedelta(minutes=1))
    got = store.get(sid)
    assert got is not None
    assert got.last_active_at is not None
    assert abs((got.last_active_at - now).total_seconds()) < 1e-3
