"""Idle handling and ttl.retain on real ext.compose-ssh sandboxes (a real dockerd over SSH),
with no sandboxer command running: core's keeper for the extension samples and stops."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_compose_ssh import Env, make_env

pytestmark = pytest.mark.integration


@pytest.fixture
def env(ssh_target: Any, tmp_path: Path) -> Iterator[Env]:
    for ctx in make_env(ssh_target, tmp_path):
        ctx.env["SANDBOXER_IDLE_INTERVAL"] = "0.5"  # the keeper the create starts reads it
        yield ctx


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _state(env: Env, sid: str) -> tuple[str, str | None]:
    conn = sqlite3.connect(env.home / "state.db")
    row = conn.execute("SELECT state, reason FROM sandboxes WHERE id = ?", (sid,)).fetchone()
    conn.close()
    return row[0], row[1]


def _start(env: Env, sid: str) -> str:
    """Manager.start in a process of the test's environment (its DOCKER_HOST)."""
    import subprocess
    import sys

    code = ("import asyncio, sys\nfrom sandboxer.config import Settings\n"
            "from sandboxer.manager import Manager\n"
            "print(asyncio.run(Manager(Settings.from_env()).start(sys.argv[1])).state)")
    done = subprocess.run([sys.executable, "-c", code, sid], env=env.env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _profile(env: Env, name: str, extra: str) -> None:
    env.add_profile(name, f"id: profile.{name}\nextends: profile.compose-test\n{extra}")


def test_an_idle_compose_sandbox_is_stopped_and_a_busy_one_is_not(env: Env) -> None:
    _profile(env, "cidle", "idle: {after: 3s, action: stop}\n")
    busy = json.loads(env.cli("create", "profile.cidle", "--json", check=True).stdout)
    job = ("nohup sh -c 'while :; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
           "sleep 0.5; done' >/dev/null 2>&1 &")
    env.cli("ssh", busy["id"], "--", job, check=True)
    idle = json.loads(env.cli("create", "profile.cidle", "--json", check=True).stdout)
    _wait(lambda: _state(env, idle["id"])[0] == "stopped", 90, "the idle one to be stopped")
    reason = _state(env, idle["id"])[1]
    assert reason is not None
    assert reason.startswith("idle: idle for 3s: no session open, no setup step running")
    stopped_at = time.time()

    def seen_after() -> bool:
        doc = json.loads(env.cli("get", busy["id"], "--json", check=True).stdout)
        assert doc["state"] == "ready", doc["reason"]
        from datetime import datetime

        seen = doc["last_active_at"]
        return seen is not None and datetime.fromisoformat(
            seen.replace("Z", "+00:00")).timestamp() > stopped_at + 4

    _wait(seen_after, 90, "activity of the busy one past the idle one's stop")
    assert _start(env, idle["id"]) == "ready"


def test_retain_stops_a_compose_sandbox_at_the_lease_end_and_start_keeps_its_data(
        env: Env) -> None:
    _profile(env, "ckept", "ttl: {default: 5s, max: 1h, retain: 10m}\n")
    s = json.loads(env.cli("create", "profile.ckept", "--json", check=True).stdout)
    env.cli("ssh", s["id"], "--", "echo kept-work > ~/note.txt", check=True)
    # No keeper watches a profile without idle here: `sandboxer reap` does it.
    def reaped() -> bool:
        done = env.cli("reap", "--json", check=True)
        state = _state(env, s["id"])
        # Destroyed instead: its stop failed (the reaper logs why, and falls back).
        assert state[0] in ("ready", "stopped"), (state, done.stderr)
        return state[0] == "stopped"

    _wait(reaped, 90, "`sandboxer reap` to stop it at its lease's end")
    assert (_state(env, s["id"])[1] or "").startswith("expired: lease ended; kept stopped")
    env.cli("extend", s["id"], "--ttl", "10m", check=True)
    assert _start(env, s["id"]) == "ready"
    read = env.cli("ssh", s["id"], "--", "cat ~/note.txt", check=True)
    assert read.stdout == "kept-work\n"
