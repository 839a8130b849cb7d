"""The leader campaign (service/leader.py) over real SQLite stores that share a database:
one leads at a time, a lost hold stops its duties before the next leader starts, and
`sandboxer events publish` never publishes beside a leader."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sandboxer.cli.main import main
from sandboxer.config import Settings
from sandboxer.service.leader import Campaign, Duty, Term, every, holder
from sandboxer.store import open_store
from sandboxer.store.base import Store

INTERVAL = 0.05


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        await asyncio.sleep(0.01)


class Spans:
    """When each campaign's duty ran: (name, start, end) in monotonic time."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float | None]] = []

    def duty(self, name: str) -> Duty:
        async def run(term: Term) -> None:  # what a publisher does: rounds until told
            self.spans.append((name, time.monotonic(), None))
            try:
                while await term.round():
                    await term.sleep(INTERVAL / 5)
            finally:
                self.spans[-1] = (name, self.spans[-1][1], time.monotonic())

        return Duty(name, run, at_once=True)


def _campaign(store: Store, spans: Spans, name: str) -> Campaign:
    return Campaign(store, [spans.duty(name)], interval=INTERVAL)


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_one_replica_leads_and_another_takes_over_when_it_stops(settings: Settings) -> None:
    spans = Spans()
    a, b = _campaign(open_store(settings), spans, "a"), _campaign(open_store(settings),
                                                                  spans, "b")
    tried = 0
    real = b.store.try_lead

    def counted(role: str) -> object:
        nonlocal tried
        tried += 1
        return real(role)

    b.store.try_lead = counted  # type: ignore[method-assign,assignment]

    async def body() -> None:
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.ensure_future(a.run(stop_a))
        await until(lambda: a.leading)
        tb = asyncio.ensure_future(b.run(stop_b))
        await until(lambda: tried >= 5)  # b campaigned, and lost, five times
        assert not b.leading
        assert [s[0] for s in spans.spans] == ["a"]
        stop_a.set()
        await ta
        assert not a.leading
        await until(lambda: b.leading)
        stop_b.set()
        await tb

    _run(body)
    (_, _, a_end), (_, b_start, _) = spans.spans
    assert a_end is not None
    assert a_end < b_start


def test_a_lost_hold_stops_the_duties_before_the_next_leader_starts(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sandboxer.service.leader")
    spans = Spans()
    a, b = _campaign(open_store(settings), spans, "a"), _campaign(open_store(settings),
                                                                  spans, "b")
    lock = Path(f"{settings.db_path}.leader.lock")

    async def body() -> None:
        stop = asyncio.Event()
        ta = asyncio.ensure_future(a.run(stop))
        await until(lambda: a.leading)
        tb = asyncio.ensure_future(b.run(stop))
        await asyncio.sleep(INTERVAL * 3)
        fresh = lock.with_name("fresh.lock")
        fresh.write_text("")
        os.replace(fresh, lock)  # a's flock no longer excludes anyone
        await until(lambda: len(spans.spans) >= 2 and any(s[2] for s in spans.spans))
        await until(lambda: a.leading or b.leading)
        stop.set()
        await asyncio.gather(ta, tb)

    _run(body)
    (_, _, first_end), (_, second_start, _) = spans.spans[:2]
    assert first_end is not None
    assert first_end < second_start
    assert "lost the leadership (the store no longer confirms it" in caplog.text
    assert caplog.text.count("this replica leads") >= 2


def test_every_runs_rounds_until_the_term_ends_and_survives_a_bad_round(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    rounds = 0

    async def work() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            raise RuntimeError("one bad round")

    campaign = Campaign(open_store(settings), [every("counting", INTERVAL / 5, work)],
                        interval=INTERVAL)

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(campaign.run(stop))
        await until(lambda: rounds >= 4)
        stop.set()
        await task

    _run(body)
    assert "counting round failed: one bad round" in caplog.text
    assert holder(open_store(settings)) is None  # released on the way out


def test_the_holder_names_itself_to_the_others(settings: Settings) -> None:
    store, other = open_store(settings), open_store(settings)
    assert holder(other) is None
    lease = store.try_lead("leader")
    assert lease is not None
    who = holder(other)
    assert who is not None
    assert f"pid {os.getpid()}," in who
    assert "since 20" in who
    lease.release()
    assert holder(other) is None


def test_a_removed_lock_file_is_a_lost_hold(settings: Settings) -> None:
    store = open_store(settings)
    lease = store.try_lead("leader")
    assert lease is not None
    assert lease.held()
    Path(f"{settings.db_path}.leader.lock").unlink()
    assert not lease.held()
    again = open_store(settings).try_lead("leader")  # a new file: another may lead now
    assert again is not None
    again.release()
    lease.release()


def test_events_publish_beside_a_leader_does_nothing_and_names_it(
        settings: Settings, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXER_STATE_HUB_URL", "http://127.0.0.1:9")  # never reached
    lease = open_store(settings).try_lead("leader")
    assert lease is not None
    assert main(["events", "publish"]) == 8
    err = capsys.readouterr().err
    assert f"held by host {os.uname().nodename}, pid {os.getpid()}," in err
    assert "nothing was done here" in err
    lease.release()
    assert main(["events", "publish", "--json"]) == 0  # no event: one empty round
    assert '"delivered":0' in capsys.readouterr().out
    assert holder(open_store(settings)) is None  # it gave the role back


def test_a_hold_that_does_not_answer_in_time_is_lost(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A check that hangs (a database gone silent) ends the term after the deadline; the
    hanging call runs off the event loop, which keeps serving meanwhile."""
    import threading

    spans, hang = Spans(), threading.Event()
    store = open_store(settings)
    real = store.try_lead

    def slow_lead(role: str) -> object:
        lease = real(role)
        if lease is not None:
            checked = lease.held

            def held() -> bool:
                if hang.is_set():
                    time.sleep(3)
                return checked()

            lease.held = held  # type: ignore[method-assign]
        return lease

    store.try_lead = slow_lead  # type: ignore[method-assign,assignment]
    campaign = _campaign(store, spans, "a")

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(campaign.run(stop))
        await until(lambda: campaign.leading)
        hang.set()
        ticks = 0
        while campaign.leading:  # the loop stays free while the check hangs
            ticks += 1
            await asyncio.sleep(0.01)
        assert ticks > 10
        hang.clear()
        stop.set()
        await task

    _run(body)
    assert spans.spans[0][2] is not None
    assert "did not confirm it within 1s" in caplog.text
