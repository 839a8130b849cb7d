"""A snapshot of an ext.local workspace leaves the host's reserve free, as a create does.

Without the check, one actor's repeated snapshots of one full workspace filled a shared
local root (a 1.3 GiB tmpfs went from 1199 MiB free to 99 MiB in 11 snapshots of a 128 MiB
sandbox, far below the 1 GiB a create keeps free), and other sandboxes' sparse images then
had no room left for the data their own limits.disk promised them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.errors import NoTarget
from sandboxer.extensions.base import Handle
from sandboxer.extensions.local import LocalExtension, control, disk, snapshots
from sandboxer.values import new_snapshot_id

SID = "sbx-roomcheck1"


def _sandbox(tmp_path: Path) -> tuple[LocalExtension, Handle]:
    settings = Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home"),
                                  "SANDBOXER_LOCAL_ROOT": str(tmp_path / "root")})
    d = control.sandbox_dir(settings, SID)
    (d / "workspace").mkdir(parents=True)  # not mounted: nothing to freeze
    control.write_record(settings, SID, {"sandbox_id": SID})
    disk.image_path(d).write_bytes(os.urandom(1 << 20))  # 1 MiB of data extents
    ext = LocalExtension(settings)
    ext._disk = True  # workspaces are images here (the endpoint runs as root)
    return ext, Handle(sandbox_id=SID, extension="ext.local", target="local", data={})


def test_a_snapshot_that_would_eat_the_reserve_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ext, handle = _sandbox(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(disk, "RESERVE", free - (1 << 19))  # less than the image's data
    with pytest.raises(NoTarget, match="snapshot"):
        asyncio.run(ext.snapshot(handle, new_snapshot_id(), lambda _m: None))
    top = snapshots.root_dir(ext.settings)
    assert not top.exists() or not list(top.iterdir()), "nothing is left of it"


def test_a_snapshot_that_fits_is_taken(tmp_path: Path) -> None:
    ext, handle = _sandbox(tmp_path)
    if shutil.disk_usage(tmp_path).free < disk.RESERVE + (8 << 20):
        pytest.skip("the test's filesystem has less than the reserve free")
    art = asyncio.run(ext.snapshot(handle, new_snapshot_id(), lambda _m: None))
    assert art.size_bytes >= 1 << 20
