"""Snapshots of ext.local workspaces (the ``Snapshots`` capability).

A snapshot is a copy of the sandbox's workspace image (disk.py) in
``<local root>/.snapshots/<snapshot id>/``: ``workspace.img`` (0600), ``snapshot.json``
(its label ``sandboxer.snapshot``, the sandbox it came from, size and hash; no secret: the
workspace holds none of ours, secrets live in memory and the jail's /run tmpfs) and the
owner mark of the home that took it. The copy is a reflink (FICLONE) where the host's
filesystem shares blocks (btrfs, XFS), else a sparse copy of the image's data extents
(copy_file_range). A mounted workspace is frozen (FIFREEZE: dirty data written, writers
held) for the copy only and thawed at once; a stopped sandbox's image is copied as it lies;
a paused one stays paused. The sandbox keeps its state.

``content_hash`` is ``sha256:`` of the image's size and the sha256 of each of its 1 MiB
blocks (holes read as zeros), so a copy has the hash of its source whatever its layout of
holes, and a sparse image is hashed without reading its holes.

A sandbox created from a snapshot gets its own copy of the image (reflink or sparse copy),
grown to its profile's ``limits.disk`` when that is larger, its files handed from the
snapshotted sandbox's host uid to its own: it never depends on the snapshot afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from abc import abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, NoTarget, ProvisionFailed, SandboxNotFound
from sandboxer.extensions.base import Handle, SnapshotArtifact, Snapshots, Target
from sandboxer.extensions.local import control, disk
from sandboxer.values import SNAPSHOT_ID

log = logging.getLogger(__name__)
SNAPSHOTS = ".snapshots"  # under the local root; not a sandbox id, so never taken for one
LABEL = "sandboxer.snapshot"
RECORD = "snapshot.json"
FORMAT = "ext4-image"
BLOCK = 1 << 20
_ZERO_DIGEST = hashlib.sha256(bytes(BLOCK)).digest()
FICLONE = 0x40049409
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS,
               errno.EPERM}


def root_dir(settings: Settings) -> Path:
    return settings.local_root / SNAPSHOTS


def snapshot_dir(settings: Settings, snapshot_id: str) -> Path:
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise InvalidInput(f"ext.local: {snapshot_id!r} is not a snapshot id")
    return root_dir(settings) / snapshot_id


# -- copying and hashing ------------------------------------------------------------------


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data extent of ``fd`` (the whole file without SEEK_DATA)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only holes after pos
                return
            yield pos, size
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def copy_image(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst`` (0600); ``"reflink"`` or ``"sparse"``. Nothing
    is left at ``dst`` when it fails."""
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return _copy(s.fileno(), fd, src)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)


def _copy(src_fd: int, fd: int, src: Path) -> str:
    try:
        fcntl.ioctl(fd, FICLONE, src_fd)
        return "reflink"
    except OSError as e:
        if e.errno not in _NO_REFLINK:
            raise
    size = os.fstat(src_fd).st_size
    for start, end in _extents(src_fd, size):
        pos = start
        while pos < end:
            n = os.copy_file_range(src_fd, fd, end - pos, pos, pos)
            if n <= 0:
                raise OSError(errno.EIO, f"copying {src}: short copy at {pos}")
            pos += n
    os.ftruncate(fd, size)
    return "sparse"


def content_hash(path: Path) -> str:
    """``sha256:`` of the size and each 1 MiB block's sha256 (see the module docstring).
    Blocks holding data are hashed in threads (hashlib and pread release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    outer = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        outer.update(f"size={size}\n".encode())
        data: set[int] = set()
        for start, end in _extents(fd, size):
            data.update(range(start // BLOCK, (end - 1) // BLOCK + 1))

        def digest(i: int) -> bytes:
            return hashlib.sha256(os.pread(fd, BLOCK, i * BLOCK)).digest()

        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            hashed = dict(zip(sorted(data), pool.map(digest, sorted(data)), strict=True))
        for i in range((size + BLOCK - 1) // BLOCK):
            if i in hashed:
                outer.update(hashed[i])
                continue
            block_len = min(BLOCK, size - i * BLOCK)
            outer.update(_ZERO_DIGEST if block_len == BLOCK
                         else hashlib.sha256(bytes(block_len)).digest())
    return f"sha256:{outer.hexdigest()}"


@contextlib.contextmanager
def frozen(workspace: Path) -> Iterator[None]:
    """The mounted workspace's file system frozen (its data on the image, writers held)
    for the duration; not mounted: nothing to freeze."""
    if not disk.is_mounted(workspace):
        yield
        return
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        try:
            yield
        finally:
            fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


def remap_owner(workspace: Path, old: int, new: int) -> None:
    """Hand every file of ``old`` (uid and gid) under ``workspace`` to ``new``; links are
    not followed (lchown, a walk that does not enter symlinked dirs). Runs before the new
    sandbox's jail exists: nothing changes the tree meanwhile."""
    if old == new:
        return

    def fix(path: str, st: os.stat_result) -> None:
        uid = new if st.st_uid == old else -1
        gid = new if st.st_gid == old else -1
        if uid != -1 or gid != -1:
            os.lchown(path, uid, gid)

    fix(str(workspace), os.lstat(workspace))
    for top, dirs, files in os.walk(workspace):
        for name in [*dirs, *files]:
            p = os.path.join(top, name)
            fix(p, os.lstat(p))


