from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.errors import Conflict, NoTarget, SandboxNotFound
from sandboxer.models.common import new_sandbox_id, utcnow
from sandboxer.models.sandbox import SandboxStatus
from sandboxer.store.migrations import LATEST
from sandboxer.store.sqlite import SqliteStore


def status(state: str = "ready", **kw: object) -> SandboxStatus:
    now = utcnow()
    fields: dict[str, object] = {
        "id": new_sandbox_id(), "profile": "profile.fake", "extension": "ext.fake",
        "target": "fake-1", "state": state, "labels": {"a": "1"}, "created_at": now,
        "expires_at": now + timedelta(hours=1),
    }
    fields.update(kw)
    return SandboxStatus.model_validate(fields)


def test_migrates_to_latest_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    assert store.schema_version() == LATEST
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"sandboxes_state_expires", "sandboxes_expires"} <= indexes
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0
    SqliteStore(tmp_path / "state.db")  # reopening an up-to-date store is a no-op
    assert store.schema_version() == LATEST


def test_insert_writes_event_in_same_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    s = status("provisioning")
    store.insert(s, max_expires_at=s.created_at + timedelta(hours=2))
    events = store.events()
    assert [e.type for e in events] == ["sandbox.created"]
    assert events[0].payload["id"] == s.id
    assert events[0].payload["schema"] == "sandboxer.sandbox/v1"


