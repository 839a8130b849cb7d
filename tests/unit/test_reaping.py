"""sandboxer.reaping judges the store's reap candidates against this host's processes."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from sandboxer import creator, reaping
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed
from sandboxer.models.common import new_sandbox_id, utcnow
from sandboxer.models.extension import Handle
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.store import open_store
from sandboxer.store.base import Record, Store


def _add(store: Store, state: str, who: str | None, **kw: object) -> str:
    now = utcnow()
    fields: dict[str, object] = {"id": new_sandbox_id(), "profile": "profile.fake",
                                 "extension": "ext.fake", "target": "fake-1", "state": state,
                                 "created_at": now, "expires_at": now + timedelta(hours=1)}
    fields.update(kw)
    s = SandboxStatus.model_validate(fields)
    store.insert(s, max_expires_at=s.expires_at, creator=who)
    return s.id


def test_a_create_is_due_when_its_process_is_gone_or_it_went_silent(settings: Settings) -> None:
    settings.ensure()
    store = open_store(settings)
    now = utcnow()
    child = subprocess.Popen(["sleep", "30"])
    slow = _add(store, "provisioning", creator.current())
    dying = _add(store, "provisioning", creator.of(child.pid))
    ready = _add(store, "ready", None)
    assert reaping.due(store, now) == []
    assert not reaping.any_due(store, now)
    child.kill()
    child.wait()
    assert reaping.due(store, now) == [dying]
    assert reaping.any_due(store, now)
    later = now + timedelta(hours=2)  # silent past stale_after: abandoned, process or not
    assert set(reaping.due(store, later, stale_after=60)) == {slow, dying, ready}
    assert reaping.due(store, now, extension="ext.other") == []


def test_expired_leases_and_stale_destroys_are_due(settings: Settings) -> None:
    settings.ensure()
    store = open_store(settings)
    now = utcnow()
    expired = _add(store, "ready", None, expires_at=now - timedelta(seconds=1))
    destroying = _add(store, "destroying", None)
    assert reaping.due(store, now) == [expired]
    assert reaping.any_due(store, now)
    assert reaping.due(store, now + timedelta(hours=1), stale_after=60)[-1] == destroying


# -- ttl.retain: the two-stage expiry ----------------------------------------------------


def _rec(state: str, *, reason: str | None = None, retain: float | None = 3600.0,
         expires_in: float = -1.0) -> Record:
    now = utcnow()
    s = SandboxStatus.model_validate({
        "id": new_sandbox_id(), "profile": "profile.fake", "extension": "ext.fake",
        "state": state, "reason": reason, "created_at": now - timedelta(hours=1),
        "expires_at": now + timedelta(seconds=expires_in)})
    return Record(status=s, handle=None, max_expires_at=now + timedelta(hours=8),
                  updated_at=now, version=3, retain=retain)


def test_the_end_of_a_lease_with_retain_keeps_the_sandbox_stopped() -> None:
    for state in ("ready", "paused", "stopped"):
        assert reaping.retains(_rec(state)), state
    assert reaping.retains(_rec("stopped", reason="idle: idle for 30m"))
    assert reaping.retains(_rec("stopped", reason="stopped"))


def test_without_retain_or_once_it_ran_out_the_sandbox_is_destroyed() -> None:
    assert not reaping.retains(_rec("ready", retain=None))
    assert not reaping.retains(_rec("unreachable"))  # it cannot be stopped
    ran_out = _rec("stopped", reason="expired: lease ended; kept stopped until …")
    assert reaping.retaining(ran_out.status)
    assert not reaping.retains(ran_out)
    # Its retain was recorded but the stop never finished: destroyed, not kept again.
    assert not reaping.retains(_rec("ready", reason="expired: lease ended; …"))
    assert reaping.seconds(None) is None
    assert reaping.seconds(timedelta(0)) is None
    assert reaping.seconds(timedelta(minutes=2)) == 120.0


def test_a_lease_renewed_meanwhile_is_left_alone_and_extend_leaves_the_retain_stage() -> None:
    now = utcnow()
    assert reaping.lapsed(_rec("ready"), now)
    assert not reaping.lapsed(_rec("ready", expires_in=60), now)
    kept = _rec("stopped", reason="expired: lease ended; …")
    assert reaping.renewal(kept.status) == {"reason": "stopped"}
    assert reaping.renewal(_rec("stopped", reason="idle: …").status) == {}
    assert reaping.renewal(_rec("ready").status) == {}


class _Stops:
    name = "ext.fake"

    def __init__(self, why: str | None = None, fails: bool = False) -> None:
        self.why = why
        self.fails = fails

    def stoppable(self, handle: Handle) -> str | None:
        return self.why


class _Lifecycle:
    """What reaping.retain uses of a Manager."""

    def __init__(self, store: Store, ext: object) -> None:
        self.store = store
        self.ext = ext
        self.calls: list[tuple[str, str, str]] = []

    def extension(self, name: str) -> object:
        return self.ext

    async def stop(self, sid: str, *, reason: str, detail: str | None = None) -> SandboxStatus:
        self.calls.append(("stop", sid, reason))
        if getattr(self.ext, "fails", False):
            raise ProvisionFailed("stopping failed")
        return self.store.transition(sid, from_states={"ready", "paused"}, to_state="stopped",
                                     event="sandbox.stopped", reason=f"{reason}: {detail}")

    async def destroy(self, sid: str, *, reason: str) -> SandboxStatus:
        self.calls.append(("destroy", sid, reason))
        return self.store.transition(sid, from_states={"ready", "paused", "stopped"},
                                     to_state="destroyed", event="sandbox.destroyed",
                                     reason=reason)


def _retain(settings: Settings, ext: object, state: str = "ready"
            ) -> tuple[_Lifecycle, SandboxStatus, list[str]]:
    import asyncio

    settings.ensure()
    store = open_store(settings)
    sid = _add(store, state, None, expires_at=utcnow() - timedelta(seconds=1))
    store.set_handle(sid, Handle(sandbox_id=sid, extension="ext.fake").model_dump(mode="json"))
    manager = _Lifecycle(store, ext)
    rec = store.get_record(sid)
    assert rec is not None
    rec.retain = 120.0
    now = utcnow()
    got = asyncio.run(reaping.retain(manager, rec, now))  # type: ignore[arg-type]
    return manager, got, [e.type for e in store.events(sandbox_id=sid)]


def test_retain_stops_and_says_until_when(settings: Settings,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaping, "_can_stop", lambda ext: True)
    manager, got, events = _retain(settings, _Stops())
    assert [c[0] for c in manager.calls] == ["stop"]
    assert got.state == "stopped"
    assert got.reason is not None
    assert got.reason.startswith("expired: lease ended; kept stopped until ")
    assert "(ttl.retain 2m), then destroyed" in got.reason
    left = (got.expires_at - utcnow()).total_seconds()
    assert 100 < left <= 120
    assert events == ["sandbox.created", "sandbox.stopped"]


def test_a_sandbox_stopped_before_its_lease_ended_enters_the_retain_stage(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaping, "_can_stop", lambda ext: True)
    manager, got, events = _retain(settings, _Stops(), state="stopped")
    assert manager.calls == []
    assert reaping.retaining(got)
    assert got.expires_at > utcnow()
    assert events == ["sandbox.created", "sandbox.stopped"]


def test_retain_falls_back_to_destroy(settings: Settings,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # An extension without StopsAndStarts, one that refuses this sandbox, a failed stop.
    manager, got, _events = _retain(settings, _Stops())
    assert [c[0] for c in manager.calls] == ["destroy"]
    assert got.state == "destroyed"
    monkeypatch.setattr(reaping, "_can_stop", lambda ext: True)
    manager, got, _events = _retain(settings, _Stops(why="it is attached"))
    assert [c[0] for c in manager.calls] == ["destroy"]
    manager, got, _events = _retain(settings, _Stops(fails=True))
    assert [c[0] for c in manager.calls] == ["stop", "destroy"]
    assert (got.state, got.reason) == ("destroyed", "expired")
