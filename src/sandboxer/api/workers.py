"""`sandboxer serve --workers N`: N worker processes on one port, supervised.

The supervisor (the process `sandboxer serve` started as) binds the port (SO_REUSEPORT,
not listening: it only holds the port), migrates the store once, imports the server's
code and then forks the workers. Each listens on a socket of its own on that port
(SO_REUSEPORT: the kernel spreads new connections evenly over the listeners; with one
shared listening socket the worker that wakes first accepts a whole burst, and
keep-alive clients stay on it) and builds everything else of its own after the fork —
its FastAPI app, its ``Service``, its store and connection pool, its lifespan (the
background loops, the leadership campaign) — so nothing with a thread or a connection
crosses a fork. Only processes of the same user may join a SO_REUSEPORT port.

What the supervisor does:

- prints the ``sandboxer: serving URL`` line once, when every worker accepts requests;
- forwards SIGTERM and SIGINT to the workers as SIGTERM (each stops as one server does:
  ``--grace`` for requests and creates in flight); a worker still running ``--grace`` +
  60 s later (a create being cleaned up) is killed, and the exit status is then 1;
- a worker that dies before it serves (a broken configuration, an unreachable database)
  stops the others and the server exits 1: retrying would only repeat the error;
- a worker that dies while serving is reported (its index, pid and exit status) and
  started again; more than ``MAX_RESTARTS`` restarts within ``RESTART_WINDOW`` seconds
  stop the server with exit status 1 instead of crash-looping;
- a worker whose supervisor is gone (killed with SIGKILL) stops by itself: it watches a
  pipe only the supervisor holds open.

Every response of a worker carries ``X-Sandboxer-Worker: I`` (its index, 1..N), so an
operator (and the tests) can see which worker answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
KILL_AFTER = 60.0  # beyond --grace: a create cancelled at shutdown destroys what it made
HEADER = b"x-sandboxer-worker"


class Worker:
    """What a worker process knows of its supervisor: its index, the pipe it reports
    "started" on and the pipe whose end tells it the supervisor is gone."""

    def __init__(self, index: int, ready_fd: int, lifeline_fd: int) -> None:
        self.index = index
        self._ready_fd = ready_fd
        self._lifeline_fd = lifeline_fd

    def started(self) -> None:
        os.write(self._ready_fd, f"{self.index}\n".encode())

    def watch_parent(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` (in the running loop) when the supervisor's end of the lifeline
        closes: it died without forwarding a signal."""
        import asyncio

        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(self._lifeline_fd)
            log.error("worker %d: the supervisor is gone; stopping", self.index)
            stop()

        loop.add_reader(self._lifeline_fd, gone)

    def asgi(self, app: Any) -> Any:
        """``app`` with this worker's index in every HTTP response's headers."""
        value = str(self.index).encode()

        async def tagged(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def send_tagged(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), (HEADER, value)]
                await send(message)

            await app(scope, receive, send_tagged)

        return tagged


class Supervisor:
    """Starts, watches, restarts and stops ``count`` worker processes (module docstring)."""

    def __init__(self, count: int, *, grace: float, banner: str) -> None:
        self.count = count
        self.grace = grace
        self.banner = banner
        self.workers: dict[int, int] = {}  # pid -> index
        self.ready: set[int] = set()  # indexes that have served
        self.stopping = False
        self.restarts: list[float] = []
        self.status = 0

    def run(self, serve: Callable[[Worker], None]) -> int:
        """Supervise until a signal stops the workers; the exit status."""
        self._ready_r, self._ready_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(1, self.count + 1):
                self._start(index, serve)
            self._watch(serve)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._ready_r, self._ready_w, self._life_r, self._life_w):
                os.close(fd)
        return self.status

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("stopping %d worker(s) (signal %d)", len(self.workers), signum)
        self.stopping = True

    def _start(self, index: int, serve: Callable[[Worker], None]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.close(self._ready_r)
                os.close(self._life_w)
                serve(Worker(index, self._ready_w, self._life_r))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.workers[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def _watch(self, serve: Callable[[Worker], None]) -> None:
        announced = False
        deadline: float | None = None
        while self.workers:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.grace + KILL_AFTER
                self._signal_all(signal.SIGTERM)
            if deadline is not None and time.monotonic() > deadline:
                log.error("%d worker(s) still running %.0fs after --grace; killing them",
                          len(self.workers), KILL_AFTER)
                self._signal_all(signal.SIGKILL)
                self.status = 1
                deadline = float("inf")
            readable, _, _ = select.select([self._ready_r], [], [], 0.1)
            if readable:
                self._read_ready()
            if not announced and len(self.ready) == self.count and not self.stopping:
                sys.stderr.write(self.banner)
                sys.stderr.flush()
                announced = True
            self._reap(serve)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        self.ready.update(int(x) for x in data.split())

    def _signal_all(self, sig: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile: reaped next
                os.kill(pid, sig)

    def _reap(self, serve: Callable[[Worker], None]) -> None:
        while self.workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            index = self.workers.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self._read_ready()  # it may have reported "started" just before it died
            if self.stopping:
                if code != 0:
                    log.warning("worker %d (pid %d) stopped with exit status %d",
                                index, pid, code)
                    self.status = 1
                continue
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            if index not in self.ready:
                log.error("worker %d (pid %d) failed to start (%s); stopping the server",
                          index, pid, how)
                self._give_up()
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
            if len(self.restarts) >= MAX_RESTARTS:
                log.error("worker %d (pid %d) died (%s): %d restarts within %.0fs; "
                          "stopping the server", index, pid, how, len(self.restarts),
                          RESTART_WINDOW)
                self._give_up()
                continue
            self.restarts.append(now)
            log.error("worker %d (pid %d) died (%s); starting it again", index, pid, how)
            self.ready.discard(index)
            self._start(index, serve)

    def _give_up(self) -> None:
        self.status = 1
        self.stopping = True
