"""sandboxer.service.daemon: core's keeper process for one extension (lock, leases,
housekeeping, idle exit, an allow-listed environment)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config import Settings
from sandboxer.service import daemon

HOUSEKEEPER = '''
import json, os
from sandboxer.extensions.base import Extension, Housekeeping, Target
from sandboxer.models.base import StrictModel


class Spec(StrictModel):
    pass


class HousekeeperExtension(Extension, Housekeeping):
    """Housekeeping that writes what it was given, then returns (idle at once)."""

    name = "ext.housekeeper"
    Spec = Spec

    async def housekeep(self, host):
        out = self.settings.home / "housekept.json"
        out.write_text(json.dumps({"extension": host.extension, "pid": os.getpid(),
                                   "environ": dict(os.environ)}))

    def targets(self, config):
        return [Target(name="nowhere", extension=self.name)]

    async def provision(self, req, secrets):
        raise NotImplementedError

    async def endpoint(self, handle):
        raise NotImplementedError

    async def inspect(self, handle):
        raise NotImplementedError

    async def destroy(self, handle):
        return None

    async def owned(self, target):
        return []

    async def wait_ready(self, handle, timeout):
        return None

    async def run(self, handle, command, timeout):
        return 0, ""
'''


@pytest.fixture
def housekeeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny Housekeeping extension, registered by entry point like any plugin."""
    d = tmp_path / "plugins"
    (d / "sbx_housekeeper-0.0.0.dist-info").mkdir(parents=True)
    (d / "sbx_housekeeper-0.0.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sbx-housekeeper\nVersion: 0.0.0\n")
    (d / "sbx_housekeeper-0.0.0.dist-info" / "entry_points.txt").write_text(
        "[sandboxer.extensions]\next.housekeeper = sbx_housekeeper:HousekeeperExtension\n")
    (d / "sbx_housekeeper.py").write_text(HOUSEKEEPER)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(d), os.environ.get("PYTHONPATH")) if p))
    return d


