"""ttl.retain through the manager's reaper, and idle refused at create, on the test-only
extension's doubles (tests/fixtures/fake_ext), on both store backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.pg_support import Database

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput
from sandboxer.manager import Manager
from sandboxer.models.common import utcnow


@pytest.fixture
def settings(database: Database, home: Path, profiles_dir: Path) -> Settings:
    (profiles_dir / "kept.yaml").write_text(
        "id: profile.kept\nextension: ext.fake\nttl: {default: 1h, max: 8h, retain: 2m}\n")
    return Settings.from_env()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _lapse(m: Manager, sid: str) -> None:
    """The lease (or the retain) ran out a second ago."""
    state = m.get(sid).state
    m.store.transition(sid, from_states={state}, to_state=state, event=None,
                       expires_at=utcnow() - timedelta(seconds=1))


def _events(m: Manager, sid: str) -> list[str]:
    return [e.type for e in m.store.events(sandbox_id=sid)]


def test_the_lease_end_stops_then_the_retain_end_destroys(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.kept"))
    assert m.store.get_record(s.id).retain == 120.0  # type: ignore[union-attr]
    _lapse(m, s.id)
    (kept,) = run(m.reap())
    assert kept.state == "stopped"
    assert kept.reason.startswith("expired: lease ended; kept stopped until ")
    assert 100 < (kept.expires_at - utcnow()).total_seconds() <= 120
    assert run(m.reap()) == []  # kept: its retain has not run out
    _lapse(m, s.id)
    (gone,) = run(m.reap())
    assert (gone.state, gone.reason) == ("destroyed", "expired")
    assert _events(m, s.id) == ["sandbox.created", "sandbox.ready", "sandbox.stopped",
                                "sandbox.expired", "sandbox.destroyed"]


def test_extend_renews_a_retained_sandbox_and_start_brings_it_back(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.kept"))
    _lapse(m, s.id)
    run(m.reap())
    renewed = m.extend(s.id, "30m")
    assert (renewed.state, renewed.reason) == ("stopped", "stopped")
    # A renewed lease that ends again starts another retain stage, not a destroy.
    _lapse(m, s.id)
    (again,) = run(m.reap())
    assert (again.state, again.reason.split(":")[0]) == ("stopped", "expired")
    m.extend(s.id, "30m")
    back = run(m.start(s.id))
    assert (back.state, back.reason) == ("ready", None)
    assert back.expires_at > utcnow() + timedelta(minutes=29)


def test_a_sandbox_stopped_or_paused_when_its_lease_ends_is_retained(
        settings: Settings) -> None:
    m = Manager(settings)
    a, b = run(m.create("profile.kept")), run(m.create("profile.kept"))
    run(m.stop(a.id))
    run(m.pause(b.id))
    _lapse(m, a.id)
    _lapse(m, b.id)
    got = {r.id: r for r in run(m.reap())}
    assert {sid: r.state for sid, r in got.items()} == {a.id: "stopped", b.id: "stopped"}
    assert all(r.reason.startswith("expired: lease ended") for r in got.values())
    assert _events(m, a.id)[-2:] == ["sandbox.stopped", "sandbox.stopped"]
    assert _events(m, b.id)[-2:] == ["sandbox.paused", "sandbox.stopped"]


def test_without_retain_the_lease_end_destroys_as_before(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    assert m.store.get_record(s.id).retain is None  # type: ignore[union-attr]
    _lapse(m, s.id)
    (gone,) = run(m.reap())
    assert (gone.state, gone.reason) == ("destroyed", "expired")


def test_an_idle_profile_of_an_extension_that_cannot_report_activity_is_refused(
        settings: Settings, profiles_dir: Path) -> None:
    (profiles_dir / "idle.yaml").write_text(
        "id: profile.idle\nextension: ext.fake\nidle: {after: 30m}\n")
    m = Manager(settings)
    with pytest.raises(InvalidInput, match="cannot report a sandbox's activity"):
        run(m.plan("profile.idle"))
    with pytest.raises(InvalidInput, match="lacks ReportsActivity"):
        run(m.create("profile.idle"))
    assert m.store.count() == 0  # refused before anything was recorded
