"""Integration fixtures: a private SANDBOXER_HOME and helpers around real ext.local."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"


@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is required for integration tests (apt-get install bubblewrap)")
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("SANDBOXER_PROFILES", str(tmp_path / "profiles"))
    (tmp_path / "profiles").mkdir()
    settings = Settings.from_env()
    yield settings
    client = LocalClient(settings)
    for doc in client.list_documents():
        client.destroy(doc["id"])
    if settings.local_root.exists():
        shutil.rmtree(settings.local_root, ignore_errors=True)


def raw_state(settings: Settings, sandbox_id: str) -> dict[str, Any]:
    """Read a row without going through sand-boxer (no opportunistic reap)."""
    conn = sqlite3.connect(settings.db_path)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT state, reason, handle FROM sandboxes WHERE id = ?",
                       (sandbox_id,)).fetchone()
    conn.close()
    return {"state": row["state"], "reason": row["reason"],
            "handle": json.loads(row["handle"]) if row["handle"] else None}


def ssh(
    reach: dict[str, Any], command: str, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """The system OpenSSH client, exactly as the descriptor says, host key pinned."""
    import shlex

    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "--", command]
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
