"""Child processes with a deadline: kill on timeout without racing the child's own exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Set


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and reap it; one that has exited meanwhile is fine (asyncio raises
    ProcessLookupError once it has seen the exit, which is no error here)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


async def communicate(proc: asyncio.subprocess.Process, input: bytes | None,
                      timeout: float) -> tuple[bytes, bytes] | None:
    """``proc.communicate(input)`` within ``timeout``; None when it timed out, once the
    process is killed and reaped."""
    try:
        return await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        await kill(proc)
        return None
    except asyncio.CancelledError:  # the caller gave up: no child left running behind it
        await asyncio.shield(kill(proc))
        raise


def kill_all(find: Callable[[], Set[int]], timeout: float = 3.0) -> Set[int]:
    """SIGKILL every pid ``find`` returns, again and again, until it returns none (a fork
    bomb respawns between two passes). Returns what still lives after ``timeout``.

    Each pass waits for its processes' exits on pidfds rather than sleeping a guessed
    while: a destroy waits for its jail's exit, not for the next poll."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    seen: Set[int] = frozenset()
    while pids := find():
        if pids <= seen:  # all exited already, still listed a moment (not yet released)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        waits = [fd for fd in map(_kill_by_pidfd, pids) if fd is not None]
        if time.monotonic() > deadline:
            _close(waits)
            return pids
        _wait_exits(waits, deadline)
        seen = pids
    return set()


def _kill_by_pidfd(pid: int) -> int | None:
    """SIGKILL ``pid``; a pidfd to wait on for its exit, or None (gone, or no pidfds here:
    then the signal went by pid and the caller polls)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError:  # no pidfd_open (kernel < 5.3)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return None
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        os.close(fd)
        return None
    return fd


def _wait_exits(fds: list[int], deadline: float) -> None:
    """Until every pidfd of ``fds`` is readable (its process exited) or ``deadline``;
    closes them."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left = set(fds)
    try:
        while left:
            ms = max(0, int((deadline - time.monotonic()) * 1000))
            ready = poller.poll(ms)
            if not ready:
                return
            for fd, _event in ready:
                poller.unregister(fd)
                left.discard(fd)
    finally:
        _close(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
