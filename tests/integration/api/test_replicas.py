"""Three `sandboxer serve` replicas on one store: one leader, found again after `kill -9`;
every event reaches State Hub at least once, never one key with two bodies; creates through
different replicas never overfill a target. On SQLite (the replicas share one home, its
database and the flock beside it) and on PostgreSQL (each replica has a home of its own:
nothing but the database is shared)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api_support import StateHub, add_token, wait_for

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput

from .conftest import Serve, serve_env

pytestmark = pytest.mark.integration
LEADS = "this replica leads"
LOST = "lost the leadership"


def _postgres_here() -> bool:
    try:
        envvars.database_url({"SANDBOXER_DATABASE_URL": "postgresql://h/db"})
    except InvalidInput:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None: SQLite in one shared home; else the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    if not _postgres_here():
        pytest.skip("this version has no PostgreSQL backend")
    url: str = request.getfixturevalue("pg_url")
    return url


@dataclass
class Cluster:
    """``n`` replicas over one store, with a State Hub stand-in; an admin token."""

    tmp: Path
    database: str | None
    hub: StateHub
    replicas: list[Serve] = field(default_factory=list)
    token: str = ""

    def env(self, i: int) -> dict[str, str]:
        home = self.tmp / ("home" if self.database is None else f"home-{i}")
        extra = {**self.hub.env(), "SANDBOXER_REAP_INTERVAL": "1",
                 "SANDBOXER_RECONCILE_INTERVAL": "2"}
        if self.database is not None:
            extra["SANDBOXER_DATABASE_URL"] = self.database
        return serve_env(home, **extra)

    def start(self, n: int) -> Cluster:
        self.token = add_token(Settings.from_env(self.env(0)), "ops", admin=True)
        self.replicas = [Serve(self.env(i), self.tmp / f"serve-{i}.log") for i in range(n)]
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self, i: int) -> str:
        return self.replicas[i].log.read_text()

    def leading(self, i: int) -> bool:
        """Whether replica ``i``'s log says it leads now (its last word on it)."""
        said = re.findall(f"{LEADS}|{LOST}", self.log(i))
        return bool(said) and said[-1] == LEADS

    def leaders(self, alive: list[int]) -> list[int]:
        return [i for i in alive if self.leading(i)]

    def create(self, i: int, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.replicas[i].url}/v1/sandboxes",
                          json={"profile": "profile.fake", **body}, headers=self.auth,
                          timeout=60)

    def events(self, i: int) -> list[dict[str, Any]]:
        got = httpx.get(f"{self.replicas[i].url}/v1/events", params={"limit": 10000},
                        headers=self.auth, timeout=30)
        assert got.status_code == 200, got.text
        items: list[dict[str, Any]] = got.json()["items"]
        return items

    def stop(self) -> None:
        for r in self.replicas:
            if r.proc.poll() is None:
                r.stop()


@pytest.fixture
def cluster(tmp_path: Path, backend: str | None) -> Iterator[Cluster]:
    hub = StateHub().start()
    made = Cluster(tmp_path, backend, hub)
    try:
        yield made
    finally:
        made.hub.release.set()
        made.stop()
        hub.stop()


def _created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["id"]
    return sandbox_id


def test_the_leader_is_killed_and_another_takes_over_delivering_every_event(
        cluster: Cluster) -> None:
    hub = cluster.hub
    cluster.start(3)
    alive = [0, 1, 2]
    wait_for(lambda: len(cluster.leaders(alive)) == 1, timeout=30)
    leader = cluster.leaders(alive)[0]
    followers = [i for i in alive if i != leader]
    for i in followers:
        wait_for(lambda i=i: "another process leads (host " in cluster.log(i))
    ids = [_created(cluster.create(i)) for i in (0, 1, 2, 0, 1, 2)]
    httpx.delete(f"{cluster.replicas[followers[0]].url}/v1/sandboxes/{ids[0]}",
                 headers=cluster.auth, timeout=60).raise_for_status()
    wait_for(lambda: all(e["delivery"] == "delivered" for e in cluster.events(leader)))
    pid = cluster.replicas[leader].proc.pid
    for i, says in ((leader, LEADS), (followers[0], "the leader role is held by host ")):
        doctor = httpx.get(f"{cluster.replicas[i].url}/v1/doctor", headers=cluster.auth,
                           timeout=60).json()
        check = next(c for c in doctor["checks"] if c["name"] == "leader")
        assert check["detail"].startswith(says), check
    assert f", pid {pid}, " in check["detail"]  # the follower names the leader

    # State Hub takes the next event but answers only after the leader is gone: the
    # leader never marks it delivered, and its successor must send it again, unchanged.
    hub.mode = "hold"
    ids.append(_created(cluster.create(followers[0])))
    wait_for(hub.held.is_set)
    held_key = next(k for k, m in reversed(hub.attempts) if m == "hold")
    killed_at = time.monotonic()
    assert cluster.replicas[leader].kill() == -signal.SIGKILL
    hub.mode = "ok"
    hub.release.set()
    alive.remove(leader)
    wait_for(lambda: len(cluster.leaders(alive)) == 1, timeout=10)
    took = time.monotonic() - killed_at
    successor = cluster.leaders(alive)[0]

    ids += [_created(cluster.create(i)) for i in (*alive, *alive)]
    httpx.delete(f"{cluster.replicas[alive[0]].url}/v1/sandboxes/{ids[-1]}",
                 headers=cluster.auth, timeout=60).raise_for_status()
    wait_for(lambda: all(e["delivery"] == "delivered" for e in cluster.events(alive[0])),
             timeout=30)
    outbox = cluster.events(alive[1])
    deliveries = sum(len(b) for b in hub.bodies.values())
    attempts = len(hub.attempts)
    sys.stdout.write(f"\ntakeover after kill -9: {took:.1f}s; {len(outbox)} events, "
                     f"{attempts} deliveries, {len(hub.accepted)} distinct keys, "
                     f"{hub.duplicates} repeated\n")  # the figures, with -s
    assert {e["id"] for e in outbox} <= hub.accepted.keys()  # every one at least once
    assert deliveries == len(hub.bodies)  # never one key with two different bodies
    assert hub.accepted[held_key]["id"] == held_key
    assert sum(k == held_key for k, _m in hub.attempts) >= 2  # sent again, same body
    assert hub.duplicates >= 1
    assert cluster.leaders(alive) == [successor]
    for i in alive:
        assert "Traceback" not in cluster.log(i)


