"""ext.local's children, started off the event loop and awaited through a pidfd."""

from __future__ import annotations

import asyncio
import os
import subprocess

from sandboxer.extensions.local.spawn import spawn


def test_a_child_exit_status_is_awaited() -> None:
    async def main() -> tuple[int, int | None, int]:
        child = await spawn(["sh", "-c", "exit 3"], stdin=subprocess.DEVNULL)
        rc = await child.wait()
        again = await child.wait()
        return rc, child.returncode, again

    assert asyncio.run(main()) == (3, 3, 3)


def test_a_killed_child_reports_its_signal() -> None:
    async def main() -> int:
        child = await spawn(["sleep", "30"], start_new_session=True)
        assert child.returncode is None
        waiting = asyncio.create_task(child.wait())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        os.kill(child.pid, 9)
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(main()) == -9
