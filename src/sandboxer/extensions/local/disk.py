"""``limits.disk`` for ext.local: /workspace is an ext4 image of that size, loop-mounted.

A sparse file costs only what is written, and a full workspace fails with ENOSPC inside
the sandbox instead of filling the host's disk. It needs root (mount, a loop device); a
non-root endpoint leaves /workspace a plain directory and ``sandboxer doctor`` says so.
The image sits next to the workspace (``<sandbox dir>/workspace.img``) and survives an
endpoint restart or a reboot: ``mount`` is idempotent and runs again on restore.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


def create(sandbox_dir: Path, size: int, uid: int) -> Path:
    """A new, empty image of ``size`` bytes whose root directory belongs to ``uid``.

    Images are sparse, so many can share a disk; one larger than what is free now could
    only fill the host's disk, and is refused.
    """
    vfs = os.statvfs(sandbox_dir)
    free = vfs.f_bavail * vfs.f_frsize
    if size > free - RESERVE:
        raise NoTarget(
            f"limits.disk of {size >> 20} MiB does not fit the {free >> 20} MiB free under "
            f"{sandbox_dir.parent} (a {RESERVE >> 20} MiB reserve stays free)",
            hint="ask for a smaller limits.disk or free space on the host")
    img = image_path(sandbox_dir)
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
          "-E", f"nodiscard,lazy_itable_init=1,root_owner={uid}:{uid}", "--", str(img)])
    return img


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def mount(sandbox_dir: Path, workspace: Path) -> None:
    """Mount the image on the workspace directory unless it is mounted already."""
    if not is_mounted(workspace):
        _run(["mount", "-o", MOUNT_OPTIONS, "--", str(image_path(sandbox_dir)),
              str(workspace)])
    # The image's root replaces the 0700 directory it is mounted on: as private.
    os.chmod(workspace, 0o700)


def unmount(workspace: Path) -> None:
    """Unmount, lazily when something still holds it; not mounted is fine."""
    if not is_mounted(workspace):
        return
    done = subprocess.run(["umount", "--", str(workspace)], capture_output=True,
                          timeout=_TIMEOUT, check=False)
    if done.returncode != 0 and is_mounted(workspace):
        _run(["umount", "--lazy", "--", str(workspace)])


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProvisionFailed(f"ext.local: {argv[0]} failed: {e}") from e
    if done.returncode != 0:
        raise ProvisionFailed(
            f"ext.local: {' '.join(argv[:1])} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-300:]}")
