"""Leadership on one machine: an exclusive ``flock`` on a file beside the database.

The kernel drops the lock when the holding process dies, however it dies, so the next
``try_lead`` of another process succeeds at once.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

_ROLE = re.compile(r"[a-z][a-z0-9-]{0,31}")


class FileLeadership:
    """A role held through ``flock(LOCK_EX)`` on ``<database>.<role>.lock``."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the lock


class Leaderships:
    """``try_lead`` for the SQLite store; needs ``self.path``, the database file."""

    path: Path

    def try_lead(self, role: str) -> FileLeadership | None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"bad role name {role!r}")
        lock = self.path.with_name(f"{self.path.name}.{role}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return FileLeadership(fd)
