"""The store contract (store/base.py): what every backend must do, run against each one.

A backend joins by adding a factory to ``FACTORIES``: given the test's request and its
tmp_path, it returns a ``Backend`` naming a fresh, empty database by its
``SANDBOXER_DATABASE_URL`` (skip there when the machine has no server for it). Every test
opens its stores through ``open_store``, as core does; none looks at the database behind
the protocol's back.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxer.config import Settings
from sandboxer.errors import Conflict, NoTarget, NotFound, SandboxNotFound, SnapshotNotFound
from sandboxer.models.common import new_sandbox_id, utcnow
from sandboxer.models.sandbox import STATES, SandboxStatus
from sandboxer.models.snapshot import SnapshotStatus
from sandboxer.models.target import TargetRecord
from sandboxer.store import open_store
from sandboxer.store.base import KnowsLeaders, Store, TokenRow
from sandboxer.store.outbox import Outbox
from sandboxer.values import LABEL_KEY, LABEL_VALUE, LIVE_STATES, new_snapshot_id

HOUR = timedelta(hours=1)


@dataclass
class Backend:
    """One database of one backend, and a way to open more connections to it."""

    name: str
    url: str
    latest: int
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        """A new store (its own connection) on the same database, through open_store."""
        store = open_store(_settings(self.url))
        self.opened.append(store)
        return store


def _settings(url: str) -> Settings:
    return Settings.from_env({**os.environ, "SANDBOXER_DATABASE_URL": url})


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    from sandboxer.store.migrations import LATEST

    return Backend("sqlite", f"sqlite://{tmp_path / 'contract.db'}", LATEST)


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    from sandboxer.store.postgres.migrations import LATEST

    return Backend("postgres", request.getfixturevalue("pg_url"), LATEST)


FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest, tmp_path: Path, home: Path) -> Iterator[Backend]:
    made = FACTORIES[request.param](request, tmp_path)
    yield made
    for store in made.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def status(state: str = "ready", **kw: Any) -> SandboxStatus:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": new_sandbox_id(), "profile": "profile.fake", "extension": "ext.fake",
        "target": "fake-1", "state": state, "labels": {"a": "1"}, "created_at": now,
        "expires_at": now + HOUR,
    }
    fields.update(kw)
    return SandboxStatus.model_validate(fields)


def add(store: Store, state: str = "ready", **kw: Any) -> SandboxStatus:
    s = status(state, **kw)
    store.insert(s, max_expires_at=s.created_at + 2 * HOUR)
    return s


def types(store: Store, sandbox_id: str | None = None) -> list[str]:
    return [r.type for r in store.event_rows(sandbox_id=sandbox_id, limit=10_000)]


# -- plumbing --------------------------------------------------------------------------


def test_a_new_store_is_migrated_to_the_latest_schema(backend: Backend) -> None:
    assert backend.open().schema_version() == backend.latest
    assert backend.open().schema_version() == backend.latest  # reopening changes nothing


def test_a_transaction_commits_everything_or_nothing(store: Store) -> None:
    with store.transaction():
        a = add(store, "provisioning")
        store.transition(a.id, from_states={"provisioning"}, to_state="ready",
                         event="sandbox.ready")
        assert store.get(a.id) is not None  # reads inside see the transaction's writes
    assert types(store, a.id) == ["sandbox.created", "sandbox.ready"]

    b = status("provisioning")

    def broken() -> None:
        with store.transaction():
            store.insert(b, max_expires_at=b.expires_at)
            store.transition(a.id, from_states={"ready"}, to_state="destroying", event=None)
            store.add_target(TargetRecord(name="t1", extension="ext.fake"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        broken()
    assert store.get(b.id) is None
    assert store.get(a.id).state == "ready"  # type: ignore[union-attr]
    assert store.get_target("t1") is None
    assert types(store) == ["sandbox.created", "sandbox.ready"]


def broken_inner(store: Store) -> None:
    with store.transaction():
        store.add_target(TargetRecord(name="inner", extension="ext.fake"))
        raise RuntimeError("inner")


def test_a_failed_step_inside_a_transaction_undoes_only_itself(store: Store) -> None:
    a = add(store, "ready")
    with store.transaction():
        with pytest.raises(Conflict):
            store.transition(a.id, from_states={"provisioning"}, to_state="failed",
                             event="sandbox.failed")
        with pytest.raises(RuntimeError, match="inner"):
            broken_inner(store)
        store.add_target(TargetRecord(name="outer", extension="ext.fake"))
    assert [t.name for t in store.list_targets()] == ["outer"]
    assert types(store, a.id) == ["sandbox.created"]


def test_other_connections_see_a_transaction_whole_or_not_at_all(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    a = add(writer, "provisioning")
    inside = threading.Event()
    seen: list[tuple[str | None, list[str]]] = []
    done = threading.Event()

    def read() -> None:
        inside.wait(10)
        got = reader.get(a.id)
        seen.append((got.state if got else None, types(reader, a.id)))
        done.set()

    t = threading.Thread(target=read)
    t.start()
    with writer.transaction():
        writer.transition(a.id, from_states={"provisioning"}, to_state="ready",
                          event="sandbox.ready")
        inside.set()
        done.wait(2)  # a backend may make the reader wait for the commit instead
    t.join(10)
    assert seen in ([("provisioning", ["sandbox.created"])],
                    [("ready", ["sandbox.created", "sandbox.ready"])])
    assert types(reader, a.id) == ["sandbox.created", "sandbox.ready"]


# -- sandboxes -------------------------------------------------------------------------


def test_insert_round_trips_and_appends_its_created_event(store: Store) -> None:
    s = status("provisioning", name="web", actor="agt", labels={"team": "x", "b": "2"})
    store.insert(s, max_expires_at=s.created_at + 2 * HOUR, creator="host/boot/1/2")
    assert store.get(s.id) == s
    assert store.get_document(s.id) == s.document()
    rec = store.get_record(s.id)
    assert rec is not None
    assert (rec.status, rec.handle, rec.version) == (s, None, 1)
    assert abs((rec.max_expires_at - (s.created_at + 2 * HOUR)).total_seconds()) < 1e-3
    (row,) = store.event_rows()
    assert (row.type, row.sandbox_id, row.payload) == ("sandbox.created", s.id, s.document())
    assert [c.creator for c in store.reapable(utcnow())] == ["host/boot/1/2"]
    for missing in (store.get, store.get_record, store.get_document):
        assert missing("sbx-aaaaaaaaaa") is None  # type: ignore[operator]


def test_a_duplicate_id_is_refused_and_writes_no_event(store: Store) -> None:
    s = add(store)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the backend's integrity error
        store.insert(s, max_expires_at=s.expires_at)
    assert store.count() == 1
    assert types(store) == ["sandbox.created"]


def test_a_transition_changes_state_fields_and_version_with_its_event(store: Store) -> None:
    s = add(store, "provisioning")
    later = s.expires_at + HOUR
    new = store.transition(s.id, from_states={"provisioning"}, to_state="ready",
                           event="sandbox.ready", reason="because", error="e",
                           expires_at=later, target="fake-2", handle={"k": [1]})
    assert (new.state, new.reason, new.error, new.target) == ("ready", "because", "e",
                                                              "fake-2")
    assert abs((new.expires_at - later).total_seconds()) < 1e-3
    rec = store.get_record(s.id)
    assert rec is not None
    assert (rec.status, rec.handle, rec.version) == (new, {"k": [1]}, 2)
    assert store.event_rows()[-1].payload == new.document()
    store.transition(s.id, from_states={"ready"}, to_state="ready", event=None, error=None)
    assert types(store) == ["sandbox.created", "sandbox.ready"]  # event=None: no event
    assert store.get(s.id).error is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown sandbox field"):
        store.transition(s.id, from_states={"ready"}, to_state="ready", event=None,
                         **{"profile": "x"})  # type: ignore[arg-type]


def test_a_transition_from_the_wrong_state_is_a_conflict_and_writes_nothing(
        store: Store) -> None:
    s = add(store, "ready")
    with pytest.raises(Conflict, match="is ready"):
        store.transition(s.id, from_states={"provisioning", "destroying"}, to_state="failed",
                         event="sandbox.failed", error="x")
    rec = store.get_record(s.id)
    assert rec is not None
    assert (rec.status.state, rec.status.error, rec.version) == ("ready", None, 1)
    assert types(store) == ["sandbox.created"]
    with pytest.raises(SandboxNotFound):
        store.transition("sbx-aaaaaaaaaa", from_states={"ready"}, to_state="ready",
                         event=None)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.frozensets(st.sampled_from(STATES), min_size=1),
                                st.sampled_from(STATES), st.booleans()), max_size=12))
def test_transitions_follow_a_model(store: Store,
                                    steps: list[tuple[frozenset[str], str, bool]]) -> None:
    """Whatever sequence is tried: a transition happens exactly when the state is one of
    ``from_states``; each bumps the version once and appends at most its one event."""
    s = add(store, "provisioning")
    state, version, events = "provisioning", 1, ["sandbox.created"]
    for allowed, to, with_event in steps:
        try:
            store.transition(s.id, from_states=allowed, to_state=to,
                             event="sandbox.extended" if with_event else None)
        except Conflict:
            assert state not in allowed
            continue
        assert state in allowed
        state, version = to, version + 1
        events += ["sandbox.extended"] if with_event else []
    rec = store.get_record(s.id)
    assert rec is not None
    assert (rec.status.state, rec.version) == (state, version)
    assert types(store, s.id) == events


def test_set_handle_is_kept_but_never_in_an_event(store: Store) -> None:
    s = add(store, "provisioning")
    store.set_handle(s.id, {"sandbox_id": s.id, "data": {"secret-ish": 1}})
    store.transition(s.id, from_states={"provisioning"}, to_state="ready",
                     event="sandbox.ready")
    assert store.get_record(s.id).handle == {  # type: ignore[union-attr]
        "sandbox_id": s.id, "data": {"secret-ish": 1}}
    assert all("secret-ish" not in str(r.payload) for r in store.event_rows())


def test_query_filters_orders_and_limits(store: Store) -> None:
    t0 = utcnow()
    a = add(store, labels={"team": "x"}, actor="agt", created_at=t0)
    b = add(store, "destroyed", labels={"team": "y"}, profile="profile.other",
            created_at=t0 + timedelta(seconds=1))
    c = add(store, labels={"team": "x", "env": "prod"}, extension="ext.other",
            created_at=t0 + timedelta(seconds=2))
    ids = lambda got: [s.id for s in got]  # noqa: E731
    assert ids(store.query()) == [a.id, b.id, c.id]
    assert ids(store.query(limit=2)) == [a.id, b.id]
    assert ids(store.query(labels={"team": "x"})) == [a.id, c.id]
    assert ids(store.query(labels={"team": "x", "env": "prod"})) == [c.id]
    assert ids(store.query(states=["destroyed"])) == [b.id]
    assert ids(store.query(states=[])) == []
    assert ids(store.query(actor="agt")) == [a.id]
    assert ids(store.query(profile="profile.other")) == [b.id]
    assert ids(store.query(extension="ext.other", states=list(LIVE_STATES))) == [c.id]
    assert store.query(labels={"team": "x'; DROP TABLE sandboxes; --"}) == []
    assert store.query_documents(labels={"team": "x"}) == [a.document(), c.document()]
    # The fast read path builds what the model would, for every filter, with the cyclic
    # GC paused while it does and enabled again after.
    assert gc.isenabled()
    assert store.query_documents() == [s.document() for s in store.query()]
    assert store.query_documents(states=["destroyed"]) == [b.document()]
    assert gc.isenabled()
    gc.disable()
    try:
        store.query_documents(limit=1)
        assert not gc.isenabled()  # a caller's choice stays
    finally:
        gc.enable()
    assert store.count() == 3


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
# Labels as the models let them reach a store (values.LABEL_KEY / LABEL_VALUE).
@given(labels=st.dictionaries(st.from_regex(LABEL_KEY, fullmatch=True),
                              st.from_regex(LABEL_VALUE, fullmatch=True), max_size=4))
def test_labels_round_trip_and_match_themselves(store: Store, labels: dict[str, str]) -> None:
    s = add(store, labels=labels)
    assert store.get(s.id).labels == labels  # type: ignore[union-attr]
    assert s.id in [d["id"] for d in store.query_documents(labels=labels)]


def test_live_counts_handles_ids_and_states(store: Store) -> None:
    live = [add(store, st_, target="t") for st_ in ("provisioning", "ready", "destroying")]
    dead = [add(store, st_, target="t") for st_ in ("destroyed", "failed")]
    other = add(store, target="t", extension="ext.other")
    for s in (*live, *dead, other):
        store.set_handle(s.id, {"sandbox_id": s.id, "extension": s.extension, "target": "t"})
    assert store.live_count("t", "ext.fake") == 3
    assert store.live_count("t", "ext.other") == 1
    assert store.live_count("elsewhere", "ext.fake") == 0
    assert store.live_ids() == {s.id for s in (*live, other)}
    assert {h.sandbox_id for h in store.live_handles("ext.fake")} == {s.id for s in live}
    assert store.states([live[0].id, dead[0].id, "sbx-aaaaaaaaaa"]) == {
        live[0].id: "provisioning", dead[0].id: "destroyed"}
    assert store.states([]) == {}
    many = [add(store).id for _ in range(3)] + [f"sbx-{i:010d}" for i in range(1200)]
    assert len(store.states(many)) == 3  # long id lists are fine
    assert store.count() == 9


def test_capacity_is_enforced_atomically_across_connections(backend: Backend) -> None:
    """Eight connections race for two slots: exactly two win; the losers write nothing."""
    stores = [backend.open() for _ in range(8)]
    add(stores[0], target="other")
    start = threading.Barrier(8)
    won: list[str] = []
    lost: list[NoTarget] = []

    def create(store: Store) -> None:
        s = status("provisioning", target="cap")
        start.wait()
        try:
            store.insert(s, max_expires_at=s.expires_at, capacity=2)
            won.append(s.id)
        except NoTarget as e:
            lost.append(e)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert (len(won), len(lost)) == (2, 6)
    assert "full (2/2" in lost[0].message
    check = backend.open()
    assert check.live_count("cap", "ext.fake") == 2
    assert {r.sandbox_id for r in check.event_rows() if r.payload["target"] == "cap"} == set(won)
    # A slot is freed when its sandbox is no longer live.
    check.transition(won[0], from_states={"provisioning"}, to_state="failed", event=None)
    s = status("provisioning", target="cap")
    check.insert(s, max_expires_at=s.expires_at, capacity=2)


def _race(url: str, start: Any, n: int, out: Any) -> None:
    store = open_store(_settings(url))
    start.wait()
    for _ in range(n):
        s = status("provisioning", target="cap")
        try:
            store.insert(s, max_expires_at=s.expires_at, capacity=3)
            out.put(s.id)
        except NoTarget:
            out.put(None)


def test_capacity_is_enforced_atomically_across_processes(backend: Backend) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(backend.url, start, 4, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(8)]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len([r for r in results if r]) == 3
    assert backend.open().live_count("cap", "ext.fake") == 3


def _lead_then_die(url: str, led: Any) -> None:
    store = open_store(_settings(url))
    led.put(store.try_lead("leader") is not None)
    time.sleep(60)  # killed before this ends


def test_one_leader_at_a_time_until_it_releases_or_dies(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    held = first.try_lead("leader")
    assert held is not None
    assert held.held()
    assert second.try_lead("leader") is None
    other = second.try_lead("publisher")  # roles are independent
    assert other is not None
    other.release()
    held.release()
    held.release()  # idempotent
    assert not held.held()
    again = second.try_lead("leader")
    assert again is not None
    again.release()
    # A leader that is killed (SIGKILL: no cleanup runs) leaves the role free.
    ctx = multiprocessing.get_context("spawn")
    led = ctx.Queue()
    proc = ctx.Process(target=_lead_then_die, args=(backend.url, led))
    proc.start()
    try:
        assert led.get(timeout=60) is True
        assert first.try_lead("leader") is None
    finally:
        proc.kill()
        proc.join(30)
    deadline = time.monotonic() + 10
    while (taken := first.try_lead("leader")) is None:
        assert time.monotonic() < deadline, "the dead leader's role was never freed"
        time.sleep(0.1)
    assert taken.held()
    taken.release()


def test_the_holder_of_a_role_is_named_to_the_others(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    if not isinstance(second, KnowsLeaders):
        pytest.skip(f"{backend.name} cannot name a role's holder (optional)")
    assert second.leader_of("leader") is None
    held = first.try_lead("leader")
    assert held is not None
    who = second.leader_of("leader")
    assert who is not None
    assert f"pid {os.getpid()}, since 20" in who
    assert second.leader_of("publisher") is None
    held.release()
    assert second.leader_of("leader") is None


def test_reapable_and_has_reapable(store: Store) -> None:
    now = utcnow()
    expired = add(store, expires_at=now - timedelta(seconds=1))
    add(store)  # a lease still running
    add(store, "destroyed", expires_at=now - HOUR)
    add(store, "failed", expires_at=now - HOUR)
    assert [c.id for c in store.reapable(now)] == [expired.id]
    assert store.has_reapable(now)
    assert not store.has_reapable(now - timedelta(seconds=2))

    destroying = add(store, "destroying", expires_at=now + 3 * HOUR)
    creating = add(store, "provisioning", expires_at=now + 2 * HOUR)
    other = add(store, "provisioning", extension="ext.other", expires_at=now + 4 * HOUR)
    # A create in flight is always a candidate (the caller judges its process); a destroy
    # only once it has not moved for stale_after.
    got = store.reapable(now)
    assert [c.id for c in got] == [expired.id, creating.id, other.id]
    assert {c.id: c.state for c in got}[creating.id] == "provisioning"
    assert abs((got[1].updated_at - now).total_seconds()) < 60
    assert [c.id for c in store.reapable(now, extension="ext.other")] == [other.id]
    before = now - timedelta(seconds=2)
    assert not store.has_reapable(before)  # fresh creates and destroys are not due by time
    later = now + HOUR
    assert [c.id for c in store.reapable(later, stale_after=60)] == [
        expired.id, creating.id, destroying.id, other.id]
    store.transition(expired.id, from_states={"ready"}, to_state="destroyed", event=None)
    store.transition(creating.id, from_states={"provisioning"}, to_state="ready", event=None)
    store.transition(other.id, from_states={"provisioning"}, to_state="failed", event=None)
    assert not store.has_reapable(now)
    assert store.has_reapable(later, stale_after=60)  # the destroy went stale


# -- the outbox ------------------------------------------------------------------------


def test_event_rows_in_order_with_filters(store: Store) -> None:
    a = add(store, "provisioning", actor="agt")
    b = add(store, "provisioning")
    store.transition(a.id, from_states={"provisioning"}, to_state="ready",
                     event="sandbox.ready")
    rows = store.event_rows()
    assert [(r.sandbox_id, r.type) for r in rows] == [
        (a.id, "sandbox.created"), (b.id, "sandbox.created"), (a.id, "sandbox.ready")]
    seqs = [r.seq for r in rows]
    assert seqs == sorted(set(seqs))
    assert len({r.id for r in rows}) == 3
    assert all(r.time <= time.time() + 1 for r in rows)
    assert store.event_rows(after=seqs[0]) == rows[1:]
    assert store.event_rows(limit=1) == rows[:1]
    assert store.event_rows(limit=0) == []
    assert store.event_rows(limit=2, newest=True) == rows[1:]
    assert store.event_rows(limit=1, newest=True, actor="agt") == [rows[2]]
    assert store.event_rows(limit=0, newest=True) == []
    assert store.event_rows(sandbox_id=b.id) == [rows[1]]
    assert store.event_rows(actor="agt") == [rows[0], rows[2]]
    assert store.event_rows(actor="nobody") == []
    assert [e.type for e in store.events(sandbox_id=a.id)] == ["sandbox.created",
                                                               "sandbox.ready"]
    assert [e.seq for e in store.events(after=seqs[1])] == seqs[2:]
    assert (rows[0].delivered_at, rows[0].attempts, rows[0].next_attempt_at,
            rows[0].last_error) == (None, 0, None, None)


def test_delivery_bookkeeping(store: Store) -> None:
    a, b = add(store), add(store)
    first, second = store.event_rows()
    assert store.undelivered_events() == [first, second]
    assert store.next_event_due_at() == 0.0
    assert store.event_counts().total == 2
    assert store.mark_failed(first.id, "x" * 600, 1e12) == 1
    assert store.mark_failed(first.id, "again", 2e12) == 2
    assert store.mark_failed("evt-unknown", "x", 1.0) == 0
    failed = store.undelivered_events()[0]
    assert (failed.attempts, failed.next_attempt_at, failed.last_error) == (2, 2e12, "again")
    assert store.next_event_due_at() == 0.0  # the other one was never tried
    store.mark_delivered([second.id, "evt-unknown"], 1234.5)
    store.mark_delivered([], 1.0)
    delivered = store.event_rows(sandbox_id=b.id)[0]
    assert (delivered.delivered_at, delivered.attempts, delivered.next_attempt_at,
            delivered.last_error) == (1234.5, 1, None, None)
    assert store.mark_failed(second.id, "late, from a deposed leader", 9e12) == 0
    assert store.event_rows(sandbox_id=b.id)[0] == delivered
    assert store.undelivered_events() == [failed]
    assert store.undelivered_events(limit=0) == []
    assert store.next_event_due_at() == 2e12
    counts = store.event_counts()
    assert (counts.total, counts.delivered, counts.retrying, counts.pending) == (2, 1, 1, 0)
    assert Outbox(store).counts() == {"total": 2, "delivered": 1, "retrying": 1, "pending": 0}
    store.mark_failed(first.id, "y" * 600, 3e12)
    assert store.event_rows(sandbox_id=a.id)[0].last_error == "y" * 500
    store.mark_delivered([first.id], 1.0)
    assert store.next_event_due_at() is None


def test_due_keeps_the_order_per_sandbox(store: Store) -> None:
    a, b = add(store, "provisioning"), add(store, "provisioning")
    for s in (a, b):
        store.transition(s.id, from_states={"provisioning"}, to_state="ready",
                         event="sandbox.ready")
    a1, b1, a2, b2 = store.event_rows()
    store.mark_failed(a1.id, "down", time.time() + 3600)
    assert [r.id for r in Outbox(store).due(time.time())] == [b1.id, b2.id]
    assert [r.id for r in Outbox(store).due(float("inf"))] == [a1.id, b1.id, a2.id, b2.id]


def test_prune_by_age_and_delivery(store: Store) -> None:
    add(store)
    add(store)
    first, _second = store.event_rows()
    store.mark_delivered([first.id], time.time())
    cutoff = time.time() + 1
    assert store.prune_events(first.time - 1, undelivered_too=True) == 0  # none that old
    assert store.prune_events(cutoff, undelivered_too=False) == 1
    assert [r.id for r in store.event_rows()] == [_second.id]
    assert store.prune_events(cutoff, undelivered_too=True) == 1
    assert store.event_rows() == []
    assert store.count() == 2  # pruning events never touches sandboxes


# -- tokens ----------------------------------------------------------------------------


def token(tid: str, actor: str = "agt", *, created: float = 100.0) -> TokenRow:
    return TokenRow(id=tid, hash=f"hash-{tid}", actor=actor, admin=actor == "root",
                    created_at=created, last_used_at=None)


def test_token_rows(store: Store) -> None:
    store.add_token(token("tok-b", "zed", created=1.0))
    store.add_token(token("tok-a", "agt", created=2.0))
    store.add_token(token("tok-r", "root", created=3.0))
    with pytest.raises(Conflict):
        store.add_token(token("tok-a"))
    with pytest.raises(Conflict):
        store.add_token(TokenRow(id="tok-new", hash="hash-tok-a", actor="x", admin=False,
                                 created_at=1.0, last_used_at=None))
    assert store.token_by_hash("hash-tok-r") == token("tok-r", "root", created=3.0)
    assert store.token_by_hash("nope") is None
    store.touch_token("tok-a", 50.5)
    store.touch_token("tok-unknown", 1.0)
    assert store.token_by_hash("hash-tok-a").last_used_at == 50.5  # type: ignore[union-attr]
    assert [t.id for t in store.list_tokens()] == ["tok-a", "tok-r", "tok-b"]
    assert store.remove_token("tok-a").actor == "agt"  # type: ignore[union-attr]
    assert store.remove_token("tok-a") is None
    assert store.token_by_hash("hash-tok-a") is None


def test_tokens_policy_over_the_rows(store: Store) -> None:
    from sandboxer.store.tokens import Tokens, hash_token

    tokens = Tokens(store)
    secret, summary = tokens.add("agt", admin=True)
    assert store.token_by_hash(hash_token(secret)) is not None
    assert secret not in str(store.list_tokens())
    assert tokens.lookup(secret) == (summary["id"], "agt", True)
    tokens.touch(summary["id"])
    assert tokens.list()[0]["last_used_at"] is not None
    assert tokens.remove(summary["id"])["id"] == summary["id"]
    with pytest.raises(NotFound):
        tokens.remove(summary["id"])
    assert tokens.lookup(secret) is None


# -- targets ---------------------------------------------------------------------------


def test_targets(store: Store) -> None:
    cfg = {"url": "ssh://u@h:2200", "capacity": 3, "allow": ["devices"], "nested": {"a": [1]}}
    store.add_target(TargetRecord(name="h2", extension="ext.fake", config=cfg))
    store.add_target(TargetRecord(name="h1", extension="ext.other",
                                  created_at=datetime.fromtimestamp(1e9).astimezone()))
    with pytest.raises(Conflict, match="exists already"):
        store.add_target(TargetRecord(name="h2", extension="ext.other"))
    got = store.get_target("h2")
    assert got is not None
    assert (got.name, got.extension, got.config) == ("h2", "ext.fake", cfg)
    assert got.created_at is not None
    assert abs(got.created_at.timestamp() - time.time()) < 60  # defaults to now
    assert store.get_target("h1").created_at.timestamp() == 1e9  # type: ignore[union-attr]
    assert store.get_target("nope") is None
    assert [t.name for t in store.list_targets()] == ["h1", "h2"]
    assert [t.name for t in store.list_targets("ext.fake")] == ["h2"]
    assert store.list_targets("ext.none") == []

    s = add(store, target="h2")
    with pytest.raises(Conflict, match="live sandbox"):
        store.remove_target("h2")
    store.transition(s.id, from_states={"ready"}, to_state="destroyed", event=None)
    store.remove_target("h2")
    with pytest.raises(NotFound):
        store.remove_target("h2")
    assert [t.name for t in store.list_targets()] == ["h1"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=3),
    max_leaves=10)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(st.text(max_size=10), _json, max_size=5))
def test_a_target_config_document_round_trips(store: Store, config: dict[str, Any]) -> None:
    name = f"t{time.monotonic_ns()}"
    store.add_target(TargetRecord(name=name, extension="ext.fake", config=config))
    assert store.get_target(name).config == config  # type: ignore[union-attr]
    store.remove_target(name)


def test_an_unreachable_sandbox_is_live_and_its_lease_runs_out(store: Store) -> None:
    """``unreachable`` (its target failed a probe) holds its slot like ``ready`` and is
    reaped like it when its lease ends."""
    now = utcnow()
    lost = add(store, "unreachable", target="t", expires_at=now - timedelta(seconds=1))
    waiting = add(store, "unreachable", target="t")
    assert store.live_count("t", "ext.fake") == 2
    assert {lost.id, waiting.id} <= store.live_ids()
    assert [c.id for c in store.reapable(now)] == [lost.id]
    assert {c.id: c.state for c in store.reapable(now)} == {lost.id: "unreachable"}
    assert store.has_reapable(now)
    assert [s.id for s in store.query(states=["unreachable"])] == [lost.id, waiting.id]


# -- issue 16: last activity, ttl.retain, the stopped and paused states ----------------------


def test_the_last_activity_is_kept_forward_without_an_event_or_a_version(store: Store) -> None:
    s = add(store)
    assert store.get(s.id).last_active_at is None  # type: ignore[union-attr]
    assert store.get_document(s.id)["last_active_at"] is None  # type: ignore[index]
    before = store.get_record(s.id)
    assert before is not None
    seen = utcnow()
    store.set_last_active(s.id, seen)
    store.set_last_active(s.id, seen - HOUR)  # an older sample of another watcher
    store.set_last_active("sbx-aaaaaaaaaa", seen)  # unknown: ignored
    after = store.get_record(s.id)
    assert after is not None
    assert after.status.last_active_at is not None
    assert abs((after.status.last_active_at - seen).total_seconds()) < 1e-3
    assert (after.version, after.updated_at) == (before.version, before.updated_at)
    assert types(store, s.id) == ["sandbox.created"]
    doc = store.get_document(s.id)
    assert doc == after.status.document()
    assert doc is not None
    assert store.query_documents()[0]["last_active_at"] == doc["last_active_at"]
    later = store.transition(s.id, from_states={"ready"}, to_state="stopped",
                             event="sandbox.stopped", reason="idle: …")
    assert later.last_active_at == after.status.last_active_at  # events carry it


def test_retain_is_kept_for_the_reaper(store: Store) -> None:
    now = utcnow()
    kept = status(expires_at=now - timedelta(seconds=1))
    store.insert(kept, max_expires_at=now + HOUR, retain=90.0)
    plain = add(store, expires_at=now - timedelta(seconds=2))
    rec = store.get_record(kept.id)
    assert rec is not None
    assert rec.retain == 90.0
    assert store.get_record(plain.id).retain is None  # type: ignore[union-attr]
    got = {c.id: c for c in store.reapable(now)}
    assert (got[kept.id].retain, got[plain.id].retain) == (90.0, None)
    assert got[kept.id].reason is None
    store.transition(kept.id, from_states={"ready"}, to_state="ready", event=None, retain=None)
    assert store.get_record(kept.id).retain is None  # type: ignore[union-attr]


def test_stopped_and_paused_leases_run_out_too(store: Store) -> None:
    now = utcnow()
    stopped = add(store, "stopped", reason="expired: kept", expires_at=now - timedelta(seconds=1))
    paused = add(store, "paused", expires_at=now - timedelta(seconds=2))
    add(store, "stopped", expires_at=now + HOUR)
    assert not store.has_reapable(now - timedelta(seconds=3))
    assert store.has_reapable(now)
    got = store.reapable(now)
    assert [(c.id, c.state) for c in got] == [(paused.id, "paused"), (stopped.id, "stopped")]
    assert got[1].reason == "expired: kept"
# -- pools -----------------------------------------------------------------------------


def _pooled(store: Store, pool: str = "profile.fake", state: str = "ready",
            **kw: Any) -> SandboxStatus:
    s = status(state, **kw)
    store.insert(s, max_expires_at=s.expires_at, pool=pool)
    return s


def _claim(**kw: Any) -> Any:
    from sandboxer.store.base import Claim

    now = utcnow()
    fields: dict[str, Any] = {"actor": "agt", "name": "mine", "labels": {"run": "7"},
                              "created_at": now, "expires_at": now + HOUR,
                              "max_expires_at": now + 2 * HOUR, "creator": "c1"}
    fields.update(kw)
    return Claim(**fields)


def test_pooled_sandboxes_are_live_but_left_out_of_unpooled_queries(store: Store) -> None:
    mine = add(store)
    pooled = _pooled(store)
    assert [s.id for s in store.query(pooled=False)] == [mine.id]
    assert [d["id"] for d in store.query_documents(pooled=True)] == [pooled.id]
    assert {s.id for s in store.query()} == {mine.id, pooled.id}
    assert store.live_count("fake-1", "ext.fake") == 2  # capacity counts the pool
    assert pooled.id in store.live_ids()


def test_a_claim_binds_and_leaves_the_pool_with_its_event(store: Store) -> None:
    old = _pooled(store, created_at=utcnow() - timedelta(minutes=5))
    young = _pooled(store)
    other = _pooled(store, pool="profile.other")
    claim = _claim()
    got = store.claim("profile.fake", claim, born_after=utcnow() - HOUR)
    assert got is not None
    assert got.id == old.id  # oldest first
    assert (got.state, got.actor, got.name, got.labels) == ("provisioning", "agt", "mine",
                                                            {"run": "7"})
    assert abs((got.created_at - claim.created_at).total_seconds()) < 0.01
    rec = store.get_record(got.id)
    assert rec is not None
    assert abs((rec.max_expires_at - claim.max_expires_at).total_seconds()) < 0.01
    assert rec.pool is None
    still = store.get_record(young.id)
    assert still is not None
    assert still.pool == "profile.fake"
    assert types(store, got.id)[-1] == "sandbox.claimed"
    assert [d["id"] for d in store.query_documents(pooled=True)] == [young.id, other.id]
    # Too old (born before born_after), another target, or nothing left: None.
    assert store.claim("profile.fake", _claim(), born_after=utcnow()) is None
    assert store.claim("profile.fake", _claim(), born_after=utcnow() - HOUR,
                       targets=["elsewhere"]) is None
    assert store.claim("profile.fake", _claim(), born_after=utcnow() - HOUR,
                       targets=["fake-1"]) is not None
    assert store.claim("profile.fake", _claim(), born_after=utcnow() - HOUR) is None


def test_only_a_ready_pooled_sandbox_is_claimed(store: Store) -> None:
    _pooled(store, state="provisioning")
    gone = _pooled(store)
    store.transition(gone.id, from_states={"ready"}, to_state="destroying", event=None)
    assert store.claim("profile.fake", _claim(), born_after=utcnow() - HOUR) is None


def test_a_pool_is_never_overfilled(store: Store) -> None:
    _pooled(store)
    _pooled(store)
    s = status("provisioning")
    with pytest.raises(Conflict, match="2/2"):
        store.insert(s, max_expires_at=s.expires_at, pool="profile.fake", pool_size=2)
    assert len(store.query(pooled=True)) == 2
    store.insert(s, max_expires_at=s.expires_at, pool="profile.fake", pool_size=3)


def test_concurrent_claims_never_get_the_same_sandbox(backend: Backend) -> None:
    """Eight connections claim from a pool of five at once: five distinct winners."""
    first = backend.open()
    pooled = {_pooled(first).id for _ in range(5)}
    stores = [backend.open() for _ in range(8)]
    start = threading.Barrier(8)
    got: list[str | None] = []

    def claim(store: Store) -> None:
        start.wait()
        s = store.claim("profile.fake", _claim(), born_after=utcnow() - HOUR)
        got.append(None if s is None else s.id)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [g for g in got if g is not None]
    assert len(got) == 8
    assert sorted(won) == sorted(pooled)
    assert [r.sandbox_id for r in first.event_rows() if r.type == "sandbox.claimed"].count(
        won[0]) == 1


def _claims(url: str, start: Any, n: int, out: Any) -> None:
    store = open_store(_settings(url))
    start.wait()
    for _ in range(n):
        s = store.claim("profile.fake", _claim(), born_after=utcnow() - HOUR)
        out.put(None if s is None else s.id)


def test_concurrent_claims_across_processes(backend: Backend) -> None:
    first = backend.open()
    pooled = {_pooled(first).id for _ in range(5)}
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claims, args=(backend.url, start, 4, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(8)]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    won = [r for r in results if r]
    assert sorted(won) == sorted(pooled)


# -- issue 17: snapshots -----------------------------------------------------------------


def snapshot(sandbox: SandboxStatus, state: str = "creating", **kw: Any) -> SnapshotStatus:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": new_snapshot_id(), "sandbox_id": sandbox.id, "profile": sandbox.profile,
        "extension": sandbox.extension, "target": sandbox.target, "state": state,
        "actor": sandbox.actor, "created_at": now, "expires_at": now + 7 * 24 * HOUR}
    fields.update(kw)
    return SnapshotStatus.model_validate(fields)


def add_snapshot(store: Store, sandbox: SandboxStatus, state: str = "creating",
                 **kw: Any) -> SnapshotStatus:
    snap = snapshot(sandbox, state, **kw)
    store.insert_snapshot(snap)
    return snap


def test_a_sandbox_records_the_snapshot_it_was_created_from(store: Store) -> None:
    s = add(store, "provisioning", snapshot="snap-aaaaaaaaaa")
    assert store.get(s.id) == s
    assert store.get_document(s.id) == s.document()
    assert s.document()["snapshot"] == "snap-aaaaaaaaaa"
    assert store.query_documents()[0]["snapshot"] == "snap-aaaaaaaaaa"
    assert store.event_rows()[0].payload["snapshot"] == "snap-aaaaaaaaaa"
    assert add(store).snapshot is None
    assert store.get_document(store.query()[1].id)["snapshot"] is None  # type: ignore[index]


def test_a_snapshot_round_trips_without_an_event_until_it_is_ready(store: Store) -> None:
    s = add(store, actor="agt")
    snap = add_snapshot(store, s, name="before-upgrade")
    assert store.get_snapshot(snap.id) == snap
    rec = store.get_snapshot_record(snap.id)
    assert rec is not None
    assert (rec.status, rec.artifact, rec.version) == (snap, None, 1)
    assert types(store) == ["sandbox.created"]
    assert store.get_snapshot("snap-aaaaaaaaaa") is None
    assert store.get_snapshot_record("snap-aaaaaaaaaa") is None
    with pytest.raises(Conflict):
        store.insert_snapshot(snap)
    assert len(store.query_snapshots()) == 1


def test_a_snapshot_transition_changes_fields_and_appends_its_event(store: Store) -> None:
    s = add(store, actor="agt")
    snap = add_snapshot(store, s)
    artifact = {"snapshot_id": snap.id, "extension": "ext.fake", "data": {"dir": "/x"}}
    later = snap.expires_at + HOUR
    ready = store.snapshot_transition(
        snap.id, from_states={"creating"}, to_state="ready", event="snapshot.created",
        artifact=artifact, size_bytes=1234, content_hash="sha256:" + "0" * 64,
        expires_at=later)
    assert (ready.state, ready.size_bytes, ready.content_hash) == (
        "ready", 1234, "sha256:" + "0" * 64)
    assert abs((ready.expires_at - later).total_seconds()) < 1e-3
    rec = store.get_snapshot_record(snap.id)
    assert rec is not None
    assert (rec.status, rec.artifact, rec.version) == (ready, artifact, 2)
    row = store.event_rows()[-1]
    # The event belongs to the snapshotted sandbox, carries the document, never the artifact.
    assert (row.type, row.sandbox_id, row.payload) == ("snapshot.created", s.id,
                                                       ready.document())
    assert "artifact" not in row.payload
    assert "/x" not in str(row.payload)
    assert [r.type for r in store.event_rows(actor="agt")] == ["sandbox.created",
                                                               "snapshot.created"]
    assert store.events()[-1].payload["schema"] == "sandboxer.snapshot/v1"
    with pytest.raises(Conflict, match="is ready"):
        store.snapshot_transition(snap.id, from_states={"creating"}, to_state="failed",
                                  event="snapshot.failed", error="x")
    assert store.get_snapshot(snap.id) == ready  # nothing written
    with pytest.raises(SnapshotNotFound):
        store.snapshot_transition("snap-aaaaaaaaaa", from_states={"ready"},
                                  to_state="deleting", event=None)
    with pytest.raises(ValueError, match="unknown snapshot field"):
        store.snapshot_transition(snap.id, from_states={"ready"}, to_state="ready",
                                  event=None, **{"profile": "x"})  # type: ignore[arg-type]
    store.snapshot_transition(snap.id, from_states={"ready"}, to_state="deleting", event=None)
    gone = store.snapshot_transition(snap.id, from_states={"deleting"}, to_state="deleted",
                                     event="snapshot.deleted", reason="expired")
    assert (gone.state, gone.reason) == ("deleted", "expired")
    assert types(store)[-1] == "snapshot.deleted"


def test_a_snapshot_transition_in_a_transaction_commits_or_rolls_back(store: Store) -> None:
    s = add(store)
    snap = add_snapshot(store, s)

    def broken() -> None:
        with store.transaction():
            store.snapshot_transition(snap.id, from_states={"creating"}, to_state="ready",
                                      event="snapshot.created")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        broken()
    assert store.get_snapshot(snap.id) == snap
    assert types(store) == ["sandbox.created"]


def test_snapshot_queries_filter_and_order(store: Store) -> None:
    a = add(store, actor="agt")
    b = add(store, actor="bob", extension="ext.other")
    one = add_snapshot(store, a, "ready")
    two = add_snapshot(store, a, "deleted")
    three = add_snapshot(store, b, "ready")
    ids = [x.id for x in store.query_snapshots()]
    assert ids == [one.id, two.id, three.id]
    assert [x.id for x in store.query_snapshots(sandbox_id=a.id)] == [one.id, two.id]
    assert [x.id for x in store.query_snapshots(actor="bob")] == [three.id]
    assert [x.id for x in store.query_snapshots(states=["ready"])] == [one.id, three.id]
    assert [x.id for x in store.query_snapshots(extension="ext.other")] == [three.id]
    assert [x.id for x in store.query_snapshots(limit=1)] == [one.id]
    assert store.query_snapshots(states=[]) == []
    assert store.claimed_snapshots("ext.fake") == {one.id}
    assert store.claimed_snapshots("ext.other") == {three.id}


def test_reapable_snapshots(store: Store) -> None:
    now = utcnow()
    s = add(store)
    expired = add_snapshot(store, s, "ready", expires_at=now - timedelta(seconds=1))
    add_snapshot(store, s, "ready")  # kept a week
    add_snapshot(store, s, "deleted", expires_at=now - HOUR)
    add_snapshot(store, s, "failed", expires_at=now - HOUR)
    creating = add_snapshot(store, s)
    deleting = add_snapshot(store, s, "deleting")
    assert [x.id for x in store.reapable_snapshots(now)] == [expired.id]
    assert store.has_reapable_snapshots(now)
    assert not store.has_reapable_snapshots(now - timedelta(seconds=2))
    later = now + HOUR  # the creating and deleting ones went stale
    assert {x.id for x in store.reapable_snapshots(later, stale_after=60)} == {
        expired.id, creating.id, deleting.id}
    assert store.reapable_snapshots(now, extension="ext.other") == []
    store.snapshot_transition(expired.id, from_states={"ready"}, to_state="deleted",
                              event=None)
    assert not store.has_reapable_snapshots(now)
    assert store.has_reapable_snapshots(later, stale_after=60)