def test_concurrent_creates_through_replicas_never_overfill_a_target(
        cluster: Cluster) -> None:
    cluster.start(3)
    capacity = 3
    added = httpx.post(f"{cluster.replicas[0].url}/v1/targets", headers=cluster.auth,
                       json={"name": "cap", "url": "fake://cap", "capacity": capacity,
                             "extension": "ext.fake"}, timeout=60)
    assert added.status_code == 201, added.text

    def burst(n: int) -> list[httpx.Response]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda k: cluster.create(k % 3, target="cap"), range(n)))

    def live_on_cap() -> list[dict[str, Any]]:
        got = httpx.get(f"{cluster.replicas[1].url}/v1/sandboxes", headers=cluster.auth,
                        timeout=30).json()["items"]
        return [s for s in got if s["target"] == "cap"]

    answers = burst(12)
    made = [r.json()["id"] for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code != 201]
    assert len(made) == capacity, [r.text for r in answers]
    assert {(r.status_code, r.json()["code"]) for r in refused} == {(503, "no_target")}
    assert len(live_on_cap()) == capacity
    gone = httpx.delete(f"{cluster.replicas[2].url}/v1/sandboxes/{made[0]}",
                        headers=cluster.auth, timeout=60)
    assert gone.status_code == 200, gone.text
    again = burst(6)
    assert sum(r.status_code == 201 for r in again) == 1
    assert len(live_on_cap()) == capacity
    for i in range(3):
        assert "Traceback" not in cluster.log(i)


def test_a_leader_that_loses_its_hold_stops_before_another_starts(
        cluster: Cluster, backend: str | None) -> None:
    """The leader's process lives but its hold broke (PostgreSQL: its connection was
    terminated; SQLite: the lock file was replaced): it must stop leading by itself, and
    the next leader starts only after that."""
    cluster.start(2)
    wait_for(lambda: len(cluster.leaders([0, 1])) == 1, timeout=30)
    leader = cluster.leaders([0, 1])[0]
    other = 1 - leader
    _break_hold(cluster, backend)
    wait_for(lambda: LOST in cluster.log(leader), timeout=20)
    wait_for(lambda: cluster.leading(other), timeout=20)  # the one that lost steps back
    assert not cluster.leading(leader)
    lost_at, led_at = _stamp(cluster.log(leader), LOST), _stamp(cluster.log(other), LEADS)
    assert lost_at < led_at, "the next leader started before the old one stopped"
    assert cluster.replicas[leader].proc.poll() is None  # it lives, and serves on
    assert _created(cluster.create(leader))
    assert _created(cluster.create(other))


def _break_hold(cluster: Cluster, backend: str | None) -> None:
    if backend is None:
        lock = cluster.tmp / "home" / "state.db.leader.lock"
        replaced = lock.with_name("replaced.lock")
        replaced.write_text("")
        os.replace(replaced, lock)
        return
    import psycopg

    with psycopg.connect(backend, autocommit=True) as conn:
        pids = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                            "AND granted AND database = (SELECT oid FROM pg_database "
                            "WHERE datname = current_database())").fetchall()
        assert pids, "no advisory lock is held"
        for (pid,) in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _stamp(log: str, text: str) -> str:
    """The timestamp of the first log line holding ``text``; logging's asctime sorts as
    text."""
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*" + re.escape(text),
                        log, flags=re.MULTILINE)
    assert stamps, f"no log line says {text!r}"
    return stamps[0]
