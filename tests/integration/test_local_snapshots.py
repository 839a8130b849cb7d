"""ext.local snapshots on real sandboxes: a copy of the workspace image, taken of a ready
(busy writing), paused and stopped sandbox alike, each left in its state; a sandbox created
from it (grown to a larger limits.disk, its files its own uid's) that keeps working once the
snapshot is deleted; no secret value in any artifact; refusals that create nothing."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from tests.canary_support import leaks
from tests.integration.conftest import private_local, provision_local

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, SandboxNotFound
from sandboxer.extensions._ssh import ssh_run
from sandboxer.extensions.base import Endpoint, Handle, SnapshotArtifact
from sandboxer.extensions.local import LocalExtension, control, disk, snapshots
from sandboxer.extensions.local.spec import LocalSpec
from sandboxer.values import new_snapshot_id

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(disk.available() is not None,
                       reason=f"no workspace images here: {disk.available()}"),
]
CANARY = f"canary-snap-{secrets.token_hex(12)}"
SMALL = LocalSpec.model_validate({"limits": {"disk": "256M"}})
LARGER = LocalSpec.model_validate({"limits": {"disk": "512M"}})


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    with private_local() as s:
        yield s


def run(ep: Endpoint, cmd: str) -> tuple[int, str]:
    return asyncio.run(ssh_run(ep, cmd, timeout=30))


def take(ext: LocalExtension, h: Handle) -> SnapshotArtifact:
    said: list[str] = []
    artifact = asyncio.run(ext.snapshot(h, new_snapshot_id(), said.append))
    assert said, "progress was reported"
    return artifact


def test_snapshot_fork_and_delete(settings: Settings) -> None:
    ext = LocalExtension(settings)
    pid = os.getpid()
    h, ep = provision_local(ext, f"sbx-s{pid}-a", spec=SMALL,
                            secrets={"CANARY_TOKEN": SecretStr(CANARY)})
    # Data in the workspace; the secret used in the sandbox but kept out of /workspace.
    rc, out = run(ep, "mkdir -p src/deep && head -c 3000000 /dev/urandom > src/blob && "
                      "echo kept > src/deep/note && ln -s deep/note src/link && "
                      "chmod 0750 src/deep && echo \"$CANARY_TOKEN\" > /tmp/t && "
                      "cat /run/secrets/CANARY_TOKEN > /dev/shm/t && sha256sum src/blob")
    assert rc == 0, out
    blob_sum = out.split()[0]
    # A writer busy in the workspace while the snapshot is taken: the copy is of a frozen,
    # consistent file system, and the writer goes on after.
    assert run(ep, "setsid sh -c 'echo $$ > /tmp/busy.pid; i=0; while :; do i=$((i+1)); "
                   "echo $i >> busy.log; done' </dev/null >/dev/null 2>&1 &")[0] == 0
    snap = take(ext, h)
    sd = snapshots.snapshot_dir(settings, snap.snapshot_id)
    assert (snap.extension, snap.target) == ("ext.local", "local")
    assert str(snap.content_hash).startswith("sha256:")
    assert snap.content_hash == snapshots.content_hash(sd / disk.IMAGE)
    assert 3_000_000 < (snap.size_bytes or 0) < 256 << 20  # sparse: the data, not 256M
    assert snap.data["image_size"] == 256 << 20
    assert (sd / disk.IMAGE).stat().st_mode & 0o777 == 0o600
    assert sd.stat().st_mode & 0o777 == 0o700
    record = json.loads((sd / "snapshot.json").read_text())
    assert record["sandboxer.snapshot"] == snap.snapshot_id
    # The sandbox is still ready and writing.
    rc, out = run(ep, "a=$(wc -l < busy.log); sleep 0.2; b=$(wc -l < busy.log); "
                      "[ $b -gt $a ] && echo going")
    assert (rc, out) == (0, "going\n")
    # No secret value in any artifact (the image, its record) nor in the artifact JSON.
    assert leaks([CANARY], [sd]) == []
    assert CANARY not in snap.model_dump_json()

    # Paused and stopped sandboxes are snapshotted in their state.
    asyncio.run(ext.pause(h))
    paused = take(ext, h)
    assert control.read_record(settings, h.sandbox_id)["paused"] is True  # type: ignore[index]
    asyncio.run(ext.resume(h))
    assert run(ep, "kill $(cat /tmp/busy.pid); echo after-paused > later")[0] == 0
    h = asyncio.run(ext.stop(h))
    stopped = take(ext, h)
    assert control.read_record(settings, h.sandbox_id)["stopped"] is True  # type: ignore[index]
    assert not disk.is_mounted(Path(h.data["workspace"]))

    # A new sandbox from the first snapshot, with a larger limits.disk: its own grown copy,
    # its files its own uid's, none of the source's secrets, nothing written after.
    b, bep = provision_local(ext, f"sbx-s{pid}-b", spec=LARGER, snapshot=snap)
    rc, out = run(bep, "sha256sum src/blob; cat src/link; stat -c '%u %a' src/deep src/blob; "
                       "df -m --output=size /workspace | tail -1; "
                       "[ -e later ] || echo no-later; [ -e /tmp/t ] || echo no-tmp; "
                       "echo \"[$CANARY_TOKEN]\"; [ -s busy.log ] && echo busy-ok; "
                       "echo more >> src/deep/note && tail -1 src/deep/note")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].split()[0] == blob_sum
    assert lines[1] == "kept"
    assert lines[2:4] == ["1000 750", "1000 644"]
    assert int(lines[4]) > 400  # grown to about 512 MiB
    assert lines[5:] == ["no-later", "no-tmp", "[]", "busy-ok", "more"]
    host_uid = b.data["host_uid"]
    assert (Path(b.data["workspace"]) / "src" / "blob").stat().st_uid == host_uid

    # Snapshots this home owns; deleting one leaves the sandbox made from it whole.
    owned = asyncio.run(ext.owned_snapshots(ext.targets(settings)[0]))
    assert {a.snapshot_id for a in owned} == {snap.snapshot_id, paused.snapshot_id,
                                              stopped.snapshot_id}
    assert next(a for a in owned if a.snapshot_id == snap.snapshot_id) == snap
    asyncio.run(ext.delete_snapshot(snap))
    asyncio.run(ext.delete_snapshot(snap))  # idempotent
    assert not sd.exists()
    assert run(bep, "cat src/deep/note | head -1") == (0, "kept\n")

    # Refused before anything is made: a deleted snapshot, a smaller limits.disk.
    with pytest.raises(SandboxNotFound, match="no image"):
        provision_local(ext, f"sbx-s{pid}-c", spec=LARGER, snapshot=snap)
    tiny = LocalSpec.model_validate({"limits": {"disk": "128M"}})
    with pytest.raises(InvalidInput, match="is smaller"):
        provision_local(ext, f"sbx-s{pid}-c", spec=tiny, snapshot=stopped)
    assert not control.sandbox_dir(settings, f"sbx-s{pid}-c").exists()
    for a in (paused, stopped):
        asyncio.run(ext.delete_snapshot(a))
    assert not snapshots.root_dir(settings).exists()
    asyncio.run(ext.destroy(b))
    asyncio.run(ext.destroy(h))
