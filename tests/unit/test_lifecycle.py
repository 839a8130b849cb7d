"""sandboxer.lifecycle through the manager: stop, start, pause, resume and rebind on the
test-only extension's doubles (tests/fixtures/fake_ext), on both store backends."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sandboxer_fake_ext import RECEIVED
from tests.pg_support import Database

from sandboxer.access import Caller
from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    InvalidInput,
    ProvisionFailed,
    SandboxNotFound,
    SecretNotFound,
)
from sandboxer.manager import Manager
from sandboxer.models.common import utcnow

CANARY = "lifecycle-canary-9f3a7c"


@pytest.fixture
def settings(database: Database, home: Path, profiles_dir: Path) -> Settings:
    return Settings.from_env()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def add_profile(d: Path, name: str, body: str) -> None:
    (d / f"{name}.yaml").write_text(f"id: profile.{name}\nextension: ext.fake\n{body}")


def fake_state(settings: Settings, sid: str) -> str:
    return (settings.home / "fake" / sid / "state").read_text()


def events(m: Manager, sid: str) -> list[str]:
    return [e.type for e in m.store.events(sandbox_id=sid)]


def test_stop_start_pause_resume_walk_the_machine_with_events(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake", actor="agt"))
    reach = s.reachability
    stopped = run(m.stop(s.id))
    assert (stopped.state, stopped.reason) == ("stopped", "stopped")
    assert fake_state(settings, s.id) == "stopped"
    assert m.store.get_record(s.id).handle["data"]["stops"] == 1  # the returned handle
    with pytest.raises(Conflict) as e:
        m.reachability(s.id)
    assert e.value.hint is not None
    assert f"sandboxer start {s.id}" in e.value.hint
    started = run(m.start(s.id))
    assert (started.state, started.reason, started.error) == ("ready", None, None)
    assert started.reachability == reach
    assert fake_state(settings, s.id) == "running"
    paused = run(m.pause(s.id, reason="idle", detail="no session for 30m"))
    assert (paused.state, paused.reason) == ("paused", "idle: no session for 30m")
    assert fake_state(settings, s.id) == "paused"
    with pytest.raises(Conflict, match="paused") as e:
        m.reachability(s.id)
    assert f"sandboxer resume {s.id}" in str(e.value.hint)
    resumed = run(m.resume(s.id))
    assert (resumed.state, resumed.reason) == ("ready", None)
    run(m.pause(s.id))
    assert run(m.stop(s.id)).state == "stopped"  # paused -> stopped
    assert events(m, s.id) == [
        "sandbox.created", "sandbox.ready", "sandbox.stopped", "sandbox.started",
        "sandbox.paused", "sandbox.resumed", "sandbox.paused", "sandbox.stopped"]
    stopped_event = m.store.events(sandbox_id=s.id)[2]
    assert stopped_event.payload["state"] == "stopped"


def test_end_state_reached_already_is_unchanged_and_wrong_states_conflict(
        settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    assert run(m.start(s.id)).state == "ready"  # ready already: unchanged, no event
    assert run(m.resume(s.id)).state == "ready"
    run(m.stop(s.id))
    assert run(m.stop(s.id)).state == "stopped"
    with pytest.raises(Conflict, match=r"cannot pause .* it is stopped") as e:
        run(m.pause(s.id))
    assert "sandboxer start" in str(e.value.hint)
    with pytest.raises(Conflict, match="cannot resume"):
        run(m.resume(s.id))
    run(m.start(s.id))
    run(m.pause(s.id))
    assert run(m.pause(s.id)).state == "paused"
    with pytest.raises(Conflict, match=r"cannot start .* it is paused") as e:
        run(m.start(s.id))
    assert "sandboxer resume" in str(e.value.hint)
    assert events(m, s.id).count("sandbox.stopped") == 1
    run(m.destroy(s.id))
    for op in (m.stop, m.start, m.pause, m.resume):
        with pytest.raises(Conflict, match="destroyed"):
            run(op(s.id))
    assert e.value.exit_code == 8


def test_an_extension_that_refuses_or_cannot_is_invalid_input(
        settings: Settings, profiles_dir: Path) -> None:
    add_profile(profiles_dir, "nostop", "spec: {refuse: stop}\n")
    add_profile(profiles_dir, "nopause", "spec: {refuse: pause}\n")
    m = Manager(settings)
    a = run(m.create("profile.nostop"))
    with pytest.raises(InvalidInput, match=r"ext\.fake says: this fake sandbox refuses to stop"):
        run(m.stop(a.id))
    assert run(m.pause(a.id)).state == "paused"
    b = run(m.create("profile.nopause"))
    with pytest.raises(InvalidInput, match="refuses to pause") as e:
        run(m.pause(b.id))
    assert e.value.exit_code == 4
    assert m.get(b.id).state == "ready"
    from sandboxer_fake_ext import FakeExtension

    from sandboxer.extensions.base import Extension

    # The fake's methods on a class with none of the capabilities.
    plain = type("Plain", (Extension,), {k: v for k, v in vars(FakeExtension).items()
                                         if not k.startswith("__")})
    m._extensions["ext.fake"] = plain(settings, m.extension("ext.fake").host)
    with pytest.raises(InvalidInput, match=r"its extension ext\.fake cannot stop and start"):
        run(m.stop(b.id))
    with pytest.raises(InvalidInput, match="cannot pause and resume"):
        run(m.pause(b.id))


def test_other_actors_sandboxes_answer_not_found(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake", actor="agt"))
    other = Caller(actor="eve")
    for op in (m.stop, m.start, m.pause, m.resume):
        with pytest.raises(SandboxNotFound):
            run(op(s.id, caller=other))
    assert run(m.stop(s.id, caller=Caller(actor="agt"))).state == "stopped"
    assert run(m.start(s.id, caller=Caller(actor="root", admin=True))).state == "ready"


def test_start_resolves_secrets_again_and_a_failing_ref_keeps_it_stopped(
        settings: Settings, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_profile(profiles_dir, "sec", "setup:\n  env: {MODE: dev}\n"
                "  secret_refs: [{name: TOKEN, ref: 'env:LIFE_TOKEN'}]\n")
    monkeypatch.setenv("LIFE_TOKEN", CANARY)
    m = Manager(Settings.from_env())
    s = run(m.create("profile.sec"))
    run(m.stop(s.id))
    assert s.id not in RECEIVED
    monkeypatch.setenv("LIFE_TOKEN", CANARY + "-2")
    m = Manager(Settings.from_env())
    run(m.start(s.id))
    assert RECEIVED[s.id] == {"TOKEN": CANARY + "-2"}
    bound = json.loads((settings.home / "fake" / s.id / "bound").read_text())
    assert bound == {"env": ["MODE"], "secrets": ["TOKEN"]}
    run(m.stop(s.id))
    monkeypatch.delenv("LIFE_TOKEN")
    m = Manager(Settings.from_env())
    with pytest.raises(SecretNotFound, match="TOKEN") as e:
        run(m.start(s.id))
    assert e.value.exit_code == 7
    assert "stays stopped" in str(e.value.hint)
    assert m.get(s.id).state == "stopped"
    docs = json.dumps([m.store.get_document(s.id), [x.payload for x in m.store.events()]])
    assert CANARY not in docs


def test_a_start_that_fails_stays_stopped_with_the_error(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    run(m.stop(s.id))
    monkeypatch.setenv("FAKE_START_FAIL", "1")
    m = Manager(Settings.from_env())
    with pytest.raises(ProvisionFailed, match="would not boot") as e:
        run(m.start(s.id))
    assert "stays stopped" in str(e.value.hint)
    after = m.get(s.id)
    assert after.state == "stopped"
    assert "would not boot" in (after.error or "")
    monkeypatch.delenv("FAKE_START_FAIL")
    assert run(Manager(Settings.from_env()).start(s.id)).error is None


def test_stopped_and_paused_are_extended_destroyed_and_reaped(settings: Settings) -> None:
    m = Manager(settings)
    a = run(m.create("profile.fake", ttl="10m"))
    b = run(m.create("profile.fake", ttl="10m"))
    run(m.stop(a.id))
    run(m.pause(b.id))
    for sid, state in ((a.id, "stopped"), (b.id, "paused")):
        longer = m.extend(sid, "1h")
        assert longer.state == state
        assert longer.expires_at > utcnow() + timedelta(minutes=50)
    assert run(m.destroy(a.id)).state == "destroyed"
    assert not (settings.home / "fake" / a.id).exists()
    c = run(m.create("profile.fake"))
    run(m.stop(c.id))
    with m.store.transaction():  # the lease ran out while it was stopped or paused
        for sid in (b.id, c.id):
            m.store.transition(sid, from_states={"stopped", "paused"}, to_state=m.get(sid).state,
                               event=None, expires_at=utcnow() - timedelta(seconds=1))
    reaped = run(m.reap())
    assert sorted((r.id, r.state, r.reason) for r in reaped) == sorted(
        [(b.id, "destroyed", "expired"), (c.id, "destroyed", "expired")])


def test_concurrent_starts_boot_once_and_destroy_wins_over_a_stop(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    run(m.stop(s.id))

    async def two_starts() -> list[Any]:
        return await asyncio.gather(m.start(s.id), m.start(s.id))

    assert [x.state for x in run(two_starts())] == ["ready", "ready"]
    assert events(m, s.id).count("sandbox.started") == 1
    assert m.lifecycle_locks == {}

    ext = m.extension("ext.fake")
    asked = ext.stop

    async def stop_then_destroy() -> list[Any]:
        gate, asking = asyncio.Event(), asyncio.Event()

        async def slow_stop(handle: Any) -> Any:
            asking.set()
            await gate.wait()
            return await asked(handle)

        ext.stop = slow_stop  # type: ignore[method-assign]
        stopping = asyncio.ensure_future(m.stop(s.id))
        await asking.wait()  # the stop has read the record and asks the extension
        await m.destroy(s.id)
        gate.set()
        return await asyncio.gather(stopping, return_exceptions=True)

    (outcome,) = run(stop_then_destroy())
    assert isinstance(outcome, Conflict), outcome
    assert "destroyed while it was being stopped" in str(outcome)
    assert m.get(s.id).state == "destroyed"


def test_rebind_binds_again_or_stops_on_a_ref_that_no_longer_resolves(
        settings: Settings, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_profile(profiles_dir, "sec", "setup:\n  secret_refs: [{name: TOKEN, ref: "
                "'env:LIFE_TOKEN'}, {name: OTHER, ref: 'env:LIFE_OTHER'}]\n")
    monkeypatch.setenv("LIFE_TOKEN", CANARY)
    monkeypatch.setenv("LIFE_OTHER", CANARY + "-other")
    m = Manager(Settings.from_env())
    s = run(m.create("profile.sec"))
    RECEIVED.pop(s.id)  # as a restart loses them
    host = m.extension("ext.fake").host
    assert run(host.rebind(s.id)) is True
    assert RECEIVED[s.id] == {"TOKEN": CANARY, "OTHER": CANARY + "-other"}
    assert events(m, s.id)[-1] == "sandbox.restored"
    assert m.get(s.id).state == "ready"
    monkeypatch.delenv("LIFE_OTHER")
    m = Manager(Settings.from_env())
    assert run(m.extension("ext.fake").host.rebind(s.id)) is False
    after = m.get(s.id)
    assert (after.state, after.reason) == ("stopped", "secrets_unresolved")
    assert "OTHER (env ref)" in (after.error or "")
    assert "TOKEN" not in (after.error or "")
    assert fake_state(settings, s.id) == "stopped"
    assert events(m, s.id)[-1] == "sandbox.stopped"
    assert run(m.rebind(s.id)) is True  # stopped: nothing to bind
    text = json.dumps([m.store.get_document(s.id), [x.payload for x in m.store.events()]])
    assert CANARY not in text
    plain = run(m.create("profile.fake"))
    run(m.pause(plain.id))  # an endpoint restoring a paused sandbox binds it first
    assert run(m.rebind(plain.id)) is True
    assert events(m, plain.id)[-1] == "sandbox.restored"
    assert m.get(plain.id).state == "paused"
    with pytest.raises(SandboxNotFound):
        run(m.rebind("sbx-aaaaaaaaaa"))


def test_rebind_stops_a_sandbox_it_could_not_bind(
        settings: Settings, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bind that fails (the extension raised) is no reason to let the sandbox run on
    without its secrets: stopped like a ref that no longer resolves, the value masked."""
    import sandboxer_fake_ext

    add_profile(profiles_dir, "sec", "setup:\n  secret_refs: [{name: TOKEN, ref: "
                "'env:LIFE_TOKEN'}]\n")
    monkeypatch.setenv("LIFE_TOKEN", CANARY)
    m = Manager(Settings.from_env())
    s = run(m.create("profile.sec"))
    RECEIVED.pop(s.id)

    async def broken(self: Any, handle: Any, env: Any, secrets: Any) -> None:
        raise ProvisionFailed(f"fake: the jail would not restart ({CANARY})")

    ext_class = type(m.extension("ext.fake"))
    assert ext_class.__module__ == sandboxer_fake_ext.__name__
    monkeypatch.setattr(ext_class, "bind", broken)
    assert run(m.extension("ext.fake").host.rebind(s.id)) is False
    after = m.get(s.id)
    assert (after.state, after.reason) == ("stopped", "secrets_unresolved")
    assert "binding its secrets again failed: fake: the jail would not restart" in (
        after.error or "")
    assert fake_state(settings, s.id) == "stopped"
    assert "sandbox.restored" not in events(m, s.id)
    text = json.dumps([m.store.get_document(s.id), [x.payload for x in m.store.events()]])
    assert CANARY not in text


def test_rebind_never_records_stopped_what_it_could_not_stop(
        settings: Settings, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox whose secrets are gone and whose stop failed is not recorded ``stopped``
    (it runs): it keeps its state, with reason secrets_unresolved and what to do."""
    add_profile(profiles_dir, "sec", "setup:\n  secret_refs: [{name: TOKEN, ref: "
                "'env:LIFE_TOKEN'}]\n")
    monkeypatch.setenv("LIFE_TOKEN", CANARY)
    m = Manager(Settings.from_env())
    s = run(m.create("profile.sec"))
    monkeypatch.delenv("LIFE_TOKEN")

    async def stuck(self: Any, handle: Any) -> Any:
        raise ProvisionFailed("fake: the stop hung")

    monkeypatch.setattr(type(m.extension("ext.fake")), "stop", stuck)
    m = Manager(Settings.from_env())
    assert run(m.extension("ext.fake").host.rebind(s.id)) is False
    after = m.get(s.id)
    assert (after.state, after.reason) == ("ready", "secrets_unresolved")
    assert "could not be stopped" in (after.error or "")
    assert "sandbox.stopped" not in events(m, s.id)
    assert CANARY not in json.dumps(m.store.get_document(s.id))
