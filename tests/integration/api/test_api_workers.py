"""`sandboxer serve --workers 2`: two processes answer on one socket and stop cleanly; a
worker that dies is started again; workers stop when their supervisor is killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from tests.api_support import add_token, wait_for

from sandboxer.config import Settings

from .conftest import Serve, serve_env

pytestmark = pytest.mark.integration
HEADER = "x-sandboxer-worker"


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(x) for x in text.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _answered_by(url: str, token: str) -> str:
    # A new connection each time: the kernel hands it to whichever worker accepts it.
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        r = http.get(f"{url}/v1/whoami")
    assert r.status_code == 200, r.text
    assert r.json()["actor"] == "agt"
    return r.headers[HEADER]


def _both_answer(url: str, token: str) -> None:
    seen: set[str] = set()

    def both() -> bool:
        seen.add(_answered_by(url, token))
        return seen == {"1", "2"}

    wait_for(both, timeout=60, interval=0)


def test_two_workers_answer_and_stop_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = serve_env(home)
    token = add_token(Settings.from_env(env), "agt")
    server = Serve(env, tmp_path / "serve.log", args=("--workers", "2"))
    log = (tmp_path / "serve.log").read_text()
    assert log.count("sandboxer: serving ") == 1
    assert "2 workers" in log
    workers = _children(server.proc.pid)
    assert len(workers) == 2
    _both_answer(server.url, token)
    assert server.stop() == 0
    assert not any(_alive(pid) for pid in workers)
    assert (tmp_path / "serve.log").read_text().count("sandboxer: serving ") == 1


def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = serve_env(home)
    token = add_token(Settings.from_env(env), "agt")
    server = Serve(env, tmp_path / "serve.log", args=("--workers", "2"))
    try:
        victim = min(_children(server.proc.pid))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in _children(server.proc.pid)
                 and len(_children(server.proc.pid)) == 2, timeout=30)
        _both_answer(server.url, token)
        log = (tmp_path / "serve.log").read_text()
        assert f"(pid {victim}) died (signal 9); starting it again" in log
    finally:
        assert server.stop() == 0


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = serve_env(home)
    server = Serve(env, tmp_path / "serve.log", args=("--workers", "2"))
    workers = _children(server.proc.pid)
    server.kill()
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=30)
    assert "the supervisor is gone" in (tmp_path / "serve.log").read_text()
