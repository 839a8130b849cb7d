"""SIGTERM with a create in flight: the request still gets a sandboxer.error/v1 document."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from tests.api_support import add_token, wait_for

from sandboxer.config import Settings
from sandboxer.store import open_store

from .conftest import Serve, serve_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("database")]  # both backends


def test_a_create_cut_short_by_shutdown_answers_an_error_document(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = serve_env(home)
    (home.parent / "fake-profiles" / "slow.yaml").write_text(
        "id: profile.slow\nextension: ext.fake\nsetup: {instructions: ['sleep 60']}\n")
    settings = Settings.from_env(env)
    token = add_token(settings, "agt")
    server = Serve(env, tmp_path / "serve.log", grace="1")
    answer: list[httpx.Response] = []

    def create() -> None:
        answer.append(httpx.post(f"{server.url}/v1/sandboxes", json={"profile": "profile.slow"},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=90))

    worker = threading.Thread(target=create)
    worker.start()
    store = open_store(settings)
    wait_for(lambda: bool(store.query(states=["provisioning"])))
    assert server.stop() == 0
    worker.join(60)
    (r,) = answer
    assert r.headers["content-type"] == "application/json", r.text
    doc = r.json()
    assert doc["schema"] == "sandboxer.error/v1"
    assert (r.status_code, doc["code"]) == (502, "provision_failed")
    assert "shut down" in doc["message"]
    (s,) = store.query(states=["failed"])
    assert not (home / "fake" / s.id).exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_stops_at_start_when_the_database_cannot_be_reached(tmp_path: Path,
                                                                   workers: str) -> None:
    import subprocess

    from tests.integration.conftest import SANDBOXER

    env = serve_env(tmp_path / "home", SANDBOXER_DB_TIMEOUT="2",
                    SANDBOXER_DATABASE_URL="postgresql://u:pw-canary-7@127.0.0.1:1/db")
    res = subprocess.run([SANDBOXER, "serve", "--port", "0", "--workers", workers],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "is unavailable" in res.stderr
    assert "serving" not in res.stderr
    assert "pw-canary-7" not in res.stderr + res.stdout
