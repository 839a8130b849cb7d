"""ext.local's endpoint takes one lock per sandbox for its add and remove: they run in
turn, however the requests interleave."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sandboxer.config import Settings
from sandboxer.extensions.local.endpoint import Daemon


def test_an_op_waiting_behind_a_remove_still_excludes_the_next(tmp_path: Path) -> None:
    d = Daemon(Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home")}), host=None)  # type: ignore[arg-type]
    sid = "sbx-aaaaaaaaaa"

    async def main() -> bool:
        first = asyncio.Event()
        inside = asyncio.Event()
        leave = asyncio.Event()

        async def adding() -> None:  # an add in progress (ops take their turn as add_here does)
            async with d._turn(sid):
                first.set()
                await leave.wait()

        async def waiting() -> None:  # an add that arrived during the remove
            async with d._turn(sid):
                inside.set()
                await asyncio.sleep(3600)

        a = asyncio.create_task(adding())
        await first.wait()
        removing = asyncio.create_task(d.remove_here(sid))
        await asyncio.sleep(0)
        w = asyncio.create_task(waiting())
        await asyncio.sleep(0)
        leave.set()
        await a
        await removing
        await inside.wait()
        # A third op of the same sandbox must wait while the second one runs.
        excluded = d._lock(sid).locked()
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        return excluded and sid not in d._ops  # dropped once nobody waits for it

    assert asyncio.run(main())
