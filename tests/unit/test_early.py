"""sandboxer.early: a first create's keeper, spawned at the command's first line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sandboxer
from sandboxer import early
from sandboxer.config import Settings
from sandboxer.errors import SandboxerError

ROOT = str(Path(sandboxer.__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _service_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests elsewhere turn the local service off (tests/unit/conftest.py)."""
    monkeypatch.setenv("SANDBOXER_LOCAL_SERVICE", "1")
    monkeypatch.delenv("SANDBOXER_URL", raising=False)
PARTS = st.sampled_from(["", "/", "//", "a", "b c", ".", "..", "${X}", "/srv", "/srv/", "x/"])
PATHS = st.lists(PARTS, max_size=4).map("".join)


@given(st.fixed_dictionaries({}, optional={"SANDBOXER_HOME": PATHS, "XDG_STATE_HOME": PATHS,
                                           "HOME": PATHS}))
def test_the_home_it_names_is_the_one_settings_read(env: dict[str, str]) -> None:
    """Where early names a home, Settings names the same one, spelled the same (a
    spelling it is unsure of is left to the usual path: None)."""
    from unittest import mock

    # The process's own environment: Settings' default home reads HOME and XDG_STATE_HOME
    # there, as the command's does.
    with mock.patch.dict(os.environ, env, clear=True):
        home = early._home(os.environ)
        if home is None:
            return
        try:
            settings = Settings.from_env()
        except SandboxerError:
            return  # the keeper meets the same error and exits; the command reports it
    assert home == str(settings.home)


@pytest.mark.parametrize(("words", "extra"), [
    (["list"], {}), (["create", "profile.local", "--dry-run"], {}),
    (["create", "--help"], {}), (["create", "p", "-h"], {}),
    (["create", "p"], {"SANDBOXER_URL": "http://127.0.0.1:1"}),
    (["create", "p"], {"SANDBOXER_LOCAL_SERVICE": "0"}),
    (["create", "p"], {"SANDBOXER_LOCAL_SERVICE": " 1"}),
    (["create", "p"], {"SANDBOXER_HOME": "relative/home"}),
    (["create", "p"], {"SANDBOXER_HOME": "/tmp/x/"})])
def test_anything_unusual_is_left_to_the_usual_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, words: list[str],
        extra: dict[str, str]) -> None:
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path / "home"))
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    early.start(words, ROOT)
    assert early._pending == {}
    assert not (tmp_path / "home").exists()


def test_a_running_service_is_not_started_again(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    (home / "run" / "service.sock").touch()
    monkeypatch.setenv("SANDBOXER_HOME", str(home))
    early.start(["create", "profile.local"], ROOT)
    assert early._pending == {}


def test_a_run_dir_not_only_ours_is_not_touched(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A run/ others may write, or a lock file that is a symlink: early opens nothing in
    it and starts nothing (Settings.ensure, on the usual path, refuses or repairs it)."""
    home = tmp_path / "home"
    run = home / "run"
    run.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("x")
    (run / "service.lock").symlink_to(victim)
    monkeypatch.setenv("SANDBOXER_HOME", str(home))
    for mode in (0o777, 0o700):  # loose; then ours, with the planted symlink in it
        run.chmod(mode)
        early.start(["create", "profile.local"], ROOT)
        assert early._pending == {}
    assert victim.read_text() == "x"


def test_a_keeper_left_without_its_environment_exits_having_made_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real keeper: spawned, then abandoned (the command went its own way): it reads
    nothing on its stdin, exits, and never made the home."""
    home = tmp_path / "home"
    monkeypatch.setenv("SANDBOXER_HOME", str(home))
    before = _keepers(home)
    early.start(["create", "profile.local"], ROOT)
    try:
        assert list(early._pending) == [str(home)]
        assert early.take("/elsewhere") is None
        deadline = time.monotonic() + 10
        while not (spawned := _keepers(home) - before):
            assert time.monotonic() < deadline, "no keeper was spawned"
            time.sleep(0.01)
    finally:
        early.abandon()
    assert early._pending == {}
    deadline = time.monotonic() + 20
    while _keepers(home) & spawned:
        assert time.monotonic() < deadline, "the keeper did not exit"
        time.sleep(0.05)
    assert not home.exists()


def test_the_keeper_inherits_none_of_the_callers_descriptors(tmp_path: Path) -> None:
    """A descriptor our caller passed us (inheritable) does not reach the keeper."""
    marker = tmp_path / "marker"
    marker.touch()
    probe = (
        "import os, sys, time\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from sandboxer import early\n"
        f"fd = os.open({str(marker)!r}, os.O_RDONLY); os.set_inheritable(fd, True)\n"
        "print(fd, flush=True)\n"
        "early.start(['create', 'p'], sys.path[0])\n"
        "time.sleep(5)\n")
    home = tmp_path / "home"
    env = {**os.environ, "SANDBOXER_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.readline().strip()
        deadline = time.monotonic() + 10
        while not (found := _keepers(home)):
            assert time.monotonic() < deadline, "no keeper was spawned"
            time.sleep(0.01)
        (pid,) = found
        assert os.path.samefile(f"/proc/{proc.pid}/fd/{fd}", marker)  # the probe has it
        fds = {p.name: os.readlink(p) for p in Path(f"/proc/{pid}/fd").iterdir()}
        assert str(marker) not in fds.values()
        assert fds["1"] == fds["2"] == os.devnull  # until it opens its log
        assert fds["0"].startswith("pipe:")
    finally:  # the keeper then reads nothing on its stdin, and exits
        proc.kill()
        proc.communicate()


def _keepers(home: Path) -> set[int]:
    """The keepers spawned for ``home`` that still run."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if early.MODULE.encode() in cmdline and str(home).encode() in cmdline:
            found.add(int(entry.name))
    return found
