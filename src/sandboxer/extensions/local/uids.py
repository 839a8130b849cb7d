"""Host uids of ext.local sandboxes (as root): one free uid per sandbox, claimed machine-wide.

Several SANDBOXER_HOMEs (users, test runs) share this machine's uid range, so a uid is
claimed by creating ``<claims>/<uid>`` (O_EXCL, naming the sandbox dir) under one flock
for the whole machine (``claims/.lock``). A claim whose sandbox dir is gone is stale and
taken over.

A long-lived process (the local service, ``sandboxer serve``) does not read every claim
and every process for each create: it remembers the uids it saw claimed, and which uids
run processes (a /proc scan, taken again in the background once it is ``SCAN_TTL`` old).
A uid remembered as taken may have become free meanwhile: skipping it costs nothing but
a higher uid, and the memory is dropped when the range seems full. A uid is only ever
chosen after its claim file was created exclusively, under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

SPAN = 65536
SCAN_TTL = 5.0  # seconds a /proc scan is trusted before one is taken again


def proc_uids() -> dict[int, set[int]]:
    """Real uid -> pids of every live (non-zombie) process on the host."""
    out: dict[int, set[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                text = f.read()
        except OSError:
            continue
        state = uid = None
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
        if uid is not None and state != "Z":
            out.setdefault(uid, set()).add(int(entry.name))
    return out


class _Memory:
    """What this process knows of the uids: claimed ones, and a recent /proc scan."""

    def __init__(self) -> None:
        self.claimed: set[int] = set()
        self.running: frozenset[int] = frozenset()
        self.scanned_at = -SCAN_TTL
        self.scanning = False
        self.guard = threading.Lock()

    def reset(self) -> None:
        self.claimed.clear()
        self.running = frozenset()
        self.scanned_at = -SCAN_TTL

    def scan(self) -> None:
        running = frozenset(proc_uids())
        with self.guard:
            self.running, self.scanned_at, self.scanning = running, time.monotonic(), False

    def busy(self) -> frozenset[int]:
        """The uids that ran processes lately; scans now only the first time, and in
        the background once the last scan is old."""
        with self.guard:
            age = time.monotonic() - self.scanned_at
            first = self.scanned_at < 0
            refresh = not first and age >= SCAN_TTL and not self.scanning
            if refresh:
                self.scanning = True
        if first:
            self.scan()
        elif refresh:
            threading.Thread(target=self.scan, name="sandboxer-uid-scan", daemon=True).start()
        return self.running


_memory = _Memory()
os.register_at_fork(after_in_child=_memory.reset)


@contextlib.contextmanager
def machine_lock(claims: Path) -> Iterator[None]:
    """The machine-wide lock every create of every home takes to claim a uid."""
    claims.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(claims / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stale(claim: Path) -> bool:
    """True when the claim's sandbox dir is gone (or the claim vanished meanwhile)."""
    try:
        owner = Path(claim.read_text().strip())
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return not owner.is_dir()


def claim(claims: Path, base: int, owner: Path, also_taken: Callable[[], Iterable[int]]) -> int:
    """Claim the first free uid of ``[base, base + SPAN)`` for the sandbox dir ``owner``.

    Call under ``machine_lock``. ``also_taken``: uids known to be in use otherwise (the
    workspaces of this home), asked only when this process has no memory yet.
    """
    for attempt in range(2):
        fresh = not _memory.claimed
        taken = set(_memory.busy())
        if fresh:
            taken |= set(also_taken())
        for uid in range(base, base + SPAN):
            if uid in taken or uid in _memory.claimed:
                continue
            path = claims / str(uid)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if not _stale(path):
                    _memory.claimed.add(uid)
                    continue
                path.unlink(missing_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{owner}\n")
            _memory.claimed.add(uid)
            return uid
        if attempt == 0:
            _memory.reset()  # what we remembered may have been freed: look again
    raise LookupError(f"no free host uid in [{base}, {base + SPAN})")


def release(claims: Path, uid: int, owner: Path) -> None:
    """Drop ``owner``'s claim of ``uid`` (after its dir is gone: the claim names it)."""
    path = claims / str(uid)
    with contextlib.suppress(OSError):
        if Path(path.read_text().strip()) == owner:
            path.unlink()
    _memory.claimed.discard(uid)
