"""Child processes with a deadline: kill on timeout without racing the child's own exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
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
    bomb respawns between two passes). Returns what still lives after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while pids := find():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return pids
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return set()
