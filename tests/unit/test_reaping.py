"""sandboxer.reaping judges the store's reap candidates against this host's processes."""

from __future__ import annotations

import subprocess
from datetime import timedelta

from sandboxer import creator, reaping
from sandboxer.config import Settings
from sandboxer.models.common import new_sandbox_id, utcnow
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.store import open_store
from sandboxer.store.base import Store


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
