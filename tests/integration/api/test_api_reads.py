"""A server's reads check endpoints at most once a second per sandbox, yet a killed
ext.local endpoint still comes back through `GET /v1/sandboxes/{id}`."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api_support import ApiServer, add_token, wait_for
from tests.integration.conftest import port_open

from sandboxer.config import Settings

pytestmark = pytest.mark.integration


def test_a_killed_endpoint_comes_back_through_a_read(local_home: Settings) -> None:
    token = add_token(local_home, "agt")
    headers = {"Authorization": f"Bearer {token}"}
    with ApiServer(local_home) as server:
        made = httpx.post(f"{server.url}/v1/sandboxes", json={"profile": "profile.local",
                                                              "ttl": "5m"},
                          headers=headers, timeout=120)
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        assert httpx.get(f"{server.url}/v1/sandboxes/{sid}", headers=headers).status_code \
            == 200
        pid = int((local_home.run_dir / "local-endpoint.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not port_open(made.json()["reachability"]["port"]), timeout=10)

        def served() -> bool:
            doc: dict[str, Any] = httpx.get(f"{server.url}/v1/sandboxes/{sid}",
                                            headers=headers, timeout=60).json()
            return doc["state"] == "ready" and port_open(doc["reachability"]["port"])

        wait_for(served, timeout=60, interval=0.2)
        new = int((local_home.run_dir / "local-endpoint.pid").read_text())
        assert new != pid
        assert Path(f"/proc/{new}").exists()
        httpx.delete(f"{server.url}/v1/sandboxes/{sid}", headers=headers, timeout=120)


def test_an_unknown_token_never_holds_the_loop_on_the_database(
        settings: Settings, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token the server has not seen is looked up off the event loop: while its lookup
    waits on a locked tokens table, the same server still answers other requests."""
    import threading

    import psycopg

    monkeypatch.setenv("SANDBOXER_DATABASE_URL", pg_url)
    on_pg = Settings.from_env()
    add_token(on_pg, "agt")  # migrates the database, makes the tokens table
    with ApiServer(on_pg, background=False) as server, \
            psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")  # until rollback
        answers: list[int] = []
        stranger = threading.Thread(target=lambda: answers.append(httpx.get(
            f"{server.url}/v1/sandboxes/sbx-0000000000000000",
            headers={"Authorization": "Bearer sbxt_not-a-token"}, timeout=60).status_code))
        stranger.start()
        wait_for(lambda: _waiting_on_lock(pg_url), timeout=20)
        # The lookup is stuck behind the lock; the loop is not.
        assert httpx.get(f"{server.url}/openapi.json", timeout=20).status_code == 200
        assert not answers
        locker.rollback()
        stranger.join(60)
        assert answers == [401]


def _waiting_on_lock(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()").fetchone()
    return bool(row and row[0])
