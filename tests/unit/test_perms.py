"""sandboxer.perms: loose state paths of ours are repaired, anything else is refused."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer import perms
from sandboxer.config import Settings
from sandboxer.errors import UnsafePermissions

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def s(tmp_path: Path) -> Settings:
    settings = Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home"),
                                  "SANDBOXER_LOCAL_ROOT": str(tmp_path / "root")})
    settings.ensure()
    return settings


def test_fresh_home_is_clean(s: Settings) -> None:
    assert perms.findings(s) == []
    assert mode(s.run_dir) == mode(s.keys_dir) == mode(s.log_dir) == 0o700


def test_loose_dirs_and_files_of_ours_are_repaired(s: Settings) -> None:
    s.run_dir.chmod(0o777)
    s.home.chmod(0o777)
    key = s.keys_dir / "sbx-1.known_hosts"
    key.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA\n")
    key.chmod(0o666)
    (s.home / "state.db").write_text("")
    (s.home / "state.db").chmod(0o644)
    found = {f.path for f in perms.findings(s)}
    assert {s.run_dir, s.home, key, s.home / "state.db"} <= found
    assert mode(s.run_dir) == 0o777  # findings changes nothing

    s.ensure()
    assert mode(s.run_dir) == 0o700
    assert mode(s.home) == 0o755  # only write is taken: o+x keeps the local root passable
    assert mode(key) == 0o600
    assert mode(s.home / "state.db") == 0o600
    assert perms.findings(s) == []


def test_sandbox_dirs_stay_passable_and_workspaces_are_not_touched(s: Settings) -> None:
    d = s.local_root / "sbx-1"
    (d / "workspace").mkdir(parents=True)
    (d / "workspace").chmod(0o777)
    d.chmod(0o733)
    (d / "sandbox.json").write_text("{}")
    (d / "sandbox.json").chmod(0o666)
    s.ensure()
    assert mode(d) == 0o711
    assert mode(d / "sandbox.json") == 0o600
    assert mode(d / "workspace") == 0o777


@needs_root
def test_entry_owned_by_another_user_is_refused(s: Settings) -> None:
    s.run_dir.chmod(0o777)
    sock = s.run_dir / "local-endpoint.sock"
    sock.write_text("")
    os.chown(sock, NOBODY, NOBODY)
    with pytest.raises(UnsafePermissions) as e:
        s.ensure()
    text = e.value.render()
    assert str(sock) in text
    assert "uid 65534" in text
    assert f"`rm -rf {sock}`" in text
    assert mode(s.run_dir) == 0o700  # what is ours was repaired all the same


@needs_root
def test_swapped_known_hosts_is_refused(s: Settings) -> None:
    pinned = s.keys_dir / "sbx-1.known_hosts"
    pinned.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA\n")
    os.chown(pinned, NOBODY, NOBODY)
    with pytest.raises(UnsafePermissions, match=r"sbx-1\.known_hosts"):
        s.ensure()


@needs_root
def test_home_owned_by_another_user_is_refused(s: Settings) -> None:
    os.chown(s.home, NOBODY, NOBODY)
    with pytest.raises(UnsafePermissions, match=re.escape(str(s.home))):
        s.ensure()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sbx-perms-"))
    yield d
    d.chmod(0o700)
    import shutil

    shutil.rmtree(d)


def test_world_writable_parent_is_refused_sticky_is_fine(shared_dir: Path) -> None:
    s = Settings.from_env({"SANDBOXER_HOME": str(shared_dir / "home"),
                           "SANDBOXER_LOCAL_ROOT": str(shared_dir / "home" / "local")})
    shared_dir.chmod(0o1777)
    s.ensure()
    shared_dir.chmod(0o777)
    with pytest.raises(UnsafePermissions) as e:
        s.ensure()
    assert (f"refuses to use {shared_dir}: it is a parent of {s.home} and writable by "
            "others (mode 0777)") in e.value.render()
    assert mode(shared_dir) == 0o777  # never ours to change


def test_world_writable_parent_of_the_local_root_is_refused(
    tmp_path: Path, shared_dir: Path
) -> None:
    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home"),
                           "SANDBOXER_LOCAL_ROOT": str(shared_dir / "root")})
    shared_dir.chmod(0o777)
    with pytest.raises(UnsafePermissions, match="a parent of"):
        s.ensure()


def test_a_symlink_of_ours_in_the_home_is_not_followed(s: Settings, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o666)
    (s.home / "images").symlink_to(target)
    s.ensure()
    assert mode(target) == 0o666