def grow(img: Path, size: int) -> None:
    """Grow the (unmounted) image's file system to ``size`` bytes."""
    with open(img, "r+b") as f:
        os.ftruncate(f.fileno(), size)
    for argv in (["e2fsck", "-f", "-p", "--", str(img)], ["resize2fs", "--", str(img)]):
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        # e2fsck: 1 means it corrected something (a workspace frozen while mounted is
        # not marked clean), which is what -p is for.
        if done.returncode not in ((0, 1) if argv[0] == "e2fsck" else (0,)):
            raise ProvisionFailed(f"ext.local: {argv[0]} exited {done.returncode} growing "
                                  f"the workspace: {done.stderr.decode(errors='replace')[-300:]}")


# -- the capability ------------------------------------------------------------------------


class LocalSnapshots(Snapshots):
    """ext.local's ``Snapshots``: copies of workspace images (see the module docstring)."""

    settings: Settings
    name: ClassVar[str]

    @abstractmethod
    def _images(self) -> bool:
        """Whether workspaces are images here (root, mkfs.ext4, loop devices)."""

    @abstractmethod
    def _drop_empty_root(self) -> None:
        """Remove this home's local root once nothing is left in it."""

    @override
    def snapshottable(self, handle: Handle) -> str | None:
        if not self._images():
            return ("ext.local snapshots workspace images, which it makes only when its "
                    "endpoint runs as root (with mkfs.ext4 and loop devices): this "
                    "sandbox's /workspace is a plain directory")
        d = control.sandbox_dir(self.settings, handle.sandbox_id)
        if not disk.image_path(d).exists():
            return (f"ext.local sandbox {handle.sandbox_id} has no workspace image (it was "
                    "created without one)")
        return None

    @override
    async def snapshot(self, handle: Handle, snapshot_id: str,
                       progress: Callable[[str], None]) -> SnapshotArtifact:
        import asyncio

        why = self.snapshottable(handle)
        if why is not None:
            raise InvalidInput(why)
        progress("copying the workspace image")
        return await asyncio.to_thread(self._take, handle, snapshot_id)

    def _take(self, handle: Handle, snapshot_id: str) -> SnapshotArtifact:
        s, sid = self.settings, handle.sandbox_id
        d = control.sandbox_dir(s, sid)
        if control.read_record(s, sid) is None:
            raise SandboxNotFound(f"ext.local sandbox {sid} has no workspace under "
                                  f"{s.local_root}", hint="it was destroyed")
        sd = snapshot_dir(s, snapshot_id)
        _check_room(s.local_root, disk.image_path(d).stat().st_blocks * 512)
        root_dir(s).mkdir(mode=0o700, exist_ok=True)
        sd.mkdir(mode=0o700)
        try:
            control.write_owner(s, sd)
            img = sd / disk.IMAGE
            ws = d / "workspace"
            with frozen(ws):
                how = copy_image(disk.image_path(d), img)
                host_uid = ws.stat().st_uid
            digest = content_hash(img)
            st = img.stat()
            data = {"format": FORMAT, "image": disk.IMAGE, "image_size": st.st_size,
                    "source": sid, "host_uid": host_uid, "copy": how}
            artifact = SnapshotArtifact(snapshot_id=snapshot_id, extension=self.name,
                                        target="local", data=data,
                                        size_bytes=st.st_blocks * 512, content_hash=digest)
            _write_json(sd / RECORD, {LABEL: snapshot_id, **artifact.model_dump(mode="json")})
        except BaseException:
            shutil.rmtree(sd, ignore_errors=True)
            raise
        log.info("snapshot %s of %s: %d bytes (%s copy)", snapshot_id, sid,
                 artifact.size_bytes, how)
        return artifact

    @override
    async def delete_snapshot(self, artifact: SnapshotArtifact) -> None:
        import asyncio

        await asyncio.to_thread(self._delete, artifact.snapshot_id)

    def _delete(self, snapshot_id: str) -> None:
        sd = snapshot_dir(self.settings, snapshot_id)
        if not sd.exists() or control.owned_by(self.settings, sd) is False:
            return  # gone, or another home's on a shared local root
        shutil.rmtree(sd, ignore_errors=True)
        with contextlib.suppress(OSError):
            root_dir(self.settings).rmdir()  # the last one
            self._drop_empty_root()  # and no sandbox left either

    @override
    async def owned_snapshots(self, target: Target) -> list[SnapshotArtifact]:
        out = []
        top = root_dir(self.settings)
        for sd in sorted(top.iterdir()) if top.is_dir() else []:
            if not SNAPSHOT_ID.fullmatch(sd.name) or \
                    control.owned_by(self.settings, sd) is not True:
                continue
            try:
                raw = json.loads((sd / RECORD).read_text())
                out.append(SnapshotArtifact.model_validate(
                    {k: v for k, v in raw.items() if k != LABEL}))
            except (OSError, ValueError):
                # Taken but never recorded (a crash mid-copy): still ours to remove.
                out.append(SnapshotArtifact(snapshot_id=sd.name, extension=self.name,
                                            target="local"))
        return out


