"""``limits.disk`` for ext.local: /workspace is an ext4 image of that size, loop-mounted.

A sparse file costs only what is written, and a full workspace fails with ENOSPC inside
the sandbox instead of filling the host's disk. It needs root (mount, a loop device); a
non-root endpoint leaves /workspace a plain directory and ``sandboxer doctor`` says so.
The image sits next to the workspace (``<sandbox dir>/workspace.img``) and survives an
endpoint restart or a reboot: ``mount`` is idempotent and runs again on restore.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

from sandboxer.errors import NoTarget, ProvisionFailed

IMAGE = "workspace.img"
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime"
_TIMEOUT = 60


def available() -> str | None:
    """None when images can be made here, else why not (for doctor and the fallback)."""
    if os.geteuid() != 0:
        return "not root: /workspace is a plain directory, bounded only by the host's disk"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install e2fsprogs mount)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control is missing)"
    return None


def image_path(sandbox_dir: Path) -> Path:
    return sandbox_dir / IMAGE


RESERVE = 1 << 30  # what a new image leaves free on the host's filesystem, at least


def check_room(directory: Path, size: int) -> None:
    """Images are sparse, so many can share a disk; one larger than what is free now could
    only fill the host's disk, and is refused."""
    vfs = os.statvfs(directory)
    free = vfs.f_bavail * vfs.f_frsize
    if size > free - RESERVE:
        raise NoTarget(
            f"limits.disk of {size >> 20} MiB does not fit the {free >> 20} MiB free under "
            f"{directory.parent} (a {RESERVE >> 20} MiB reserve stays free)",
            hint="ask for a smaller limits.disk or free space on the host")


def create(sandbox_dir: Path, size: int) -> Path:
    """A new, empty image of ``size`` bytes in ``sandbox_dir`` (its root directory is
    root's until ``mount`` hands it to the sandbox's uid)."""
    check_room(sandbox_dir, size)
    img = image_path(sandbox_dir)
    make(img, size)
    return img


def make(img: Path, size: int) -> None:
    """Format a new sparse file ``img`` (0600) as an empty ext4 file system.

    No journal (a workspace that outlives a crash is not promised) and no GDT blocks
    reserved for online growth (it never grows): mkfs then writes ~0.2 MB, not ~4 MB.
    """
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode",
              "-E", "nodiscard,lazy_itable_init=1,root_owner=0:0", "--", str(img)])
    except BaseException:
        img.unlink(missing_ok=True)
        raise


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def mount(sandbox_dir: Path, workspace: Path, owner: int | None = None) -> None:
    """Mount the image on the workspace directory unless it is mounted already; ``owner``:
    hand the image's root directory to that uid (a new image)."""
    if not is_mounted(workspace):
        try:
            _mount_loop(image_path(sandbox_dir), workspace)
        except OSError:
            # A kernel without LOOP_CONFIGURE (before 5.8): mount(8) sets the loop up.
            _run(["mount", "-o", MOUNT_OPTIONS, "--", str(image_path(sandbox_dir)),
                  str(workspace)])
    if owner is not None:
        os.chown(workspace, owner, owner)
    # The image's root replaces the 0700 directory it is mounted on: as private.
    os.chmod(workspace, 0o700)


_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4  # the loop device goes with the last unmount
_MS_NOSUID, _MS_NODEV, _MS_NOATIME = 2, 4, 1024
_EBUSY = 16
_MNT_DETACH = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc with the prototypes used here, made once (each dlopen costs ~0.1 ms)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _mount_loop(img: Path, workspace: Path) -> None:
    """``mount -o loop,nosuid,nodev,noatime IMG WORKSPACE`` without running mount(8):
    a free loop device configured in one ioctl (autoclear), then mount(2)."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        while True:
            n = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
            loop = os.open(f"/dev/loop{n}", os.O_RDWR | os.O_CLOEXEC)
            try:
                backing = os.open(img, os.O_RDWR | os.O_CLOEXEC)
                try:
                    # struct loop_config: fd, block_size, loop_info64 (232 bytes: lo_flags
                    # at 52, lo_file_name[64] at 56), 8 reserved u64.
                    info = bytearray(232)
                    struct.pack_into("I", info, 52, _LO_FLAGS_AUTOCLEAR)
                    name = os.fsencode(img)[:63]
                    info[56:56 + len(name)] = name
                    config = struct.pack("II", backing, 0) + bytes(info) + bytes(64)
                    try:
                        fcntl.ioctl(loop, _LOOP_CONFIGURE, config)
                    except OSError as e:
                        if e.errno == _EBUSY:  # another process took it meanwhile
                            continue
                        raise
                finally:
                    os.close(backing)
                flags = _MS_NOSUID | _MS_NODEV | _MS_NOATIME
                if _libc().mount(f"/dev/loop{n}".encode(), os.fsencode(workspace), b"ext4",
                                 flags, None) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mounting {img} on {workspace}: {os.strerror(err)}")
                return
            finally:
                os.close(loop)  # autoclear: a device we configured but did not mount goes
    finally:
        os.close(ctl)


def remount(sandbox_dir: Path, workspace: Path) -> None:
    """Mount an existing image again (a start, a restore) once its last mount is gone."""
    wait_detached(image_path(sandbox_dir))
    mount(sandbox_dir, workspace)


def attached(img: Path) -> bool:
    """Whether a loop device still has ``img`` as its backing file."""
    target = str(img.resolve())
    for f in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if f.read_text().strip() == target:
                return True
        except OSError:
            continue
    return False


def wait_detached(img: Path, timeout: float = 10.0) -> None:
    """Wait until no loop device holds ``img`` (a stopped sandbox's file system lives on
    until the last namespace that saw it is freed): mounting it through a second device
    meanwhile would give two live file systems on one image."""
    deadline = time.monotonic() + timeout
    while attached(img):
        if time.monotonic() > deadline:
            raise ProvisionFailed(f"ext.local: {img} is still attached to a loop device "
                                  f"after {timeout:.0f}s", hint="losetup -j shows by what")
        time.sleep(0.01)


def _syncfs(workspace: Path) -> None:
    """Write the workspace file system's dirty data to its image now: a lazy unmount
    does not, and nothing else may read the image meanwhile."""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _libc().syncfs(fd)
    finally:
        os.close(fd)


def unmount(workspace: Path, *, discard: bool = False) -> None:
    """Unmount (its data written to the image first, unless ``discard``: the image is
    deleted next), lazily when something still holds it; not mounted is fine.

    umount(2) itself, not umount(8): the loop device goes with the mount (autoclear), and
    a process of ~100 MiB starting a program costs a destroy ~2 ms."""
    if not is_mounted(workspace):
        return
    if not discard:
        with contextlib.suppress(OSError):
            _syncfs(workspace)
    path = os.fsencode(workspace)
    libc = _libc()
    if libc.umount2(path, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == _EBUSY and libc.umount2(path, _MNT_DETACH) == 0:
        return
    err = ctypes.get_errno() if err == _EBUSY else err
    if is_mounted(workspace):
        raise ProvisionFailed(f"ext.local: unmounting {workspace} failed: {os.strerror(err)}",
                              hint="`findmnt` and `fuser -vm` show what holds it")


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProvisionFailed(f"ext.local: {argv[0]} failed: {e}") from e
    if done.returncode != 0:
        raise ProvisionFailed(
            f"ext.local: {' '.join(argv[:1])} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-300:]}")
