"""State Hub down, slow and failing while `sandboxer serve` restarts: every event still
arrives, exactly once per Idempotency-Key, in order per sandbox."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.api_support import StateHub, add_token, wait_for

from sandboxer.config import Settings
from sandboxer.store import open_store
from sandboxer.store.outbox import Outbox

from .conftest import Serve, serve_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("database")]  # both backends


def test_events_survive_outages_and_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub = StateHub(delay=1.0).start()
    hub.stop()  # the port is known and refuses connections
    env = serve_env(home, **hub.env())
    token = add_token(Settings.from_env(env), "agt")
    auth = {"Authorization": f"Bearer {token}"}

    first = Serve(env, tmp_path / "serve.log")
    ids = []
    for _ in range(3):
        made = httpx.post(f"{first.url}/v1/sandboxes", json={"profile": "profile.fake"},
                          headers=auth, timeout=30)
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    httpx.post(f"{first.url}/v1/sandboxes/{ids[0]}/extend", json={"ttl": "30m"}, headers=auth)
    outbox = Outbox(open_store(Settings.from_env(env)))
    wait_for(lambda: any(e["attempts"] for e in outbox.documents()))  # refused, retrying
    assert first.stop() == 0
    assert all(e["delivery"] != "delivered" for e in outbox.documents())

    hub.mode = "timeout"
    hub.start()
    second = Serve(env, tmp_path / "serve.log")
    try:
        ids.append(httpx.post(f"{second.url}/v1/sandboxes", json={"profile": "profile.fake"},
                              headers=auth, timeout=30).json()["id"])
        httpx.delete(f"{second.url}/v1/sandboxes/{ids[1]}", headers=auth, timeout=30)
        wait_for(lambda: sum(m == "timeout" for _k, m in hub.attempts) >= 2)
        hub.mode = "error"
        wait_for(lambda: sum(m == "error" for _k, m in hub.attempts) >= 2)
        hub.mode = "ok"
        expected = 3 * 2 + 1 + 2 + 1  # created+ready each, extended, one more, destroyed
        wait_for(lambda: len(hub.accepted) >= expected, timeout=30)
        docs = httpx.get(f"{second.url}/v1/events", headers=auth).json()["items"]
    finally:
        assert second.stop() == 0
        hub.stop()
    assert sorted(hub.accepted) == sorted(e["id"] for e in docs)
    assert len(hub.order) == len(set(hub.order)) == expected
    assert {e["delivery"] for e in docs} == {"delivered"}
    for sid in ids:
        seqs = [hub.accepted[k]["seq"] for k in hub.order if hub.accepted[k]["sandbox_id"] == sid]
        assert seqs == sorted(seqs), f"{sid}: delivered out of order"
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
