"""Workspace images formatted ahead, in a long-lived process (after ``warm_up``).

A create that finds a spare of its size renames it into its sandbox dir (the same file
system: ``<local root>/.spares``) instead of formatting one; taking one starts a refill in
a background thread. A spare is an empty, freshly formatted ext4 file system whose root
directory is root's (mode 0700) until it is mounted for a sandbox and handed to its uid:
nothing secret rests in it. Spares are named by the process that made them; it removes
its own when it exits, and one that finds those of a dead process removes them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from sandboxer.extensions.local import dirs, disk

log = logging.getLogger(__name__)
SPARES = ".spares"  # under the local root; not a sandbox id, so never taken for one
SIZE = 12  # spares kept per (local root, image size)
# A refill starts this long after the take that asked for it: the create that took the
# spare does not share the CPU with a dozen mkfs runs (two vCPUs here: two busy processes
# each run ~1.6x slower than one alone). ``prefill`` starts at once.
REFILL_DELAY = 0.25


class _Pool:
    """Spare images of one size under one local root, made by this process."""

    def __init__(self, root: Path, size: int) -> None:
        self.dir = root / SPARES
        self.size = size
        self.ready: list[Path] = []
        self.filling = False
        self.made = 0
        self.guard = threading.Lock()

    def take(self) -> Path | None:
        with self.guard:
            spare = self.ready.pop() if self.ready else None
        self.refill(delay=REFILL_DELAY)
        return spare

    def refill(self, upto: int = SIZE, delay: float = 0.0) -> None:
        with self.guard:  # from half full, in one batch
            if self.filling or len(self.ready) > min(upto, SIZE) // 2:
                return
            self.filling = True
        threading.Thread(target=self._fill, args=(upto, delay), name="sandboxer-spares",
                         daemon=True).start()

    def _fill(self, upto: int, delay: float) -> None:
        try:
            time.sleep(delay)
            if not _state.enabled:  # the process dropped its spares meanwhile
                return
            # A fresh home's (or one whose last destroy removed it): ``prefill`` runs
            # before any create made it.
            dirs.make_private_dirs(self.dir.parent)
            self.dir.mkdir(mode=0o700, exist_ok=True)
            while _state.enabled and len(self.ready) < upto:
                disk.check_room(self.dir, self.size)
                self.made += 1
                img = self.dir / f"{os.getpid()}-{self.size}-{self.made}.img"
                disk.make(img, self.size)
                with self.guard:
                    self.ready.append(img)
        except Exception as e:  # creates format their own image meanwhile
            log.warning("making a spare workspace image under %s failed: %s", self.dir, e)
        finally:
            with self.guard:
                self.filling = False

    def drop(self) -> None:
        with self.guard:
            spares, self.ready = self.ready, []
        for img in spares:
            img.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


class _State:
    def __init__(self) -> None:
        self.enabled = False
        self.pools: dict[tuple[Path, int], _Pool] = {}
        self.guard = threading.Lock()

    def reset(self) -> None:
        # A forked child owns none of its parent's spares (the parent removes them).
        self.pools = {}
        self.guard = threading.Lock()


_state = _State()
os.register_at_fork(after_in_child=_state.reset)


def enable() -> None:
    """Keep spares in this (long-lived) process from now on."""
    _state.enabled = True


def take(root: Path, size: int) -> Path | None:
    """A spare image of ``size`` bytes under ``root``, now the caller's; None when there
    is none (or spares are not kept in this process). Starts a refill either way."""
    if not _state.enabled:
        return None
    return _pool(root, size).take()


def prefill(root: Path, size: int, count: int = 1) -> None:
    """Start making ``count`` spares of ``size`` under ``root`` now, in the background
    (a process that starts makes the likely first one while it loads the rest); the
    first ``take`` fills the pool from there."""
    if _state.enabled:
        _pool(root, size).refill(upto=count)


def _pool(root: Path, size: int) -> _Pool:
    key = (root, size)
    with _state.guard:
        pool = _state.pools.get(key)
        new = pool is None
        if pool is None:
            pool = _state.pools[key] = _Pool(root, size)
    if new:
        _sweep(pool.dir)
    return pool


def _sweep(directory: Path) -> None:
    """Remove the spares of processes that are gone."""
    with contextlib.suppress(OSError):
        for img in directory.iterdir():
            pid = img.name.split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                img.unlink(missing_ok=True)
            except PermissionError:
                pass


@atexit.register
def drop_all() -> None:
    """Remove this process's spares (at exit)."""
    _state.enabled = False
    for pool in list(_state.pools.values()):
        pool.drop()
