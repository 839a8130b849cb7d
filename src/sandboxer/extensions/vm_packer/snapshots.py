"""Snapshots of ext.vm-packer's booted VMs: a qcow2 copy of the sandbox's disk overlay
(docs/extensions/vm-packer.md, "Snapshots").

- snapshot: under the sandbox's lock (stop, start and the keeper wait), a running guest
  gets ``sync`` over SSH and is paused with QMP ``stop`` (QEMU drains and flushes its
  block layer), the overlay is copied (``cp --reflink=auto --sparse=always``), and a guest
  paused here carries on (``cont``). A stopped or paused VM is copied as it is. The copy
  lives in ``$SANDBOXER_HOME/vm-snapshots/<snap-id>/`` (0700): ``disk.qcow2`` (0600) and
  ``snapshot.json`` (labels, the image the disk is an overlay of; no secret).
- provision from a snapshot: the new sandbox's overlay is its own copy of the snapshot's
  disk, over the same cached image, so deleting the snapshot never touches it.
- What the disk never holds: secrets and the environment live in the guest's tmpfs
  ``/run/secrets``, the host key in ``/run/sandboxer-ssh`` (the config drive, which is not
  copied, brings them at every boot); a fork gets its own keys, authorized_keys and
  binding.

The attach variant refuses: its disk is not sand-boxer's to copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typing_extensions import override

from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions.base import Handle, Snapshots, Target
from sandboxer.extensions.vm_packer import images, qmp, remote
from sandboxer.extensions.vm_packer.machine import TARGET, VMBase
from sandboxer.models.extension import SnapshotArtifact
from sandboxer.values import SNAPSHOT_ID

log = logging.getLogger(__name__)
LABEL = "sandboxer.snapshot"
DISK = "disk.qcow2"
META = "snapshot.json"
SYNC_TIMEOUT = 60.0  # seconds the guest's ``sync`` may take before the pause goes ahead
_NEEDS = ("image", "user")


class VMSnapshots(VMBase, Snapshots):
    """The ``Snapshots`` capability of ext.vm-packer (mixed into VMPackerExtension)."""

    def snapshot_root(self) -> Path:
        return self.settings.home / "vm-snapshots"

    def snapshot_dir(self, snapshot_id: str) -> Path:
        if not SNAPSHOT_ID.fullmatch(snapshot_id):
            raise InvalidInput(f"{snapshot_id!r} is not a snapshot id")
        return self.snapshot_root() / snapshot_id

    @override
    def snapshottable(self, handle: Handle) -> str | None:
        sid = handle.sandbox_id
        data = handle.data or self._record(sid)
        if data.get("kind") == "attach":
            return (f"{sid} is an attached VM ({data.get('user')}@{data.get('host')}:"
                    f"{data.get('port')}): its disk is not sand-boxer's to copy")
        record = self._record(sid)
        if any(k not in record for k in _NEEDS) or record.get("kind") != "boot":
            return f"{sid} has no boot record (booted by an older sand-boxer?); recreate it"
        return None

    @override
    async def snapshot(self, handle: Handle, snapshot_id: str,
                       progress: Callable[[str], None]) -> SnapshotArtifact:
        sid = handle.sandbox_id
        if (why := self.snapshottable(handle)) is not None:
            raise InvalidInput(f"{self.name} cannot snapshot {sid}: {why}")
        out = self.snapshot_dir(snapshot_id)
        self.snapshot_root().mkdir(mode=0o700, parents=True, exist_ok=True)
        out.mkdir(mode=0o700)
        try:
            async with self._locked(sid) as record:
                overlay = self.sandbox_dir(sid) / "overlay.qcow2"
                if not overlay.is_file():
                    raise ProvisionFailed(f"{sid} has no disk overlay to snapshot")
                await self._copy_quiesced(handle, overlay, out / DISK, progress)
            meta = {"labels": {LABEL: snapshot_id, "sandboxer.id": sid},
                    "sandbox_id": sid, "image": record["image"], "user": record["user"],
                    "disk": DISK}
            _write_private(out / META, json.dumps(meta, indent=2).encode() + b"\n")
            progress(f"{sid}: hashing the snapshot's disk")
            size, digest = await asyncio.to_thread(_hash, out / DISK)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        progress(f"{sid}: snapshot {snapshot_id}: {size} bytes, sha256:{digest[:12]}…")
        return SnapshotArtifact(snapshot_id=snapshot_id, extension=self.name, target=TARGET,
                                data={"kind": "disk", "image": meta["image"],
                                      "user": meta["user"], "sandbox_id": sid},
                                size_bytes=size, content_hash=f"sha256:{digest}")

    async def _copy_quiesced(self, handle: Handle, overlay: Path, dest: Path,
                             progress: Callable[[str], None]) -> None:
        """Copy ``overlay`` while the guest writes nothing: a running guest is synced and
        paused for the copy, then resumed; a paused or stopped one is copied as it is."""
        sid, d = handle.sandbox_id, self.sandbox_dir(handle.sandbox_id)
        paused_here = False
        if self._pid(sid) is not None and await qmp.status(d) == "running":
            rc, out = await remote.run(await self.endpoint(handle), "sync",
                                       timeout=SYNC_TIMEOUT)
            if rc != 0:  # the pause below still makes the copy crash-consistent
                log.warning("%s: sync in the guest before the snapshot failed: %s", sid,
                            out.strip()[-200:])
            await qmp.command(d, "stop")  # drains and flushes QEMU's block layer
            paused_here = True
        progress(f"{sid}: copying its disk ({overlay.stat().st_size} bytes)"
                 + (" while paused" if paused_here else ""))
        try:
            await self._check(copy_argv(overlay, dest), "copying the disk overlay")
            os.chmod(dest, 0o600)
        finally:
            if paused_here:
                await qmp.command(d, "cont")

    @override
    async def delete_snapshot(self, artifact: SnapshotArtifact) -> None:
        shutil.rmtree(self.snapshot_dir(artifact.snapshot_id), ignore_errors=True)

    @override
    async def owned_snapshots(self, target: Target) -> list[SnapshotArtifact]:
        root = self.snapshot_root()
        if not root.is_dir():
            return []
        found = []
        for d in sorted(root.iterdir()):
            if not SNAPSHOT_ID.fullmatch(d.name):
                continue
            meta = _meta(d)
            data: dict[str, Any] = {"kind": "disk"}
            data |= {k: meta[k] for k in ("image", "user", "sandbox_id") if k in meta}
            found.append(SnapshotArtifact(snapshot_id=d.name, extension=self.name,
                                          target=TARGET, data=data))
        return found

    # -- provision from a snapshot ------------------------------------------------------

    def snapshot_image(self, artifact: SnapshotArtifact) -> Path:
        """The cached image the snapshot's disk is an overlay of (it must still be there)."""
        if artifact.extension != self.name or artifact.data.get("kind") != "disk":
            raise InvalidInput(f"snapshot {artifact.snapshot_id} is not a disk of "
                               f"{self.name} (it is of {artifact.extension})")
        image = Path(str(artifact.data.get("image", "")))
        missing = [f for f in images.ENTRY_FILES if not (image / f).is_file()]
        if not image.is_absolute() or missing:
            raise ProvisionFailed(f"the image {image} that snapshot {artifact.snapshot_id}'s "
                                  "disk is an overlay of is gone from the image cache",
                                  hint="the snapshot cannot boot without it; delete it")
        return image

    async def overlay_from(self, artifact: SnapshotArtifact, overlay: Path,
                           grow: int | None) -> None:
        """The sandbox's own overlay: a copy of the snapshot's disk (grown to ``grow``
        bytes when that is more than it has)."""
        disk = self.snapshot_dir(artifact.snapshot_id) / DISK
        if not disk.is_file():
            raise ProvisionFailed(f"snapshot {artifact.snapshot_id} has no disk ({disk})",
                                  hint="it was deleted meanwhile; take another")
        await self._check(copy_argv(disk, overlay), "copying the snapshot's disk")
        os.chmod(overlay, 0o600)
        if grow and grow > await self._virtual_size(overlay):
            await self._check(["qemu-img", "resize", "-q", "-f", "qcow2", "--", str(overlay),
                               str(grow)], "growing the overlay")

    async def _virtual_size(self, disk: Path) -> int:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "info", "--output=json", "-f", "qcow2", "--", str(disk),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        try:
            return int(json.loads(out)["virtual-size"])
        except (ValueError, KeyError, TypeError) as e:
            raise ProvisionFailed(f"qemu-img info {disk} failed: {out.decode()[-300:]}") from e


def copy_argv(src: Path, dest: Path) -> list[str]:
    """A copy that shares blocks where the file system can (reflink), else keeps holes."""
    return ["cp", "--reflink=auto", "--sparse=always", "--", str(src), str(dest)]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _meta(d: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((d / META).read_text())
        if isinstance(doc, dict):
            return doc
    return {}


def _hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()