def test_transition_checks_state_and_appends_event(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    s = status("provisioning")
    store.insert(s, max_expires_at=s.created_at + timedelta(hours=2))
    ready = store.transition(s.id, from_states={"provisioning"}, to_state="ready",
                             event="sandbox.ready")
    assert ready.state == "ready"
    with pytest.raises(Conflict, match="is ready"):
        store.transition(s.id, from_states={"provisioning"}, to_state="failed",
                         event="sandbox.failed")
    assert [e.type for e in store.events()] == ["sandbox.created", "sandbox.ready"]
    with pytest.raises(SandboxNotFound):
        store.transition("sbx-aaaaaaaaaa", from_states={"ready"}, to_state="ready", event=None)


def test_query_filters(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    a = status(labels={"team": "x"}, actor="agt")
    b = status(state="destroyed", labels={"team": "y"})
    for s in (a, b):
        store.insert(s, max_expires_at=s.expires_at)
    assert [s.id for s in store.query(labels={"team": "x"})] == [a.id]
    assert [s.id for s in store.query(states=["destroyed"])] == [b.id]
    assert [s.id for s in store.query(actor="agt")] == [a.id]
    assert store.query(labels={"team": "x'; DROP TABLE sandboxes; --"}) == []
    assert store.count() == 2


def test_reapable_finds_expired_ready_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    now = utcnow()
    old = status(expires_at=now - timedelta(seconds=1))
    fresh = status()
    gone = status(state="destroyed", expires_at=now - timedelta(hours=1))
    for s in (old, fresh, gone):
        store.insert(s, max_expires_at=s.expires_at)
    assert [c.id for c in store.reapable(now)] == [old.id]
    assert store.has_reapable(now)


def _writer(db: str, sandbox_id: str, n: int) -> None:
    store = SqliteStore(Path(db))
    for _ in range(n):
        rec = store.get_record(sandbox_id)
        assert rec is not None
        store.transition(sandbox_id, from_states={"ready"}, to_state="ready",
                         event="sandbox.extended",
                         expires_at=rec.status.expires_at + timedelta(seconds=1))


def _creator(db: str, n: int) -> None:
    store = SqliteStore(Path(db))
    for _ in range(n):
        s = status()
        store.insert(s, max_expires_at=s.expires_at)


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SqliteStore(db)
    s = status()
    store.insert(s, max_expires_at=s.expires_at)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), s.id, 40)) for _ in range(4)]
    procs += [ctx.Process(target=_creator, args=(str(db), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    rec = store.get_record(s.id)
    assert rec is not None
    assert rec.version == 1 + 4 * 40  # every transition counted exactly once
    assert store.count() == 1 + 4 * 40
    types = [e.type for e in store.events(limit=10_000)]
    assert types.count("sandbox.extended") == 160
    assert types.count("sandbox.created") == 161


def test_payload_never_contains_handle(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    s = status("provisioning")
    store.insert(s, max_expires_at=s.expires_at)
    store.set_handle(s.id, {"sandbox_id": s.id, "extension": "ext.fake", "data": {"x": 1}})
    store.transition(s.id, from_states={"provisioning"}, to_state="ready", event="sandbox.ready")
    for e in store.events():
        assert "handle" not in json.dumps(e.payload)


def test_live_count_is_per_extension(settings: Settings) -> None:
    """ext.local's target `local` is not ext.compose-ssh's `local`: neither fills the other."""
    from sandboxer.manager import Manager
    from sandboxer.store import open_store

    settings.ensure()
    store = open_store(settings)
    for _ in range(3):
        s = status(extension="ext.local", target="local", profile="profile.local")
        store.insert(s, max_expires_at=s.expires_at)
    assert store.live_count("local", "ext.local") == 3
    assert store.live_count("local", "ext.compose-ssh") == 0
    ext = Manager(settings, store=store).extension("ext.compose-ssh")
    (local,) = [t for t in ext.targets(settings) if t.name == "local"]
    assert local.used == 0


def test_capacity_is_reserved_with_the_insert(tmp_path: Path) -> None:
    """Eight threads, each with its own connection, race for one slot: exactly one wins,
    the others get NoTarget (exit 6) and write nothing; other targets are not counted."""
    db = tmp_path / "s.db"
    SqliteStore(db).insert(status(target="other"), max_expires_at=utcnow() + timedelta(1))
    start = threading.Barrier(8)
    won: list[str] = []
    lost: list[NoTarget] = []

    def create() -> None:
        store = SqliteStore(db)
        s = status("provisioning", target="cap1")
        start.wait()
        try:
            store.insert(s, max_expires_at=s.expires_at, capacity=1)
            won.append(s.id)
        except NoTarget as e:
            lost.append(e)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store = SqliteStore(db)
    assert len(won) == 1
    assert len(lost) == 7
    assert "cap1" in lost[0].message
    assert lost[0].exit_code == 6
    assert store.live_count("cap1", "ext.fake") == 1
    assert [e.payload["id"] for e in store.events() if e.payload["target"] == "cap1"] == won
    # A slot freed by a destroyed sandbox is free again; a failed one takes none.
    store.transition(won[0], from_states={"provisioning"}, to_state="failed", event=None)
    s = status("provisioning", target="cap1")
    store.insert(s, max_expires_at=s.expires_at, capacity=1)
    t = status("provisioning", target="cap1")
    with pytest.raises(NoTarget, match=r"full \(1/1"):
        store.insert(t, max_expires_at=t.expires_at, capacity=1)


def test_migration_4_moves_target_columns_into_the_config_document(tmp_path: Path) -> None:
    from sandboxer.store.migrations import MIGRATIONS

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for version, script in MIGRATIONS:
        if version > 3:
            break
        for stmt in script.split(";"):
            if stmt.strip():
                conn.execute(stmt)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO targets (name, extension, url, identity_file, public_host, capacity, "
        "kind, host_keys, allow, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("h1", "ext.compose-ssh", "ssh://u@h:2200", "/k", "pub", 3, "cloud",
         json.dumps(["[h]:2200 ssh-ed25519 AAAA"]), json.dumps(["devices"]), 1700000000.0))
    conn.execute(
        "INSERT INTO targets (name, extension, url, created_at) VALUES (?, ?, ?, ?)",
        ("h2", "ext.compose-ssh", "ssh://u@h2", 1700000001.0))
    conn.close()
    store = SqliteStore(db)
    assert store.schema_version() == LATEST
    h1, h2 = store.list_targets()
    assert (h1.name, h1.extension, h1.created_at.timestamp() if h1.created_at else None) == (
        "h1", "ext.compose-ssh", 1700000000.0)
    assert h1.config == {"url": "ssh://u@h:2200", "identity_file": "/k", "public_host": "pub",
                         "capacity": 3, "kind": "cloud",
                         "host_keys": ["[h]:2200 ssh-ed25519 AAAA"], "allow": ["devices"]}
    assert h2.config == {"url": "ssh://u@h2", "identity_file": None, "public_host": None,
                         "capacity": None, "kind": "self-hosted", "host_keys": [], "allow": []}
