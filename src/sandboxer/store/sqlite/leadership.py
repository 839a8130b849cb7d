"""Leadership on one machine: an exclusive ``flock`` on a file beside the database.

The kernel drops the lock when the holding process dies, however it dies, so the next
``try_lead`` of another process succeeds at once. The holder writes who it is into the
file (``leader_of`` reads it back for the others). A lock file that was removed or
replaced while held no longer excludes anyone, so ``held()`` also checks that the path
still names the locked file: the holder then knows it lost the role.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from sandboxer.store.base import holder_text

_ROLE = re.compile(r"[a-z][a-z0-9-]{0,31}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


class FileLeadership:
    """A role held through ``flock(LOCK_EX)`` on ``<database>.<role>.lock``."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self._path = path

    def held(self) -> bool:
        return self._fd is not None and _same_file(self._fd, self._path)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the lock


class Leaderships:
    """``try_lead`` and ``leader_of`` for the SQLite store; needs ``self.path``, the
    database file."""

    path: Path

    def _lock_path(self, role: str) -> Path:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"bad role name {role!r}")
        return self.path.with_name(f"{self.path.name}.{role}.lock")

    def try_lead(self, role: str) -> FileLeadership | None:
        lock = self._lock_path(role)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not _same_file(fd, lock):  # removed or replaced between open and flock
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text().encode(), 0)
        return FileLeadership(fd, lock)

    def leader_of(self, role: str) -> str | None:
        lock = self._lock_path(role)
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:  # a shared lock is granted only while nobody holds the exclusive one
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
