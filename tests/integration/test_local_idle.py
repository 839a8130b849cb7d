"""Idle handling and ttl.retain on real ext.local sandboxes, with no sandboxer command
running: core's keeper (ext.local's endpoint process) samples, stops and reaps."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings

from .conftest import raw_state, ssh

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _events(settings: Settings, sandbox_id: str) -> list[tuple[str, str | None]]:
    import json

    conn = sqlite3.connect(settings.db_path)
    rows = conn.execute("SELECT type, payload FROM events WHERE sandbox_id = ? ORDER BY seq",
                        (sandbox_id,)).fetchall()
    conn.close()
    return [(t, json.loads(p)["reason"]) for t, p in rows]


def _profile(name: str, body: str) -> None:
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / f"{name}.yaml").write_text(f"id: profile.{name}\nextends: profile.local\n"
                                           + body)


@pytest.fixture
def quick(local_home: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The keeper the create starts reads these (its environment is the caller's settings).
    monkeypatch.setenv("SANDBOXER_IDLE_INTERVAL", "0.5")
    return Settings.from_env()


def test_an_idle_sandbox_is_stopped_and_a_busy_one_is_not(quick: Settings) -> None:
    _profile("idle", "idle: {after: 3s, action: stop}\n")
    client = LocalClient(quick)
    # The busy ones first: they have been ready at least as long as the idle one.
    talking = client.create("profile.idle", ttl="10m").document()
    working = client.create("profile.idle", ttl="10m").document()
    session = subprocess.Popen(  # an SSH session open the whole time, doing nothing
        [*_ssh_argv(talking["reachability"]), "--", "sleep 120"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A background job that outlives its session and uses some CPU: bursts of ~5% of a
    # core, then sleep (not a busy loop).
    job = ("nohup sh -c 'while :; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
           "sleep 0.5; done' >/dev/null 2>&1 &")
    started = ssh(working["reachability"], job)
    assert started.returncode == 0, started.stderr
    try:
        idle = client.create("profile.idle", ttl="10m").document()
        wait_for(lambda: raw_state(quick, idle["id"])["state"] == "stopped", 60,
                 "the idle sandbox to be stopped")
        got = client.get_document(idle["id"])
        assert got["reason"].startswith("idle: idle for 3s: no session open, no setup step "
                                        "running, no CPU used since ")
        assert _events(quick, idle["id"])[-1] == ("sandbox.stopped", got["reason"])
        # The busy ones are still seen active a whole `after` past the idle one's stop,
        # by when they had been stopped too if their session or job did not count.
        stopped_at = _when(_last_event_time(quick, idle["id"]))
        for busy in (talking, working):
            wait_for(lambda b=busy: _seen_after(client, b["id"], stopped_at + 4), 60,
                     f"activity of {busy['id']} past the idle one's stop")
            doc = client.get_document(busy["id"])
            assert doc["state"] == "ready", (busy["id"], doc["reason"])
        # start brings the stopped one back; the idle clock starts again with it.
        assert _start(quick, idle["id"])["state"] == "ready"
    finally:
        session.kill()
        session.wait()


def test_an_idle_sandbox_of_a_pause_profile_is_paused_and_resumes(quick: Settings) -> None:
    _profile("frozen", "idle: {after: 3s, action: pause}\n")
    client = LocalClient(quick)
    s = client.create("profile.frozen", ttl="10m").document()
    wrote = ssh(s["reachability"], "echo still-here > /workspace/note.txt")
    assert wrote.returncode == 0, wrote.stderr
    wait_for(lambda: raw_state(quick, s["id"])["state"] == "paused", 60,
             "the idle sandbox to be paused")
    got = client.get_document(s["id"])
    assert got["reason"].startswith("idle: idle for 3s: no session open")
    assert _events(quick, s["id"])[-1] == ("sandbox.paused", got["reason"])
    import asyncio

    from sandboxer.manager import Manager

    manager = Manager(quick)
    try:
        back = asyncio.run(manager.resume(s["id"])).document()
    finally:
        manager.store.close()
    assert back["state"] == "ready"
    read = ssh(back["reachability"], "cat /workspace/note.txt")
    assert read.stdout == b"still-here\n", read.stderr


def _when(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _last_event_time(settings: Settings, sandbox_id: str) -> str:
    from datetime import UTC, datetime

    conn = sqlite3.connect(settings.db_path)
    (t,) = conn.execute("SELECT MAX(time) FROM events WHERE sandbox_id = ?",
                        (sandbox_id,)).fetchone()
    conn.close()
    return datetime.fromtimestamp(t, UTC).isoformat()


def _seen_after(client: LocalClient, sandbox_id: str, when: float) -> bool:
    doc = client.get_document(sandbox_id)
    assert doc["state"] == "ready", (sandbox_id, doc["reason"])
    return doc["last_active_at"] is not None and _when(doc["last_active_at"]) > when


def _start(settings: Settings, sandbox_id: str) -> dict[str, Any]:
    import asyncio

    from sandboxer.manager import Manager

    manager = Manager(settings)
    try:
        return asyncio.run(manager.start(sandbox_id)).document()
    finally:
        manager.store.close()


def _ssh_argv(reach: dict[str, Any]) -> list[str]:
    import shlex

    return [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes"]


def _stopped_by_its_lease(settings: Settings, retain: str) -> tuple[LocalClient, str]:
    """A sandbox with a file in its workspace, once its short lease ended (stopped)."""
    _profile("kept", f"ttl: {{default: 4s, max: 1h, retain: {retain}}}\n")
    client = LocalClient(settings)
    s = client.create("profile.kept").document()
    wrote = ssh(s["reachability"], "echo kept-work > /workspace/note.txt")
    assert wrote.returncode == 0, wrote.stderr
    wait_for(lambda: raw_state(settings, s["id"])["state"] == "stopped", 60,
             "the lease's end to stop it")
    return client, s["id"]


def test_retain_stops_at_the_lease_end_then_destroys(quick: Settings) -> None:
    client, sid = _stopped_by_its_lease(quick, "4s")
    doc = client.get_document(sid)
    assert doc["reason"].startswith("expired: lease ended; kept stopped until ")
    assert doc["expires_at"] > doc["created_at"]
    wait_for(lambda: raw_state(quick, sid)["state"] == "destroyed", 60,
             "the end of its retain to destroy it")
    assert [t for t, _r in _events(quick, sid)] == [
        "sandbox.created", "sandbox.ready", "sandbox.stopped", "sandbox.expired",
        "sandbox.destroyed"]
    assert raw_state(quick, sid)["reason"] == "expired"


def test_extend_and_start_bring_a_retained_sandbox_back_with_its_work(
        quick: Settings) -> None:
    client, sid = _stopped_by_its_lease(quick, "10m")
    renewed = client.extend(sid, "10m").document()
    assert (renewed["state"], renewed["reason"]) == ("stopped", "stopped")
    back = _start(quick, sid)
    assert back["state"] == "ready"
    read = ssh(back["reachability"], "cat /workspace/note.txt")
    assert read.returncode == 0, read.stderr
    assert read.stdout == b"kept-work\n"
