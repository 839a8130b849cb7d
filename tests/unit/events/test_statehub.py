"""The State Hub publisher against a real HTTP stand-in that fails on purpose."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from tests.api_support import StateHub

from sandboxer import events
from sandboxer.cli.main import main
from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.events.statehub import Publisher, backoff, publish_once
from sandboxer.store import open_store
from sandboxer.store.outbox import Outbox


@pytest.fixture
def hub(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateHub]:
    stand_in = StateHub(delay=1.0).start()
    for key, value in stand_in.env().items():
        monkeypatch.setenv(key, value)
    yield stand_in
    stand_in.stop()


def make_events(settings: Settings, sandboxes: int = 3) -> list[str]:
    client = LocalClient(settings)
    ids = [client.create("profile.fake").id for _ in range(sandboxes)]
    client.destroy(ids[0])
    return ids


def once(settings: Settings, *, ignore_backoff: bool = True) -> events.statehub.Pass:
    config = events.hub_config(settings)
    assert config is not None
    store = open_store(settings)
    publisher = Publisher(store, config)

    async def go() -> events.statehub.Pass:
        try:
            return await publisher.publish_pass(ignore_backoff=ignore_backoff)
        finally:
            await publisher.aclose()

    return asyncio.run(go())


def test_every_event_is_delivered_once_in_order(hub: StateHub) -> None:
    settings = Settings.from_env()
    make_events(settings)
    done = once(settings)
    assert (done.delivered, done.failed) == (7, 0)
    outbox = Outbox(open_store(settings)).documents()
    assert [e["id"] for e in outbox] == sorted(hub.order, key=lambda k: hub.accepted[k]["seq"])
    assert all(e["delivery"] == "delivered" and e["attempts"] == 1 for e in outbox)
    first = hub.accepted[outbox[0]["id"]]
    assert set(first) == {"schema", "id", "seq", "type", "sandbox_id", "time", "payload"}
    assert first["payload"]["schema"] == "sandboxer.sandbox/v1"
    per_sandbox: dict[str, list[int]] = {}
    for key in hub.order:
        per_sandbox.setdefault(hub.accepted[key]["sandbox_id"], []).append(
            hub.accepted[key]["seq"])
    assert all(seqs == sorted(seqs) for seqs in per_sandbox.values())
    assert once(settings).delivered == 0  # nothing twice


def test_the_body_is_the_stored_event_whatever_this_process_masks(hub: StateHub) -> None:
    """Every replica sends the same bytes under one key: a value registered for masking in
    this process (a short secret, here "1") never rewrites the event's body."""
    from sandboxer import redaction

    settings = Settings.from_env()
    make_events(settings, sandboxes=1)
    redaction.register(["1"])
    delivered = once(settings).delivered
    documents = Outbox(open_store(settings)).documents()
    assert delivered == len(documents) == 3  # created, ready, destroyed
    for doc in documents:
        got = hub.accepted[doc["id"]]
        assert got["seq"] == doc["seq"]
        assert got["payload"] == doc["payload"]


@pytest.mark.parametrize("mode", ["error", "timeout", "down"])
def test_outages_are_retried_with_backoff_until_delivered(hub: StateHub, mode: str) -> None:
    settings = Settings.from_env()
    make_events(settings, sandboxes=2)
    if mode == "down":
        hub.stop()
    else:
        hub.mode = mode
    failed = once(settings)
    assert failed.delivered == 0
    assert failed.failed == 2  # one per sandbox: later events wait behind the first
    outbox = Outbox(open_store(settings))
    docs = outbox.documents()
    retrying = [e for e in docs if e["delivery"] == "retrying"]
    assert len(retrying) == 2
    assert all(e["last_error"] and e["next_attempt_at"] for e in retrying)
    assert outbox.due(time.time()) == []  # backing off
    if mode == "down":
        hub.start()
    hub.mode = "ok"
    time.sleep(1.1)  # SANDBOXER_STATE_HUB_BACKOFF_MAX=1
    assert once(settings, ignore_backoff=False).delivered == 5
    assert sorted(hub.accepted) == sorted(e["id"] for e in docs)
    assert hub.duplicates == 0
    assert {e["delivery"] for e in outbox.documents()} == {"delivered"}


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    config = events.HubConfig(url="http://x", backoff_base=0.5, backoff_max=60)
    for attempts, full in ((1, 0.5), (2, 1.0), (5, 8.0), (20, 60.0)):
        for _ in range(20):
            assert full / 2 <= backoff(attempts, config) <= full


def test_the_publisher_loop_delivers_as_changes_happen(hub: StateHub) -> None:
    settings = Settings.from_env()
    make_events(settings, sandboxes=1)
    config = events.hub_config(settings)
    assert config is not None

    async def go() -> None:
        publisher = Publisher(open_store(settings), config)
        stop = asyncio.Event()
        task = asyncio.ensure_future(publisher.run(stop, idle=0.05))
        while len(hub.accepted) < 3:
            await asyncio.sleep(0.02)
        hub.mode = "error"
        await asyncio.to_thread(LocalClient(settings).create, "profile.fake")
        while not hub.attempts or hub.attempts[-1][1] != "error":
            await asyncio.sleep(0.02)
        hub.mode = "ok"
        while len(hub.accepted) < 5:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await publisher.aclose()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert hub.duplicates == 0


def test_retention_prunes_what_nothing_will_deliver(settings: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_events(settings, sandboxes=1)
    store = open_store(settings)
    store._conn.execute("UPDATE events SET time = time - 86400")
    monkeypatch.setenv("SANDBOXER_EVENTS_RETENTION", "1h")
    monkeypatch.setenv("SANDBOXER_STATE_HUB_URL", "http://127.0.0.1:9")
    assert events.prune(Settings.from_env(), store) == 0  # undelivered: State Hub may come
    monkeypatch.delenv("SANDBOXER_STATE_HUB_URL")
    assert events.prune(Settings.from_env(), store) == 3
    LocalClient(Settings.from_env()).create("profile.fake")  # a create prunes as it goes
    assert len(Outbox(store).documents()) == 2


def test_events_publish_command(hub: StateHub, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env()
    make_events(settings, sandboxes=1)
    hub.mode = "error"
    assert main(["events", "publish", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["schema"], doc["delivered"], doc["failed"], doc["remaining"]) == (
        "sandboxer.publish/v1", 0, 1, 3)
    hub.mode = "ok"
    assert main(["events", "publish"]) == 0  # backoff or not: the operator asked now
    assert "delivered 3, failed 0, 0 left undelivered" in capsys.readouterr().out
    assert main(["events"]) == 0
    assert capsys.readouterr().out.count(" delivered\n") == 3
    monkeypatch.delenv("SANDBOXER_STATE_HUB_URL")
    assert main(["events", "publish"]) == 2


def test_publish_once_helper_closes_its_client(hub: StateHub) -> None:
    settings = Settings.from_env()
    make_events(settings, sandboxes=1)
    config = events.hub_config(settings)
    assert config is not None
    done = asyncio.run(publish_once(settings, open_store(settings), config))
    assert done.delivered == 3
