"""A session's preexec step stays bound to the jail it was made for.

Sessions spawn in worker threads: between ``Jail.enter`` (on the event loop) and the fork
(in a thread) the loop runs on, and may stop that jail (a destroy, a revive) and start
another sandbox's, whose namespace fds can take the very same numbers. The session must
then enter its own jail's namespaces or none, never the other sandbox's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxer.extensions.local import jail
from sandboxer.extensions.local.holder import Jail
from sandboxer.extensions.local.spawn import spawn
from sandboxer.extensions.local.spec import LocalSpec

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0, reason="needs bwrap and root")


def _jail(tmp_path: Path, name: str) -> Jail:
    ws = tmp_path / name / "workspace"
    ws.mkdir(parents=True)
    return Jail(sandbox_id=name, user="sandbox", workspace=ws, host_uid=os.getuid(),
                spec=LocalSpec(hostname=name), bwrap=shutil.which("bwrap") or "bwrap",
                root=False, cgroup=None)


def test_a_session_made_for_a_stopped_jail_never_enters_the_next_one(tmp_path: Path) -> None:
    async def main() -> tuple[bytes, list[int], list[int]]:
        a, b = _jail(tmp_path, "sbx-aaaaaaaaaa"), _jail(tmp_path, "sbx-bbbbbbbbbb")
        await a.start()
        try:
            # What run_session takes on the loop before its spawn waits for a thread.
            preexec, fds = a.enter(pty=False)
            a_fds = sorted(a.ns.fds.values())
            await a.stop()  # meanwhile: a destroy, or a revive, of sandbox a
            await b.start()  # another sandbox's jail opens its namespaces
            try:
                try:
                    child = await spawn(["/usr/bin/cat", "/etc/hostname"], preexec_fn=preexec,
                                        pass_fds=fds, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                finally:
                    jail.close_fds(fds)
                out = await asyncio.to_thread(child.popen.stdout.read)  # type: ignore[union-attr]
                child.close_pipes()
                await child.wait()
                return out, a_fds, sorted(b.ns.fds.values())
            finally:
                await b.stop()
        finally:
            await a.stop()

    out, a_fds, b_fds = asyncio.run(main())
    assert set(a_fds) & set(b_fds)  # numbers taken again: the case this is about
    assert out == b"sbx-aaaaaaaaaa\n"  # its own jail's namespaces, kept by their fds
