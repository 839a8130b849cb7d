"""An early ``add`` returns while the jail starts; a jail that fails before ``started``
is asked about must still be reported as failed, never as started."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.extensions import _keys
from sandboxer.extensions.local.endpoint import Daemon
from sandboxer.extensions.local.holder import JailError
from sandboxer.openssh import write_private

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bwrap")


def test_a_jail_that_failed_before_started_was_asked_is_reported(tmp_path: Path) -> None:
    d = Daemon(Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home")}), host=None)  # type: ignore[arg-type]
    d.cgroups = None  # no cgroup left behind by this bare endpoint
    host_private, _ = _keys._new_pair()
    _, client_public = _keys._new_pair()
    key = tmp_path / "host"
    write_private(key, host_private)
    sid = "sbx-failedjail"
    req = {"sandbox_id": sid, "user": "sandbox", "host_key_path": str(key),
           "authorized_key": client_public, "host_uid": os.getuid(), "spec": {},
           # bwrap cannot bind a workspace that does not exist: the jail fails.
           "workspace": str(tmp_path / "missing" / "workspace")}

    async def main() -> None:
        await d.add_here(req, {}, early=True)
        for _ in range(1000):
            if sid not in d.sandboxes:
                break
            await asyncio.sleep(0.01)
        assert sid not in d.sandboxes, "the jail never failed"
        with pytest.raises(JailError, match="did not start"):
            await d.started(sid)

    asyncio.run(main())
