"""Helpers of the secret canary tests (ext.local and ext.compose-ssh)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"


def leaks(canaries: list[str], roots: list[Path]) -> list[str]:
    """'file: canary' for every file under ``roots`` (or a root that is a file) holding one."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        files = [root] if root.is_file() else [
            p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for f in files:
            try:
                hits = _holding(f, [c.encode() for c in canaries])
            except OSError:
                continue
            found += [f"{f}: {c.decode()}" for c in hits]
    return found


def _holding(path: Path, needles: list[bytes], chunk: int = 1 << 22) -> set[bytes]:
    """The needles found in ``path``, read in chunks over its data only: a sparse file
    (a 10 GiB workspace image, mostly holes) is searched without reading its holes."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles) - 1
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nothing but holes after pos
                    break
                start, end = pos, size  # no SEEK_DATA on this filesystem: read it all
            tail = b""
            f.seek(start)
            while start < end:
                block = f.read(min(chunk, end - start))
                if not block:
                    break
                window = tail + block
                found.update(n for n in needles if n in window)
                tail = window[-overlap:] if overlap else b""
                start += len(block)
            pos = end
    return found


class Cli:
    """Runs the installed CLI and keeps every byte it printed, to search for canaries."""

    def __init__(self, timeout: float = 120) -> None:
        self.timeout = timeout
        self.outputs: list[str] = []

    def __call__(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([SANDBOXER, *argv], capture_output=True, text=True,
                              timeout=self.timeout, env=dict(os.environ),
                              stdin=subprocess.DEVNULL, check=False)
        self.outputs += [done.stdout, done.stderr]
        return done
