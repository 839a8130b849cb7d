"""A fork of a real ext.local sandbox through the manager: snapshot + create, with new
keys, a new host key, the profile's secret resolved again at the boundary (its new value),
its forward ports, its workspace copied; no secret value in the snapshot's data or the
store; deleting the snapshot leaves the fork whole."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sqlite3
from pathlib import Path

import pytest
from tests.canary_support import leaks

from sandboxer.config import Settings
from sandboxer.extensions.local import disk
from sandboxer.manager import Manager

from .conftest import raw_state, ssh

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(disk.available() is not None,
                       reason=f"no workspace images here: {disk.available()}"),
]
PROFILE = """\
id: profile.forky
extension: ext.local
ttl: {default: 10m, max: 1h}
spec: {limits: {disk: 256M}}
reachability: {user: dev, forward: [8080]}
setup:
  secret_refs: [{name: TOKEN, ref: "env:SBX_FORK_CANARY"}]
"""


def test_fork_of_a_real_local_sandbox(local_home: Settings, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = (f"cnryfork{secrets.token_hex(12)}" for _ in range(2))
    (tmp_path / "profiles" / "forky.yaml").write_text(PROFILE)
    monkeypatch.setenv("SBX_FORK_CANARY", first)
    manager = Manager(Settings.from_env())
    src = asyncio.run(manager.create("profile.forky"))
    reach = src.reachability.model_dump(mode="json")  # type: ignore[union-attr]
    done = ssh(reach, "echo work > w.txt && echo \"$TOKEN\" > /tmp/token && cat /tmp/token")
    assert done.stdout.decode().strip() == first, done.stderr

    monkeypatch.setenv("SBX_FORK_CANARY", second)  # the fork resolves its ref again
    manager = Manager(Settings.from_env())
    fork = asyncio.run(manager.fork(src.id, ttl="5m"))
    assert fork.state == "ready"
    assert fork.snapshot is not None
    freach = fork.reachability.model_dump(mode="json")  # type: ignore[union-attr]
    assert freach["identity_file"] != reach["identity_file"]
    assert freach["known_hosts"].split()[-1] != reach["known_hosts"].split()[-1]
    done = ssh(freach, "cat w.txt; echo \"$TOKEN\"; cat /run/secrets/TOKEN; echo; "
                       "[ -e /tmp/token ] || echo no-tmp")
    assert done.stdout.decode().split() == ["work", second, second, "no-tmp"], done.stderr
    assert raw_state(local_home, fork.id)["handle"]["data"]["forward"] == [8080]

    snap = manager.get_snapshot(fork.snapshot)
    assert snap.sandbox_id == src.id
    assert snap.state == "ready"
    assert str(snap.content_hash).startswith("sha256:")
    # No value in the snapshot's data, the state store, the home.
    assert leaks([first, second], [local_home.local_root / ".snapshots", local_home.home]) \
        == []
    with sqlite3.connect(local_home.db_path) as db:
        dump = "\n".join(db.iterdump())
    assert first not in dump
    assert second not in dump

    asyncio.run(manager.delete_snapshot(snap.id))
    assert not (local_home.local_root / ".snapshots" / snap.id).exists()
    done = ssh(freach, "cat w.txt")
    assert done.stdout == b"work\n", done.stderr
    asyncio.run(manager.destroy(fork.id))
    asyncio.run(manager.destroy(src.id))
