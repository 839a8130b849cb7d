"""ext.local's sandbox dirs on the host: their host uids (as root), creation and removal."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed
from sandboxer.extensions._proc import kill_all
from sandboxer.extensions.local import control, uids


def claims_dir(settings: Settings) -> Path:
    """Machine-wide uid claims: one file per host uid naming the sandbox dir that owns it.

    Several SANDBOXER_HOMEs (users, test runs) share this machine's uid range, so the
    choice of a free uid must be made under one lock for the whole machine.
    """
    return Path(settings.env.get("SANDBOXER_LOCAL_UID_CLAIMS", "/var/lib/sandboxer/uids"))


def release_uid(settings: Settings, uid: int, sandbox_dir: Path) -> None:
    uids.release(claims_dir(settings), uid, sandbox_dir)


def uid_base(settings: Settings) -> int:
    return envvars.local_uid_base(settings.env)


def kill_uid(uid: int, timeout: float = 3.0) -> None:
    """SIGKILL every process of ``uid`` until none is left (a fork bomb respawns)."""
    if left := kill_all(lambda: uids.proc_uids().get(uid, set()), timeout):
        raise ProvisionFailed(f"processes of host uid {uid} survive SIGKILL: {sorted(left)}")


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents as 0711: passable, not listable, by jail uids."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        p.chmod(0o711)


def rmtree(path: Path) -> None:
    """Remove a sandbox dir; already gone is fine."""
    top = str(path)

    def onerror(func: Callable[..., Any], p: str, exc_info: Any) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        parent = os.path.dirname(p)
        # Without root, a jail may leave read-only dirs behind; its owner can chmod them.
        if not isinstance(exc, PermissionError) or p == top or not parent.startswith(top):
            raise exc
        os.chmod(parent, 0o700)
        func(p)

    shutil.rmtree(path, onerror=onerror)


def create(settings: Settings, sandbox_id: str, *, root: bool,
           workspace_uids: Callable[[], Iterable[int]]) -> tuple[int, Path, Path]:
    """Pick a free host uid and create the sandbox dir and its workspace (owned by it);
    FileExistsError when the dir exists. ``workspace_uids``: see ``uids.claim``."""
    s = settings
    d = control.sandbox_dir(s, sandbox_id)
    ws = d / "workspace"
    make_private_dirs(s.local_root)
    if not root:
        d.mkdir(mode=0o711)
        control.write_owner(s, d)
        ws.mkdir(mode=0o700)
        return os.getuid(), d, ws
    claims = claims_dir(s)
    # Concurrent creates of every home on this machine serialise here: keep it short.
    with uids.machine_lock(claims):
        make_private_dirs(s.local_root)  # again: a destroy may have removed it
        d.mkdir(mode=0o711)
        try:
            d.chmod(0o711)
            control.write_owner(s, d)
            try:
                uid = uids.claim(claims, uid_base(s), d, workspace_uids)
            except LookupError as e:
                raise ProvisionFailed(str(e)) from e
        except BaseException:
            rmtree(d)
            raise
    try:
        ws.mkdir(mode=0o700)
        os.chown(ws, uid, uid)
    except BaseException:
        rmtree(d)
        release_uid(s, uid, d)
        raise
    return uid, d, ws
