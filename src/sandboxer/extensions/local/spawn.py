"""Starting the endpoint's children without stalling its event loop.

A jail's bwrap (without setpriv and prlimit) and a session the spawner cannot start
(spawnerclient.py) start with a preexec step (a cgroup to join, namespaces to enter), so
they fork rather than vfork, and ``subprocess.Popen`` returns only once the child has
exec'd. Joining a cgroup waits for an RCU grace period (10-20 ms on some hosts); asyncio's
own subprocess support would block the event loop — every other SSH connection of the
endpoint — for all of it. ``spawn`` runs Popen in a worker thread instead and hands back a
``Child`` whose exit is awaited through a pidfd.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Process(Protocol):
    """A started child of the endpoint: one of ``spawn`` (``Child``) or of the spawner
    (spawnerclient.SpawnedChild)."""

    @property
    def pid(self) -> int:
        """Its pid (it leads its own session and process group where asked for)."""

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (negative: the signal), None while it runs."""

    @property
    def stderr(self) -> Any:
        """Our end of its stderr pipe (a binary file), or None."""

    def close_pipes(self) -> None:
        """Close our ends of its stdin/stdout/stderr pipes, if it has any."""

    async def wait(self) -> int:
        """Its exit status, once it exits."""

    def kill_group(self) -> None:
        """SIGKILL its process group (it leads one) unless its exit is known already;
        never a pid that may have been reused."""


class Child:
    """A child process: ``pid``, ``returncode`` (None while it runs), ``wait()``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def stderr(self) -> Any:
        return self.popen.stderr

    def close_pipes(self) -> None:
        """Close our ends of its stdin/stdout/stderr pipes, if it has any."""
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None:
                f.close()

    def kill_group(self) -> None:
        """SIGKILL its process group unless it was reaped (here, by ``poll``: until then
        its pid cannot be reused); gone already is fine."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        """Its exit status, once it exits (negative: the signal that ended it)."""
        rc = self.popen.poll()
        if rc is not None:
            return rc
        if self._exited is None:
            self._exited = self._watch()
        return await asyncio.shield(self._exited)

    def _watch(self) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:  # gone already (reaped by poll), or no pidfds: a thread waits
            return asyncio.ensure_future(asyncio.to_thread(self.popen.wait))

        def readable() -> None:
            rc = self.popen.poll()
            if rc is None:
                return
            loop.remove_reader(fd)
            os.close(fd)
            if not exited.done():
                exited.set_result(rc)

        loop.add_reader(fd, readable)
        readable()
        return exited


_WORKERS = 16  # spawns and cgroup joins wait on the kernel, not the CPU
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _reset() -> None:
    global _pool
    _pool = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_reset)


async def in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in one of the endpoint's own worker threads (not asyncio's default pool,
    which concurrent creates would fill with spawns waiting on the kernel)."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(_WORKERS, "sandboxer-spawn")
    return await asyncio.get_running_loop().run_in_executor(_pool, fn)


async def spawn(argv: list[str], **kwargs: Any) -> Child:
    """``subprocess.Popen(argv, **kwargs)`` in a worker thread; the started child (one
    whose caller was cancelled meanwhile is killed)."""
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, **kwargs)

    started = asyncio.ensure_future(in_thread(start))
    try:
        popen = await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(_kill)
        raise
    return Child(popen)


def _kill(started: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    if started.cancelled() or started.exception() is not None:
        return
    popen = started.result()
    with contextlib.suppress(OSError):
        popen.kill()
    threading.Thread(target=popen.wait, daemon=True).start()  # reaped, not a zombie
