"""ext.local in a warm process that runs its own endpoint (as the local service does):
creates call the endpoint directly, take spares made ahead, and stay proven ready."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import ssh

from sandboxer.config import Settings
from sandboxer.extensions import base
from sandboxer.extensions.local import control, disk, spares
from sandboxer.models.requests import CreateRequest
from sandboxer.service.app import Service


async def _warm(settings: Settings, rounds: int, concurrency: int = 1) -> list[dict[str, Any]]:
    svc = Service(settings, upkeep=False)
    ext: Any = svc.manager.extension("ext.local")
    served = asyncio.create_task(ext.housekeep(ext.host))
    try:
        for _ in range(500):
            if ext._here() is not None:
                break
            await asyncio.sleep(0.01)
        assert ext._here() is not None, "the endpoint of this process never accepted"
        out = []
        for _ in range(rounds):
            done = await asyncio.gather(*(svc.create(CreateRequest(profile="profile.local"))
                                          for _ in range(concurrency)))
            for st in done:
                doc = st.document()
                reach = doc["reachability"]
                ws = Path(control.sandbox_dir(settings, st.id) / "workspace")
                said = await asyncio.to_thread(ssh, reach, "id -u; echo hi > f; cat f")
                info = {"doc": doc, "ssh": said.stdout,
                        "mounted": os.path.ismount(ws), "mode": stat.S_IMODE(ws.stat().st_mode),
                        "owner": ws.stat().st_uid,
                        "key_mode": stat.S_IMODE(Path(reach["identity_file"]).stat().st_mode)}
                out.append(info)
        for info in out:
            await svc.destroy(info["doc"]["id"])
        return out
    finally:
        served.cancel()
        with contextlib.suppress(BaseException):
            await served
        svc.close()


def test_warm_creates_are_ready_through_their_own_endpoint(local_home: Settings) -> None:
    base.warm_up_all()
    try:
        made = asyncio.run(_warm(local_home, rounds=3, concurrency=3))
    finally:
        spares.drop_all()
    ports = {m["doc"]["reachability"]["port"] for m in made}
    assert len(ports) == len(made) == 9  # one endpoint each
    for m in made:
        assert m["doc"]["state"] == "ready"
        assert m["ssh"] == b"1000\nhi\n"  # the jail user, in its workspace
        assert m["key_mode"] == 0o600
        assert m["mode"] == 0o700
        if os.geteuid() == 0 and disk.available() is None:
            assert m["mounted"]
            assert m["owner"] != 0
    assert len({m["owner"] for m in made}) == len(made)  # a host uid each
    assert not (local_home.local_root / spares.SPARES).exists()  # dropped at the end


@pytest.mark.skipif(os.geteuid() != 0 or disk.available() is not None,
                    reason="workspace images need root and loop devices")
def test_a_spare_image_is_empty_and_root_s_until_it_is_taken(tmp_path: Path) -> None:
    spares.enable()
    try:
        assert spares.take(tmp_path, 64 << 20) is None  # none yet: a refill starts
        spare = None
        for _ in range(500):
            spare = spares.take(tmp_path, 64 << 20)
            if spare is not None:
                break
            time.sleep(0.01)
        assert spare is not None
        assert spare.parent == tmp_path / spares.SPARES
        assert stat.S_IMODE(spare.stat().st_mode) == 0o600
        d = tmp_path / "sbx-1"
        (d / "workspace").mkdir(parents=True)
        spare.rename(disk.image_path(d))
        disk.mount(d, d / "workspace", owner=4242)
        try:
            ws = d / "workspace"
            assert ws.stat().st_uid == 4242
            assert stat.S_IMODE(ws.stat().st_mode) == 0o700
            assert sorted(p.name for p in ws.iterdir()) == ["lost+found"]
        finally:
            disk.unmount(d / "workspace")
    finally:
        spares.drop_all()


@pytest.mark.skipif(os.geteuid() != 0 or disk.available() is not None,
                    reason="workspace images need root and loop devices")
def test_a_spare_removed_meanwhile_gives_way_to_a_new_image(local_home: Settings,
                                                           tmp_path: Path) -> None:
    # Another process sharing the local root may remove it (one in another pid namespace
    # takes this process for a dead one), or an operator: the create still gets a workspace.
    from sandboxer.extensions.local import LocalExtension

    d = tmp_path / "sbx-gone"
    ws = d / "workspace"
    ws.mkdir(parents=True)
    LocalExtension(local_home)._image(d, ws, 64 << 20, 4242, tmp_path / "no-such-spare.img")
    try:
        assert disk.is_mounted(ws)
        assert ws.stat().st_uid == 4242
    finally:
        disk.unmount(ws)