def source_image(settings: Settings, artifact: SnapshotArtifact, size: int) -> tuple[Path,
                                                                                     int]:
    """The image a sandbox is created from and the host uid owning its files; InvalidInput
    when it cannot be (checked before anything is created). The path comes from the
    snapshot id, never from the artifact's data."""
    sd = snapshot_dir(settings, artifact.snapshot_id)
    img = sd / disk.IMAGE
    data: dict[str, Any] = artifact.data
    if artifact.extension != "ext.local" or data.get("format") != FORMAT:
        raise InvalidInput(f"snapshot {artifact.snapshot_id} is not an ext.local workspace "
                           "image")
    if not img.is_file() or control.owned_by(settings, sd) is False:
        raise SandboxNotFound(f"ext.local: snapshot {artifact.snapshot_id} has no image "
                              f"under {root_dir(settings)}",
                              hint="it was deleted; take a new one")
    have = img.stat().st_size
    if size < have:
        raise InvalidInput(
            f"snapshot {artifact.snapshot_id} holds a {have >> 20} MiB workspace; the "
            f"profile's limits.disk ({size >> 20} MiB) is smaller",
            hint=f"use a profile whose limits.disk is at least {have >> 20}M")
    uid = data.get("host_uid")
    return img, uid if isinstance(uid, int) and not isinstance(uid, bool) else -1


def restore_workspace(sandbox_dir: Path, workspace: Path, size: int, uid: int,
                      source: tuple[Path, int]) -> None:
    """A new sandbox's workspace from a snapshot (``source_image``): its own copy of the
    image, mounted, its files ``uid``'s."""
    img, old_uid = source
    restore_image(img, sandbox_dir, size)
    disk.mount(sandbox_dir, workspace, owner=uid)
    if old_uid >= 0:
        remap_owner(workspace, old_uid, uid)


def restore_image(src: Path, sandbox_dir: Path, size: int) -> None:
    """The new sandbox's own image: a copy of ``src``, grown to ``size``."""
    disk.check_room(sandbox_dir, size)
    img = disk.image_path(sandbox_dir)
    copy_image(src, img)
    try:
        if img.stat().st_size < size:
            grow(img, size)
    except BaseException:
        img.unlink(missing_ok=True)
        raise


def _check_room(directory: Path, need: int) -> None:
    """What a copy takes (the image's data, not its size) must leave the reserve free."""
    vfs = os.statvfs(directory)
    free = vfs.f_bavail * vfs.f_frsize
    if need > free - disk.RESERVE:
        raise NoTarget(
            f"ext.local: a snapshot takes {need >> 20} MiB, and {free >> 20} MiB are free "
            f"under {directory} (a {disk.RESERVE >> 20} MiB reserve stays free)",
            hint="free space on the host, or delete snapshots (sandboxer snapshots list)")


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
