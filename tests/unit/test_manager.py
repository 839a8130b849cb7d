from __future__ import annotations

import asyncio
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from tests.pg_support import Database

from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    InvalidInput,
    NoTarget,
    ProfileNotFound,
    ProvisionFailed,
    SandboxNotFound,
    SecretError,
)
from sandboxer.extensions import base as extensions
from sandboxer.manager import Manager
from sandboxer.models.common import utcnow


@pytest.fixture
def settings(database: Database, home: Path, profiles_dir: Path) -> Settings:
    """Every test of the manager runs on both store backends."""
    return Settings.from_env()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def add_profile(d: Path, name: str, body: str) -> None:
    (d / f"{name}.yaml").write_text(f"id: profile.{name}\nextension: ext.fake\n{body}")


def test_test_extension_is_found_through_the_entry_point_group() -> None:
    assert "ext.fake" in extensions.available()
    assert extensions.load("ext.fake").name == "ext.fake"


def test_create_reaches_ready_with_events(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake", labels={"run": "1"}, actor="agt"))
    assert s.state == "ready"
    assert s.actor == "agt"
    assert s.labels == {"tier": "test", "run": "1"}
    assert s.reachability is not None
    assert s.reachability.port == 2222
    assert (s.expires_at - s.created_at) == timedelta(hours=1)
    assert [e.type for e in m.store.events()] == ["sandbox.created", "sandbox.ready"]
    assert (settings.home / "fake" / s.id).is_dir()


@pytest.mark.parametrize("fail_at", ["provision", "ready"])
def test_failed_create_leaves_nothing_and_records_failed(
    settings: Settings, profiles_dir: Path, fail_at: str
) -> None:
    add_profile(profiles_dir, "broken", f"spec: {{fail_at: {fail_at}}}\n")
    m = Manager(settings)
    with pytest.raises(ProvisionFailed, match="fake"):
        run(m.create("profile.broken"))
    (s,) = m.store.query()
    assert s.state == "failed"
    assert s.error is not None
    assert "fake" in s.error
    assert not (settings.home / "fake" / s.id).exists()
    assert [e.type for e in m.store.events()] == ["sandbox.created", "sandbox.failed"]


def test_setup_steps_run_in_order_and_a_failing_step_fails_create(
    settings: Settings, profiles_dir: Path
) -> None:
    add_profile(profiles_dir, "steps",
                "setup:\n  instructions: ['echo one >> log', 'echo two >> log']\n")
    add_profile(profiles_dir, "badstep",
                "setup:\n  instructions: ['true', 'echo boom; exit 3']\n")
    m = Manager(settings)
    s = run(m.create("profile.steps"))
    assert (settings.home / "fake" / s.id / "log").read_text() == "one\ntwo\n"
    with pytest.raises(ProvisionFailed, match=r"setup step 2 of 2 exited 3: boom"):
        run(m.create("profile.badstep"))


def test_bad_input_is_refused_before_anything_is_stored(
    settings: Settings, profiles_dir: Path
) -> None:
    m = Manager(settings)
    with pytest.raises(ProfileNotFound):
        run(m.create("profile.nope"))
    with pytest.raises(InvalidInput, match="duration"):
        run(m.create("profile.fake", ttl="soon"))
    with pytest.raises(InvalidInput, match="exceeds"):
        run(m.create("profile.fake", ttl="3h"))
    with pytest.raises(InvalidInput, match="label"):
        run(m.create("profile.fake", labels={"x": "a;b"}))
    for actor in ("../root", "a" * 65, "agt\x1b[2J", "agt\n", ""):
        with pytest.raises(InvalidInput, match="actor"):
            run(m.create("profile.fake", actor=actor))
    for name in ("x" * 129, "evil\x1b]0;pwned\x07", "two\nlines", "c1\x9bcsi", ""):
        with pytest.raises(InvalidInput, match="name"):
            run(m.create("profile.fake", name=name))
    add_profile(profiles_dir, "badspec", "spec: {colour: red}\n")
    add_profile(profiles_dir, "secret",
                "setup: {secret_refs: [{name: TOKEN, ref: 'bao:kv/x#y'}]}\n")
    m = Manager(settings)
    with pytest.raises(InvalidInput, match=r"spec.colour"):
        run(m.create("profile.badspec"))
    with pytest.raises(SecretError):
        run(m.create("profile.secret"))
    assert m.store.count() == 0
    assert m.store.events() == []


def test_no_target_lists_why(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UNHEALTHY", "1")
    m = Manager(Settings.from_env())
    with pytest.raises(NoTarget, match="fake-1: unhealthy: switched off"):
        run(m.create("profile.fake"))
    with pytest.raises(NoTarget, match="elsewhere: no such target"):
        run(m.create("profile.fake", target="elsewhere"))


def test_capacity_is_reserved_with_the_insert_for_any_extension(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """plan()'s view of a target can be stale (a concurrent create is between its plan and
    its insert): the store still refuses the slot, before the extension provisions
    anything. The manager passes the target's capacity whatever the extension."""
    monkeypatch.setenv("FAKE_CAPACITY", "1")
    m = Manager(Settings.from_env())
    first = run(m.create("profile.fake"))
    stale = m.extension("ext.fake")
    monkeypatch.setattr(type(stale), "targets", lambda self, config: [extensions.Target(
        name="fake-1", extension="ext.fake", capacity=1, used=0)])
    provisioned: list[str] = []
    real = type(stale).provision

    async def spy(self, req, secrets):  # type: ignore[no-untyped-def]
        provisioned.append(req.sandbox_id)
        return await real(self, req, secrets)

    monkeypatch.setattr(type(stale), "provision", spy)
    with pytest.raises(NoTarget, match=r"fake-1 of ext\.fake is full \(1/1") as e:
        run(m.create("profile.fake"))
    assert e.value.exit_code == 6
    assert provisioned == []
    assert [s.id for s in m.store.query()] == [first.id]


def test_extend_up_to_max_from_creation(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    extended = m.extend(s.id, "90m")
    assert extended.expires_at > s.expires_at
    with pytest.raises(InvalidInput, match=r"ttl\.max"):
        m.extend(s.id, "3h")
    assert m.get(s.id).expires_at == extended.expires_at
    with pytest.raises(SandboxNotFound):
        m.extend("sbx-aaaaaaaaaa", "1h")
    for huge in ("999999999d", "36501d"):  # was OverflowError (exit 1, HTTP 500)
        with pytest.raises(InvalidInput, match="at most 36500d"):
            m.extend(s.id, huge)
    types = [e.type for e in m.store.events()]
    assert types.count("sandbox.extended") == 1


def test_destroy_is_idempotent_and_final(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    d = run(m.destroy(s.id))
    assert d.state == "destroyed"
    assert not (settings.home / "fake" / s.id).exists()
    assert run(m.destroy(s.id)).state == "destroyed"
    with pytest.raises(Conflict):
        m.extend(s.id, "1h")
    types = [e.type for e in m.store.events(sandbox_id=s.id)]
    assert types == ["sandbox.created", "sandbox.ready", "sandbox.destroyed"]
    with pytest.raises(SandboxNotFound):
        run(m.destroy("sbx-aaaaaaaaaa"))


def test_reap_destroys_expired_leases(settings: Settings) -> None:
    m = Manager(settings)
    keep = run(m.create("profile.fake"))
    old = run(m.create("profile.fake"))
    m.store.transition(old.id, from_states={"ready"}, to_state="ready", event=None,
                       expires_at=utcnow() - timedelta(seconds=1))
    reaped = run(m.reap())
    assert [r.id for r in reaped] == [old.id]
    assert m.get(old.id).state == "destroyed"
    assert m.get(old.id).reason == "expired"
    assert m.get(keep.id).state == "ready"
    types = [e.type for e in m.store.events(sandbox_id=old.id)]
    assert types[-2:] == ["sandbox.expired", "sandbox.destroyed"]


def test_reconcile_destroys_orphans_only(settings: Settings) -> None:
    m = Manager(settings)
    live = run(m.create("profile.fake"))
    orphan = settings.home / "fake" / "sbx-orphan0000"
    orphan.mkdir()
    removed = run(m.reconcile())
    assert [h.sandbox_id for h in removed] == ["sbx-orphan0000"]
    assert not orphan.exists()
    assert (settings.home / "fake" / live.id).exists()


def test_destroy_while_provisioning_wins(settings: Settings) -> None:
    m = Manager(settings)
    original = m.store.transition

    def racing_transition(sid: str, **kw):  # type: ignore[no-untyped-def]
        if kw.get("to_state") == "ready":  # another process destroys it just before ready
            other = threading.Thread(target=lambda: asyncio.run(Manager(settings).destroy(sid)))
            other.start()
            other.join()
        return original(sid, **kw)

    m.store.transition = racing_transition  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="destroyed while it was provisioning"):
        run(m.create("profile.fake"))
    (s,) = m.store.query(states=["destroyed"])
    assert not (settings.home / "fake" / s.id).exists()


def test_destroy_during_a_setup_step_is_a_conflict(
    settings: Settings, profiles_dir: Path
) -> None:
    """The step fails because its sandbox went away; the create reports why (exit 8)."""
    add_profile(profiles_dir, "slow", "setup:\n  instructions: ['touch marker; for i in "
                "$(seq 200); do [ -e marker ] || exit 7; sleep 0.05; done']\n")
    m = Manager(settings)

    def destroy_when_running() -> None:
        other = Manager(settings)
        for _ in range(200):
            found = other.store.query(states=["provisioning"])
            if found and (settings.home / "fake" / found[0].id / "marker").exists():
                asyncio.run(other.destroy(found[0].id))
                return
            threading.Event().wait(0.02)

    racer = threading.Thread(target=destroy_when_running)
    racer.start()
    try:
        with pytest.raises(Conflict, match="destroyed while it was provisioning"):
            run(m.create("profile.slow"))
    finally:
        racer.join()
    (s,) = m.store.query(states=["destroyed"])
    assert s.error is None


def test_a_create_whose_process_died_is_reaped_at_once(settings: Settings) -> None:
    import subprocess

    from sandboxer import creator
    from sandboxer.models.sandbox import SandboxStatus

    m = Manager(settings)
    child = subprocess.Popen(["sleep", "30"])
    dead = creator.of(child.pid)
    now = utcnow()
    stuck = SandboxStatus(id="sbx-abandoned0", profile="profile.fake", extension="ext.fake",
                          target="fake-1", state="provisioning", created_at=now,
                          expires_at=now + timedelta(hours=1))
    m.store.insert(stuck, max_expires_at=stuck.expires_at, creator=dead)
    (settings.home / "fake" / stuck.id).mkdir(parents=True)
    assert run(m.reap()) == []  # its creator is still running: a slow create, not a dead one
    child.kill()
    child.wait()
    (reaped,) = run(m.reap())
    assert reaped.state == "failed"
    assert reaped.reason == "abandoned"
    assert not (settings.home / "fake" / stuck.id).exists()


def test_reconcile_marks_an_unhealthy_targets_sandboxes_unreachable_and_settles_them_back(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manager(settings)
    kept, lost = run(m.create("profile.fake")), run(m.create("profile.fake"))
    monkeypatch.setenv("FAKE_UNHEALTHY", "1")
    down = Manager(Settings.from_env())
    assert run(down.reconcile()) == []  # an unhealthy target is never swept for orphans
    for s in (kept, lost):
        now = down.get(s.id)
        assert now.state == "unreachable"
        assert now.reason == "target fake-1 is unhealthy: switched off by FAKE_UNHEALTHY"
    assert down.extend(kept.id, "30m").state == "unreachable"
    shutil.rmtree(settings.home / "fake" / lost.id)  # gone behind our back while down
    monkeypatch.delenv("FAKE_UNHEALTHY")
    up = Manager(Settings.from_env())
    run(up.reconcile())
    assert up.get(kept.id).state == "ready"
    assert up.get(kept.id).reason is None
    gone = up.get(lost.id)
    assert (gone.state, gone.reason) == ("failed", "lost")
    assert "gone from target fake-1 while it was unreachable" in (gone.error or "")
    kinds = [e.type for e in up.store.events(sandbox_id=kept.id)]
    assert kinds[-3:] == ["sandbox.unreachable", "sandbox.extended", "sandbox.ready"]
    assert [e.type for e in up.store.events(sandbox_id=lost.id)][-1] == "sandbox.failed"


def test_an_unreachable_sandbox_can_be_destroyed_and_expires(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manager(settings)
    a, b = run(m.create("profile.fake")), run(m.create("profile.fake"))
    monkeypatch.setenv("FAKE_UNHEALTHY", "1")
    down = Manager(Settings.from_env())
    run(down.reconcile())
    assert run(down.destroy(a.id)).state == "destroyed"
    down.store.transition(b.id, from_states={"unreachable"}, to_state="unreachable",
                          event=None, expires_at=utcnow() - timedelta(seconds=1))
    assert [r.id for r in run(down.reap())] == [b.id]
    assert (down.get(b.id).state, down.get(b.id).reason) == ("destroyed", "expired")
    types = [e.type for e in down.store.events(sandbox_id=b.id)]
    assert types[-3:] == ["sandbox.unreachable", "sandbox.expired", "sandbox.destroyed"]
