"""sandboxer.snapshots through the manager: snapshot, get, list, delete, create from a
snapshot, fork, the snapshot reaper and reconcile, on the test-only extension's doubles
(tests/fixtures/fake_ext), on both store backends."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sandboxer_fake_ext import RECEIVED, FakeExtension
from tests.canary_support import leaks
from tests.pg_support import Database

from sandboxer.access import Caller
from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    DestroyFailed,
    InvalidInput,
    ProvisionFailed,
    SandboxNotFound,
    SnapshotNotFound,
)
from sandboxer.extensions.base import Snapshots
from sandboxer.manager import Manager
from sandboxer.models.common import utcnow

CANARY = "snapshot-canary-51c0de"


@pytest.fixture
def settings(database: Database, home: Path, profiles_dir: Path) -> Settings:
    return Settings.from_env()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def add_profile(d: Path, name: str, body: str, extension: str = "ext.fake") -> None:
    (d / f"{name}.yaml").write_text(f"id: profile.{name}\nextension: {extension}\n{body}")


def snapdir(settings: Settings, snapshot_id: str) -> Path:
    return settings.home / "fake-snapshots" / snapshot_id


def types(m: Manager, sid: str) -> list[str]:
    return [e.type for e in m.store.events(sandbox_id=sid)]


def without_snapshots(m: Manager) -> None:
    """Make the manager's ext.fake one without the Snapshots capability."""
    snapshot_members = {"snapshottable", "snapshot", "delete_snapshot", "owned_snapshots"}
    attrs = {k: v for k, v in vars(FakeExtension).items()
             if k not in snapshot_members | {"__dict__", "__weakref__", "_abc_impl",
                                             "__abstractmethods__"}}
    plain = type("NoSnapshots", tuple(b for b in FakeExtension.__bases__
                                      if b is not Snapshots), attrs)
    host = m.extension("ext.fake").host
    m._extensions["ext.fake"] = plain(m.settings, host)
    assert not isinstance(m.extension("ext.fake"), Snapshots)


