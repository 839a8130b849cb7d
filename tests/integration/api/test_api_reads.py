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