def _wait(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_ensure_starts_the_keeper_with_an_allow_listed_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    started: list[tuple[list[str], dict[str, Any]]] = []

    import io

    piped = io.BytesIO()
    piped.close = lambda: None  # type: ignore[method-assign]  # read after the "close"

    class Popen:
        def __init__(self, argv: list[str], **kw: Any) -> None:
            started.append((argv, kw))
            self.stdin = piped

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Popen)
    caller = {"SANDBOXER_HOME": str(tmp_path / "h"), "PATH": "/usr/bin", "SBX_CANARY": "c1",
              "SANDBOXER_TOKEN": "c2", "BAO_TOKEN": "c3", "AWS_SECRET_ACCESS_KEY": "c4",
              "SANDBOXER_VM_KEEPER_INTERVAL": "1", "SANDBOXER_PROFILES": "/p",
              "SANDBOXER_LOCAL_IDLE_EXIT": "4",
              "SANDBOXER_DATABASE_URL": "postgresql://u:c5@h/db"}
    for name, value in caller.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(caller)
    daemon.ensure(settings, "ext.vm-packer")
    [(argv, kw)] = started
    assert argv == [sys.executable, "-P", "-m", "sandboxer.service.daemon", "--home",
                    str(settings.home), "--extension", "ext.vm-packer", "--piped-settings"]
    env = kw["env"]
    assert not {"c1", "c2", "c3", "c4"} & set(env.values())
    assert "SANDBOXER_DATABASE_URL" not in env  # on its stdin instead
    assert kw["stdin"] == subprocess.PIPE
    assert json.loads(piped.getvalue()) == {"SANDBOXER_DATABASE_URL": "postgresql://u:c5@h/db"}
    assert env["SANDBOXER_HOME"] == str(settings.home)
    assert env["SANDBOXER_VM_KEEPER_INTERVAL"] == "1"
    assert env["SANDBOXER_PROFILES"] == "/p"
    assert env["SANDBOXER_LOCAL_IDLE_EXIT"] == "4"
    assert env["PATH"] == "/usr/bin"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(daemon.__file__).parents[2])
    assert kw["start_new_session"] is True
    log = daemon.log_path(settings, "ext.vm-packer")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_ensure_starts_nothing_while_a_keeper_holds_the_lock(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a second keeper was started")

    settings.ensure()
    fd = os.open(daemon.lock_path(settings, "ext.fake"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        monkeypatch.setattr(subprocess, "Popen", refuse)
        assert daemon.running(settings, "ext.fake")
        daemon.ensure(settings, "ext.fake")
        assert daemon._lock(daemon.lock_path(settings, "ext.fake"), timeout=0.1) is None
    finally:
        os.close(fd)
    assert not daemon.running(settings, "ext.fake")


def test_an_extension_name_is_checked_before_any_path_or_argv(settings: Settings) -> None:
    from sandboxer.errors import InvalidInput

    for bad in ("../x", "", "a/b", "-rf"):
        with pytest.raises(InvalidInput):
            daemon.lock_path(settings, bad)
        with pytest.raises(InvalidInput):
            daemon.argv(settings, bad)


def test_without_housekeeping_it_reaps_then_exits_once_idle(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandboxer_fake_ext as fake

    from sandboxer.manager import Manager

    monkeypatch.setattr(fake.FakeExtension, "keeper_interval", lambda self: 0.05,
                        raising=False)
    sid = asyncio.run(Manager(settings).create("profile.fake", ttl="1s")).id
    started = time.monotonic()
    asyncio.run(daemon.keep(settings, "ext.fake", idle_exit=0.3))
    took = time.monotonic() - started
    status = Manager(settings).get(sid)
    assert (status.state, status.reason) == ("destroyed", "expired")
    assert not (settings.home / "fake" / sid).exists()
    assert took >= 0.3  # it waited out its idle time after the last live sandbox


def test_with_housekeeping_it_exits_when_housekeep_returns(
        housekeeper: Path, settings: Settings) -> None:
    asyncio.run(daemon.keep(settings, "ext.housekeeper", idle_exit=3600))
    seen = json.loads((settings.home / "housekept.json").read_text())
    assert seen["extension"] == "ext.housekeeper"


def test_the_keeper_process_forks_holds_its_lock_and_keeps_no_caller_secret(
        housekeeper: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBX_DAEMON_CANARY", "cnry-daemon")
    monkeypatch.setenv("SANDBOXER_TOKEN", "cnry-token")
    monkeypatch.setenv("SANDBOXER_LOCAL_IDLE_EXIT", "7")
    settings = Settings.from_env()  # with these in its environment
    daemon.ensure(settings, "ext.housekeeper")
    out = settings.home / "housekept.json"
    _wait(out.exists, "the housekeeping to run")
    lock = daemon.lock_path(settings, "ext.housekeeper")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    _wait(lambda: not daemon.running(settings, "ext.housekeeper"), "the keeper to exit")
    seen = json.loads(out.read_text())
    assert seen["pid"] != os.getpid()
    environ = seen["environ"]
    assert "SBX_DAEMON_CANARY" not in environ
    assert "SANDBOXER_TOKEN" not in environ
    assert environ["SANDBOXER_LOCAL_IDLE_EXIT"] == "7"
    assert environ["SANDBOXER_HOME"] == str(settings.home)
    log = daemon.log_path(settings, "ext.housekeeper")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "keeper" in log.read_text()


def test_an_unknown_extension_ends_the_keeper_with_an_error(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    rc = daemon.main(["--home", str(settings.home), "--extension", "ext.nothere",
                      "--foreground"])
    assert rc == 1
    assert not daemon.running(settings, "ext.nothere")


def test_a_stop_lets_the_reap_under_way_finish() -> None:
    class Host:
        extension = "ext.slow"
        started = finished = 0

        async def reap(self) -> int:
            self.started += 1
            await asyncio.sleep(0.3)
            self.finished += 1
            return 0

        def live_handles(self) -> list[object]:
            return [object()]

    host = Host()
    leases = daemon._Leases(host, interval=0.01, idle_exit=None, lock=None)

    async def go() -> None:
        task = asyncio.create_task(leases.run())
        while not host.started:
            await asyncio.sleep(0.01)
        leases.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert (host.started, host.finished) == (1, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the loader cache is Linux's")
def test_the_keeper_finds_the_libraries_the_loader_would_find_reading_its_cache_once() -> None:
    # In a child, so this process's ctypes stays as it was.
    code = (
        "import ctypes.util, json, sys\n"
        "names = ['c', 'seccomp', 'oqs', 'no-such-library-sandboxer']\n"
        "before = [ctypes.util.find_library(n) for n in names]\n"
        "from sandboxer.service import daemon\n"
        "daemon._loader_cache_only()\n"
        "import subprocess\n"
        "ran = []\n"
        "real = subprocess.Popen.__init__\n"
        "def spy(self, args, *a, **k):\n"
        "    ran.append(args[0] if isinstance(args, list) else args)\n"
        "    real(self, args, *a, **k)\n"
        "subprocess.Popen.__init__ = spy\n"
        "after = [ctypes.util.find_library(n) for n in names]\n"
        "print(json.dumps([before, after, ran]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    before, after, ran = json.loads(out)
    assert after == before
    assert after[0] is not None  # libc is always in the cache
    # No compiler, and one ``ldconfig -p`` for all four names.
    assert len(ran) == 1, ran
    assert "ldconfig" in str(ran[0]), ran


def test_a_keeper_log_past_its_cap_is_rotated_when_a_keeper_starts(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    from sandboxer import keeper

    monkeypatch.setattr(keeper, "LOG_MAX", 10)
    log = tmp_path / "keeper-ext.x.log"
    log.write_text("old enough to go\n")
    os.close(keeper.open_log(log))
    assert (tmp_path / "keeper-ext.x.log.1").read_text() == "old enough to go\n"
    assert log.read_text() == ""
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    log.write_text("small\n")
    os.close(keeper.open_log(log))  # under the cap: appended to as it is
    assert log.read_text() == "small\n"


def test_a_failed_rotation_leaves_the_log_in_place(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxer import keeper

    monkeypatch.setattr(keeper, "LOG_MAX", 1)
    log = tmp_path / "keeper-ext.x.log"
    log.write_text("kept\n")
    (tmp_path / "keeper-ext.x.log.1").mkdir()  # in the way of the rename
    os.close(keeper.open_log(log))
    assert log.read_text() == "kept\n"


def test_the_cli_starts_the_keeper_that_looks_its_extension_up(tmp_path: Path) -> None:
    from sandboxer import keeper

    argv = keeper.argv(Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "h")}), None)
    assert argv[1:4] == ["-P", "-m", keeper.MODULE]
    assert "--local-service" in argv


def test_the_keeper_settles_once_no_request_runs() -> None:
    import gc

    busy = [True]

    async def go() -> None:
        loop = asyncio.get_running_loop()
        daemon._settle(loop, lambda: busy[0])
        assert not gc.isenabled()  # a request runs: later
        busy[0] = False
        await asyncio.sleep(1.2)

    gc.disable()
    try:
        asyncio.run(go())
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()