def test_a_snapshot_of_a_ready_sandbox_is_recorded_with_its_event(settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake", actor="agt"))
    (settings.home / "fake" / s.id / "work.txt").write_text("the agent's work")
    seen: list[str] = []
    snap = run(m.snapshot(s.id, name="before", progress=seen.append))
    assert (snap.state, snap.name, snap.sandbox_id, snap.profile, snap.extension,
            snap.target, snap.actor) == ("ready", "before", s.id, "profile.fake", "ext.fake",
                                         "fake-1", "agt")
    assert snap.id.startswith("snap-")
    assert snap.size_bytes == len("the agent's work") + len("[]")  # work.txt + forward
    assert snap.content_hash is not None
    assert snap.content_hash.startswith("sha256:")
    assert snap.expires_at - snap.created_at == timedelta(days=7)  # the default retain
    assert any("copying" in line for line in seen)
    assert m.get(s.id).state == "ready"  # left as it was
    assert (snapdir(settings, snap.id) / "data" / "work.txt").read_text() == "the agent's work"
    assert types(m, s.id)[-1] == "snapshot.created"
    (event,) = [e for e in m.store.events() if e.type == "snapshot.created"]
    assert event.payload == snap.document()
    assert m.get_snapshot(snap.id) == snap
    assert m.list_snapshots() == [snap]
    assert m.list_snapshots(sandbox_id=s.id) == [snap]
    assert m.list_snapshots(sandbox_id="sbx-aaaaaaaaaa") == []


def test_stopped_and_paused_sandboxes_stay_so_and_other_states_conflict(
        settings: Settings) -> None:
    m = Manager(settings)
    a = run(m.create("profile.fake"))
    b = run(m.create("profile.fake"))
    run(m.stop(a.id))
    run(m.pause(b.id))
    assert run(m.snapshot(a.id)).state == "ready"
    assert run(m.snapshot(b.id)).state == "ready"
    assert (m.get(a.id).state, m.get(b.id).state) == ("stopped", "paused")
    assert (settings.home / "fake" / b.id / "state").read_text() == "paused"
    run(m.destroy(a.id))
    with pytest.raises(Conflict, match="it is destroyed; only a ready, stopped or paused"):
        run(m.snapshot(a.id))
    with pytest.raises(SandboxNotFound):
        run(m.snapshot("sbx-aaaaaaaaaa"))


def test_what_an_extension_cannot_do_is_invalid_input(settings: Settings,
                                                       profiles_dir: Path) -> None:
    add_profile(profiles_dir, "stubborn", "spec: {refuse: snapshot}\n")
    m = Manager(settings)
    s = run(m.create("profile.stubborn"))
    with pytest.raises(InvalidInput, match=r"ext\.fake says: this fake sandbox refuses"):
        run(m.snapshot(s.id))
    ok = run(m.create("profile.fake"))
    snap = run(m.snapshot(ok.id))
    without_snapshots(m)
    with pytest.raises(InvalidInput, match=r"its extension ext\.fake cannot snapshot") as e:
        run(m.snapshot(ok.id))
    assert e.value.exit_code == 4
    with pytest.raises(InvalidInput, match="cannot snapshot sandboxes"):
        run(m.create("profile.fake", from_snapshot=snap.id))
    with pytest.raises(InvalidInput, match="cannot snapshot sandboxes"):
        run(m.fork(ok.id))
    assert len(m.store.query_snapshots()) == 1  # nothing recorded for the refusals


def test_retention_comes_from_the_profile_and_retain_stays_within_max(
        settings: Settings, profiles_dir: Path) -> None:
    add_profile(profiles_dir, "short", "snapshot: {retain: 1h, max: 2h}\n")
    m = Manager(settings)
    s = run(m.create("profile.short"))
    assert run(m.snapshot(s.id)).expires_at - utcnow() <= timedelta(hours=1)
    kept = run(m.snapshot(s.id, retain="90m"))
    assert kept.expires_at - kept.created_at == timedelta(minutes=90)
    with pytest.raises(InvalidInput, match=r"--retain 3h exceeds profile.short's "
                       r"snapshot.max \(2h\)"):
        run(m.snapshot(s.id, retain="3h"))
    for bad in ("soon", "0s"):
        with pytest.raises(InvalidInput, match="--retain"):
            run(m.snapshot(s.id, retain=bad))
    with pytest.raises(InvalidInput, match="name"):
        run(m.snapshot(s.id, name="two\nlines"))
    assert len(m.store.query_snapshots()) == 2


def test_other_actors_snapshots_answer_not_found(settings: Settings) -> None:
    m = Manager(settings)
    mine = run(m.create("profile.fake", actor="agt"))
    theirs = run(m.create("profile.fake", actor="bob"))
    agt, bob = Caller(actor="agt"), Caller(actor="bob")
    snap = run(m.snapshot(mine.id, caller=agt))
    other = run(m.snapshot(theirs.id, caller=bob))
    with pytest.raises(SandboxNotFound):
        run(m.snapshot(mine.id, caller=bob))
    with pytest.raises(SnapshotNotFound, match=f"no snapshot with id '{snap.id}'") as e:
        m.get_snapshot(snap.id, caller=bob)
    assert e.value.exit_code == 3
    with pytest.raises(SnapshotNotFound):
        run(m.delete_snapshot(snap.id, caller=bob))
    with pytest.raises(SnapshotNotFound):
        run(m.create("profile.fake", from_snapshot=snap.id, caller=bob))
    assert m.list_snapshots(caller=bob) == [other]
    assert m.list_snapshots(caller=agt, sandbox_id=theirs.id) == []
    assert m.list_snapshots(caller=Caller(actor="root", admin=True)) == [snap, other]
    assert m.get_snapshot(snap.id, caller=agt) == snap


def test_a_failed_snapshot_is_recorded_and_leaves_nothing(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    monkeypatch.setenv("FAKE_SNAPSHOT_FAIL", "1")
    m = Manager(Settings.from_env())
    with pytest.raises(ProvisionFailed, match="could not be recorded") as e:
        run(m.snapshot(s.id))
    assert e.value.exit_code == 5
    (failed,) = m.store.query_snapshots()
    assert (failed.state, failed.reason) == ("failed", "snapshot_failed")
    assert "could not be recorded" in (failed.error or "")
    assert types(m, s.id)[-1] == "snapshot.failed"
    assert not (settings.home / "fake-snapshots").exists()
    assert m.list_snapshots() == []  # a failed one holds nothing
    assert m.list_snapshots(all_states=True) == [failed]
    assert run(m.delete_snapshot(failed.id)) == failed  # final: unchanged
    assert m.get(s.id).state == "ready"


def test_delete_is_idempotent_and_a_failed_delete_is_retried(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    snap = run(m.snapshot(s.id))
    monkeypatch.setenv("FAKE_SNAPSHOT_DELETE_FAIL", "1")
    broken = Manager(Settings.from_env())
    with pytest.raises(DestroyFailed, match=f"deleting snapshot {snap.id} failed"):
        run(broken.delete_snapshot(snap.id))
    stuck = m.get_snapshot(snap.id)
    assert stuck.state == "deleting"
    assert (stuck.error or "").startswith("delete failed:")
    assert snapdir(settings, snap.id).exists()
    monkeypatch.delenv("FAKE_SNAPSHOT_DELETE_FAIL")
    gone = run(m.delete_snapshot(snap.id))
    assert (gone.state, gone.reason, gone.error) == ("deleted", "deleted", None)
    assert not snapdir(settings, snap.id).exists()
    assert run(m.delete_snapshot(snap.id)) == gone
    assert types(m, s.id)[-2:] == ["snapshot.created", "snapshot.deleted"]
    assert m.list_snapshots() == []
    with pytest.raises(Conflict, match="only a ready snapshot"):
        run(m.create("profile.fake", from_snapshot=snap.id))


def test_a_sandbox_created_from_a_snapshot_has_its_data_and_outlives_it(
        settings: Settings, profiles_dir: Path) -> None:
    add_profile(profiles_dir, "web", "reachability: {forward: [8080, 3000]}\n")
    m = Manager(settings)
    s = run(m.create("profile.web"))
    (settings.home / "fake" / s.id / "work.txt").write_text("v1")
    snap = run(m.snapshot(s.id))
    (settings.home / "fake" / s.id / "work.txt").write_text("v2")  # after the snapshot
    new = run(m.create("profile.web", from_snapshot=snap.id, name="again"))
    d = settings.home / "fake" / new.id
    assert (new.state, new.snapshot, new.target, new.name) == ("ready", snap.id, "fake-1",
                                                               "again")
    assert (d / "work.txt").read_text() == "v1"
    assert (d / "from_snapshot").read_text() == snap.id
    assert json.loads((d / "forward").read_text()) == [3000, 8080]  # ProvisionRequest.forward
    assert m.store.get_document(new.id)["snapshot"] == snap.id  # type: ignore[index]
    run(m.delete_snapshot(snap.id))
    assert (d / "work.txt").read_text() == "v1"  # never depends on the snapshot
    assert m.get(new.id).state == "ready"


def test_from_a_snapshot_the_extension_and_target_are_the_snapshots(
        settings: Settings, profiles_dir: Path) -> None:
    add_profile(profiles_dir, "elsewhere", "spec: {}\n", extension="ext.local")
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    snap = run(m.snapshot(s.id))
    with pytest.raises(InvalidInput, match=r"the profile's extension is ext\.local, the "
                       r"snapshot's ext\.fake") as e:
        run(m.create("profile.elsewhere", from_snapshot=snap.id))
    assert "profile.fake" in str(e.value.hint)
    with pytest.raises(InvalidInput, match="is placed on its target fake-1, not fake-2"):
        run(m.create("profile.fake", from_snapshot=snap.id, target="fake-2"))
    assert run(m.create("profile.fake", from_snapshot=snap.id, target="fake-1")).target == \
        "fake-1"
    with pytest.raises(SnapshotNotFound):
        run(m.create("profile.fake", from_snapshot="snap-aaaaaaaaaa"))


def test_a_fork_binds_a_new_lease_and_secrets_and_no_snapshot_holds_a_secret(
        settings: Settings, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_profile(profiles_dir, "sec", "ttl: {default: 1h, max: 4h}\nlabels: {tier: t}\n"
                "setup:\n  secret_refs: [{name: TOKEN, ref: 'env:SNAP_TOKEN'}]\n")
    monkeypatch.setenv("SNAP_TOKEN", CANARY)
    m = Manager(Settings.from_env())
    s = run(m.create("profile.sec", actor="agt", labels={"run": "1"}))
    (settings.home / "fake" / s.id / "work.txt").write_text("progress")
    monkeypatch.setenv("SNAP_TOKEN", CANARY + "-again")
    m = Manager(Settings.from_env())
    fork = run(m.fork(s.id, ttl="2h", labels={"branch": "b"}, name="try-b",
                      caller=Caller(actor="agt")))
    assert fork.id != s.id
    assert (fork.state, fork.actor, fork.name, fork.profile) == ("ready", "agt", "try-b",
                                                                 "profile.sec")
    assert fork.labels == {"tier": "t", "run": "1", "branch": "b"}
    assert fork.expires_at - fork.created_at == timedelta(hours=2)  # a lease of its own
    assert (settings.home / "fake" / fork.id / "work.txt").read_text() == "progress"
    assert RECEIVED[fork.id] == {"TOKEN": CANARY + "-again"}  # resolved again
    assert fork.snapshot is not None
    snap = m.get_snapshot(fork.snapshot)
    assert (snap.sandbox_id, snap.state) == (s.id, "ready")
    assert m.get(s.id).state == "ready"
    # No snapshot, record or event holds a secret value.
    rec = m.store.get_snapshot_record(snap.id)
    stored = json.dumps([rec.artifact if rec else None, snap.document(),
                         [e.payload for e in m.store.events()]])
    assert CANARY not in stored
    assert leaks([CANARY], [settings.home / "fake-snapshots"]) == []
    with pytest.raises(InvalidInput, match="name"):  # checked before anything is taken
        run(m.fork(s.id, name="\x1b[31mred"))
    assert len(m.store.query_snapshots()) == 1


def test_the_reaper_deletes_expired_snapshots_and_gives_up_abandoned_ones(
        settings: Settings) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake"))
    old = run(m.snapshot(s.id))
    kept = run(m.snapshot(s.id))
    m.store.snapshot_transition(old.id, from_states={"ready"}, to_state="ready", event=None,
                                expires_at=utcnow() - timedelta(seconds=1))
    assert run(m.reap()) == []  # no sandbox was due
    gone = m.get_snapshot(old.id)
    assert (gone.state, gone.reason) == ("deleted", "expired")
    assert not snapdir(settings, old.id).exists()
    assert m.get_snapshot(kept.id).state == "ready"
    assert types(m, s.id)[-1] == "snapshot.deleted"
    # A snapshot whose process died: given up once stale, its leftovers swept by reconcile.
    from sandboxer import snapshots
    from sandboxer.models.snapshot import SnapshotStatus

    now = utcnow()
    lost = SnapshotStatus(id="snap-bbbbbbbbbb", sandbox_id=s.id, profile=s.profile,
                          extension="ext.fake", target="fake-1", state="creating",
                          created_at=now, expires_at=now + timedelta(days=1))
    m.store.insert_snapshot(lost)
    left = snapdir(settings, lost.id)
    (left / "data").mkdir(parents=True)
    (left / "label").write_text(json.dumps({"sandboxer.snapshot": lost.id,
                                            "target": "fake-1"}))
    run(m.reconcile())
    assert left.exists()  # claimed while it is being recorded
    run(snapshots.reap(m, now=now + timedelta(hours=1)))
    failed = m.get_snapshot(lost.id)
    assert (failed.state, failed.reason) == ("failed", "abandoned")
    run(m.reconcile())
    assert not left.exists()
    assert snapdir(settings, kept.id).exists()  # a ready one is claimed
