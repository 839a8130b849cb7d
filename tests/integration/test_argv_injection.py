"""Option injection through the real CLI (issue 12, item 2): a user or host that would be
an option to ssh is refused (exit 4) before anything runs or is recorded."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sandboxer.config import Settings

from .conftest import SANDBOXER

pytestmark = pytest.mark.integration

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0000000000000000000000000000000000000000000"


def sandboxer(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOXER, *argv], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ}, stdin=subprocess.DEVNULL)


def profiles(tmp_path: Path, marker: Path) -> list[str]:
    """One hostile profile per place a user or host enters: ext.vm-packer's ssh.user (the
    case that ran ``id`` as root), attach.user and attach.host, reachability.user."""
    inject = f"-oProxyCommand=id>{marker};"
    attach = {"host": "127.0.0.1", "user": "ops", "host_key": KEY,
              "identity": str(tmp_path / "key")}
    specs = {
        "profile.vm-ssh-user": ("ext.vm-packer", {"packer": {"template": "base.json"},
                                                  "ssh": {"user": inject}}, "agent"),
        "profile.vm-attach-user": ("ext.vm-packer", {"attach": {**attach, "user": inject}},
                                   "agent"),
        "profile.vm-attach-host": ("ext.vm-packer", {"attach": {**attach, "host": inject}},
                                   "agent"),
        "profile.local-user": ("ext.local", {}, inject),
    }
    for pid, (ext, spec, user) in specs.items():
        doc = {"id": pid, "extension": ext, "spec": spec, "reachability": {"user": user}}
        (tmp_path / "profiles" / f"{pid.split('.', 1)[1]}.yaml").write_text(json.dumps(doc))
    return list(specs)


def test_a_hostile_user_or_host_is_refused_before_anything_runs(
        local_home: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "key").write_text("not a key\n")
    (tmp_path / "key").chmod(0o600)
    for pid in profiles(tmp_path, marker):
        done = sandboxer("create", pid, "--ttl", "5m", "--json")
        assert done.returncode == 4, (pid, done.returncode, done.stderr)
        assert "expected a" in done.stderr, (pid, done.stderr)
        assert not marker.exists(), pid
    listed = sandboxer("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"] == []
    assert not (local_home.home / "vm").exists() or not any((local_home.home / "vm").iterdir())


@pytest.mark.parametrize(("url", "extra"), [
    ("ssh://u@127.0.0.1:22", ["--public-host=-oProxyCommand=id"]),
    ("ssh://u@127.0.0.1:22", ["--public-host", "pub\nProxyCommand id"]),
    ("ssh://u@127.0.0.1:0", []),
    ("ssh://u@127.0.0.1\n:22", []),
    ("ssh://-oProxyCommand=id@127.0.0.1", []),
])
def test_targets_add_refuses_hostile_values(local_home: Settings, url: str,
                                            extra: list[str]) -> None:
    """Refused before first contact (no 60 s probe later), nothing recorded."""
    done = sandboxer("targets", "add", "t1", url, *extra, "--yes")
    assert done.returncode == 4, done.stderr
    listed = sandboxer("targets", "list", "--json")
    assert [t["name"] for t in json.loads(listed.stdout)["items"] if not t["implicit"]] == []
