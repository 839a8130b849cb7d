"""Helpers of the secret canary tests (ext.local and ext.compose-ssh)."""

from __future__ import annotations

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
                data = f.read_bytes()
            except OSError:
                continue
            found += [f"{f}: {c}" for c in canaries if c.encode() in data]
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
