"""The ext.local endpoint daemon starts with an allow-listed environment (issue 11 item 6).

It outlives the shell that created a sandbox, and ``/proc/PID/environ`` keeps what it was
started with: an ``env:`` secret variable, ``SANDBOXER_TOKEN`` or cloud credentials of the
caller must not be there, while the settings the daemon reads still arrive.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.extensions.local import control

pytestmark = pytest.mark.integration


def test_daemon_environ_holds_no_caller_secret(
    local_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries = {name: f"cnryenv{secrets.token_hex(10)}" for name in (
        "SBX_ENV_CANARY", "SANDBOXER_TOKEN", "AWS_SECRET_ACCESS_KEY", "BAO_TOKEN")}
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SANDBOXER_LOCAL_IDLE_EXIT", "4.5")
    (Path(os.environ["SANDBOXER_PROFILES"]) / "sec.yaml").write_text(
        "id: profile.sec\nextends: profile.local\nsetup:\n"
        "  secret_refs: [{name: TOKEN, ref: 'env:SBX_ENV_CANARY'}]\n")
    doc = LocalClient(Settings.from_env()).create("profile.sec").document()
    assert doc["state"] == "ready"
    pid = control.daemon_pid(local_home)
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    held = [v for v in canaries.values() if any(v.encode() in e for e in environ)]
    assert held == []
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    assert not names & set(canaries)
    # What the daemon reads still arrives.
    assert f"SANDBOXER_HOME={local_home.home}".encode() in environ
    assert b"SANDBOXER_LOCAL_IDLE_EXIT=4.5" in environ
    assert b"PATH=" + os.environ["PATH"].encode() in environ
