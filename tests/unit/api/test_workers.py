"""The supervisor of `serve --workers N` with real forked workers (no server in them)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxer.api import workers
from sandboxer.api.server import serve
from sandboxer.api.workers import Supervisor, Worker
from sandboxer.config import Settings
from sandboxer.errors import UsageError


def test_a_worker_that_fails_before_it_serves_stops_the_server() -> None:
    def broken(_worker: Worker) -> None:
        raise SystemExit(3)  # e.g. the database cannot be reached

    assert Supervisor(2, grace=1, banner="never\n").run(broken) == 1


def test_a_worker_that_keeps_dying_stops_the_server(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(workers, "MAX_RESTARTS", 2)
    starts = tmp_path / "starts"

    def crashing(worker: Worker) -> None:
        with starts.open("a") as f:
            f.write(f"{worker.index}\n")
        worker.started()
        os._exit(1)  # dies while serving

    assert Supervisor(1, grace=1, banner="").run(crashing) == 1
    assert starts.read_text().split() == ["1", "1", "1"]  # the first and two restarts


def test_sigterm_stops_the_workers_and_exits_0(tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    def serving(worker: Worker) -> None:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # a server's clean stop
        worker.started()
        (tmp_path / f"up-{worker.index}").touch()
        while True:
            time.sleep(0.05)

    def stop_later(*_: Any) -> None:
        if len(list(tmp_path.glob("up-*"))) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, 0)

    previous = signal.signal(signal.SIGALRM, stop_later)
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
    try:
        assert Supervisor(2, grace=1, banner="serving once\n").run(serving) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert capfd.readouterr().err.count("serving once") == 1


def test_each_response_names_its_worker() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    tagged = Worker(2, -1, -1).asgi(app)
    asyncio.run(tagged({"type": "http"}, None, send))
    assert sent[0]["headers"] == [(b"x-sandboxer-worker", b"2")]


@pytest.mark.parametrize("count", [0, 65])
def test_a_worker_count_out_of_range_is_refused(settings: Settings, count: int) -> None:
    with pytest.raises(UsageError, match="--workers"):
        serve(settings, port=0, workers=count)


def test_accepted_connections_do_not_wait_for_nagle() -> None:
    """bind()'s sockets say TCP, so asyncio sets TCP_NODELAY on each accepted connection
    (without it every keep-alive response waited ~40 ms for the client's delayed ACK)."""
    import socket

    from sandboxer.api.server import bind

    async def main() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        for reuse_port in (False, True):
            listening = bind("127.0.0.1", 0, reuse_port=reuse_port)
            server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
            _reader, writer = await asyncio.open_connection(
                "127.0.0.1", listening.getsockname()[1])
            nodelay = await seen
            writer.close()
            server.close()
            if not nodelay:
                return 0
            seen = asyncio.get_running_loop().create_future()
        return 1

    assert asyncio.run(main()) == 1
