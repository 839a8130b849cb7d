"""The CLI as a thin client of the warm local service (service/local.py), on real ext.local
sandboxes: the commands that change or reach a sandbox are answered by one long-lived
process, the CLI imports nothing heavy on those paths, the caller's environment is where
secrets resolve and nowhere else, other settings are done in the caller's own process, and
a create whose command is interrupted is cancelled and cleaned up."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import keeper
from sandboxer.cli import launch
from sandboxer.config import Settings

from .conftest import SANDBOXER

pytestmark = pytest.mark.integration
HEAVY = ("pydantic", "asyncio", "asyncssh", "sandboxer.manager", "yaml")
# Not heavy, but a few ms each of every thin call (bench/run.py): logging (a thin call's
# process holds no secret value for the redaction net to scrub), OpenSSL (hashlib's; the
# settings key uses CPython's own SHA-256) and the command groups other than the one called.
# The command scripts/setup.sh writes starts Python without `site` (cli/launch.py): a thin
# call that loads it imported something outside the standard library and this package.
# shutil is argparse's for the terminal's width, which cli/main.py asks for itself.
UNNEEDED = ("logging", "_hashlib", "sandboxer.cli.files", "sandboxer.cli.targets",
            "sandboxer.cli.snapshots", "sandboxer.cli.profiles", "site", "shutil")
ROOT = Path(sandboxer.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The command scripts/setup.sh writes, for this interpreter and checkout."""
    return launch.install(tmp_path_factory.mktemp("bin"), sys.executable, ROOT)


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOXER, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or dict(os.environ), stdin=subprocess.DEVNULL, check=False)


def imported(command: Path, *args: str,
             env: dict[str, str] | None = None) -> tuple[dict[str, Any], set[str]]:
    """Run the written command with imports timed (``-X importtime``, as the variable
    PYTHONPROFILEIMPORTTIME): its JSON output and every module it imported."""
    quiet = ["--quiet"] if args[0] == "create" else []
    done = subprocess.run([str(command), *args, "--json", *quiet], capture_output=True,
                          text=True, timeout=120,
                          env={**(env or os.environ), "PYTHONPROFILEIMPORTTIME": "1"},
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    return json.loads(done.stdout), modules


def ping(settings: Settings) -> int:
    """The pid of the process answering the service socket (stdlib, as any client)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(settings.run_dir / "service.sock"))
        s.sendall(b'{"v": 1, "op": "ping"}\n')
        reply = json.loads(s.makefile().readline())
    assert reply["ok"], reply
    pid: int = reply["result"]["pid"]
    return pid


def test_commands_go_to_one_warm_service(local_home: Settings, command: Path) -> None:
    assert not keeper.service_running(local_home)
    doc, first = imported(command, "create", "profile.local", "--ttl", "10m")
    assert doc["state"] == "ready"
    assert not {m for m in first if m.split(".")[0] in HEAVY or m in HEAVY}, \
        "the thin client imported a heavy module"
    served_by = ping(local_home)
    cmdline = Path(f"/proc/{served_by}/cmdline").read_bytes().split(b"\0")
    assert b"sandboxer.service.daemon" in cmdline
    # The command that started it did not look up which extension hosts it (that reads
    # every distribution's entry points, and loads site): the keeper did, and writes to
    # that extension's keeper log.
    assert b"--local-service" in cmdline
    assert keeper.service_running(local_home)
    assert "local service on" in keeper.log_path(local_home, "ext.local").read_text()
    assert not keeper.log_path(local_home, None).exists()

    # Readiness was proven through the sandbox's own endpoint: it answers, key pinned.
    said = run("ssh", doc["id"], "--", "echo", "hi")
    assert (said.returncode, said.stdout) == (0, "hi\n"), said.stderr
    reach, modules = imported(command, "reachability", "show", doc["id"])
    assert reach["port"] == doc["reachability"]["port"]
    extended, modules2 = imported(command, "extend", doc["id"], "--ttl", "20m")
    assert extended["expires_at"] > doc["expires_at"]
    second, modules3 = imported(command, "create", "profile.local", "--ttl", "10m")
    gone, modules4 = imported(command, "destroy", doc["id"], second["id"])
    assert [d["state"] for d in gone["items"]] == ["destroyed", "destroyed"]
    for seen in (first, modules, modules2, modules3, modules4):
        assert not {m for m in seen if m.split(".")[0] in HEAVY}
        assert not seen & set(UNNEEDED), seen & set(UNNEEDED)
    assert ping(local_home) == served_by  # one process answered them all

    # Errors keep their code and exit code through the service.
    missing = run("extend", "sbx-aaaaaaaaaa", "--ttl", "1m", "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stdout)["code"] == "sandbox_not_found"
    unknown = run("create", "profile.nope")
    assert unknown.returncode == 3
    assert "unknown profile 'profile.nope'" in unknown.stderr
    too_long = run("create", "profile.local", "--ttl", "30d")
    assert too_long.returncode == 4
    assert "ttl.max" in too_long.stderr


def test_a_first_create_starts_the_service_at_its_first_line(local_home: Settings,
                                                             command: Path) -> None:
    """The written command spawns the keeper before it imports anything else
    (sandboxer/early.py) with only what an interpreter's start reads, and hands it the
    rest of its allowed environment over a pipe: the service then works in the caller's
    settings, and no credential or stray variable of the caller is in its environ."""
    canary = f"cnryearly{secrets.token_hex(8)}"
    env = {**os.environ, "SANDBOXER_TUNNEL_VIA": "obr-early", "SBX_EARLY_CANARY": canary,
           "SANDBOXER_STATE_HUB_TOKEN": canary, "LC_ALL": "C.UTF-8"}
    doc, modules = imported(command, "create", "profile.local", "--ttl", "5m", env=env)
    assert "pydantic" not in modules  # the service did it
    assert doc["reachability"]["tunnel_via"] == "obr-early"  # in the caller's settings
    served_by = ping(local_home)
    environ = dict(entry.split(b"=", 1) for entry in
                   Path(f"/proc/{served_by}/environ").read_bytes().split(b"\0") if entry)
    assert set(environ) <= {b"HOME", b"LANG", b"LANGUAGE", b"PYTHONPATH", b"LC_ALL",
                            b"LC_CTYPE"}
    assert environ[b"LC_ALL"] == b"C.UTF-8"
    assert environ[b"PYTHONPATH"].split(b":")[0] == str(ROOT).encode()
    assert canary.encode() not in Path(f"/proc/{served_by}/environ").read_bytes()
    # What it reads as its settings came over the pipe: the same caller is served by it.
    again, modules = imported(command, "create", "profile.local", "--ttl", "5m", env=env)
    assert "sandboxer.client.local" not in modules
    assert again["reachability"]["tunnel_via"] == "obr-early"
    assert ping(local_home) == served_by
    assert "local service on" in keeper.log_path(local_home, "ext.local").read_text()
    for sid in (doc["id"], again["id"]):
        assert run("destroy", sid, env=env).returncode == 0


def test_secrets_resolve_in_the_callers_environment_only(local_home: Settings,
                                                       command: Path) -> None:
    value = f"cnrysvc{secrets.token_hex(12)}"
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "sec.yaml").write_text(
        "id: profile.svcsec\nextends: profile.local\n"
        "setup:\n  secret_refs: [{name: TOKEN, ref: 'env:SBX_SVC_CANARY'}]\n")
    # A service already running (started without the variable) serves this create.
    assert run("create", "profile.local", "--ttl", "5m", "--json").returncode == 0
    served_by = ping(local_home)
    env = {**os.environ, "SBX_SVC_CANARY": value}
    doc, modules = imported(command, "create", "profile.svcsec", env=env)
    assert "pydantic" not in modules
    assert ping(local_home) == served_by
    inside = run("ssh", doc["id"], "--", "printenv", "TOKEN")
    assert inside.stdout == f"{value}\n", inside.stderr
    # Not in the service's own environment, nor anywhere it wrote.
    assert value.encode() not in Path(f"/proc/{served_by}/environ").read_bytes()
    for path in local_home.home.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert value.encode() not in path.read_bytes(), path
    # Without the variable the ref does not resolve, exactly as in-process (exit 7).
    refused = run("create", "profile.svcsec")
    assert refused.returncode == 7, refused.stderr
    assert "SBX_SVC_CANARY" in refused.stderr
    assert value not in refused.stderr


def test_other_settings_run_in_the_callers_process(local_home: Settings,
                                                   command: Path) -> None:
    first, _ = imported(command, "create", "profile.local", "--ttl", "5m")
    assert first["reachability"]["tunnel_via"] is None
    served_by = ping(local_home)
    env = {**os.environ, "SANDBOXER_TUNNEL_VIA": "obr-elsewhere"}
    other, modules = imported(command, "create", "profile.local", "--ttl", "5m", env=env)
    assert "sandboxer.client.local" in modules  # done here, not by the service
    assert other["reachability"]["tunnel_via"] == "obr-elsewhere"
    assert ping(local_home) == served_by  # and the service was left as it was
    off = {**os.environ, "SANDBOXER_LOCAL_SERVICE": "0"}
    _doc, modules = imported(command, "destroy", other["id"], env=off)
    assert "sandboxer.client.local" in modules


def _state(settings: Settings, sid: str) -> tuple[str, str | None]:
    conn = sqlite3.connect(settings.db_path)
    try:
        row = conn.execute("SELECT state, reason FROM sandboxes WHERE id = ?",
                           (sid,)).fetchone()
    finally:
        conn.close()
    return (str(row[0]), row[1]) if row else ("missing", None)


def test_an_interrupted_create_is_cancelled_and_cleaned_up(local_home: Settings) -> None:
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "slow.yaml").write_text(
        "id: profile.slow\nextends: profile.local\n"
        "setup:\n  instructions: ['sleep 120']\n")
    proc = subprocess.Popen([SANDBOXER, "create", "profile.slow"], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    sid = None
    while sid is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the create never reached its setup step"
        listed = run("list", "--json")
        items = json.loads(listed.stdout)["items"] if listed.returncode == 0 else []
        sid = items[0]["id"] if items and items[0].get("reachability") is None and (
            local_home.local_root / items[0]["id"]).is_dir() else None
        time.sleep(0.1)
    time.sleep(0.5)  # into `sleep 120`
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    deadline = time.monotonic() + 30
    while _state(local_home, sid)[0] != "failed":
        assert time.monotonic() < deadline, _state(local_home, sid)
        time.sleep(0.1)
    assert not (local_home.local_root / sid).exists()  # nothing was left behind


def test_a_keeper_started_with_the_service_off_sends_callers_home_at_once(
        local_home: Settings, command: Path) -> None:
    off = {**os.environ, "SANDBOXER_LOCAL_SERVICE": "0"}
    doc, modules = imported(command, "create", "profile.local", "--ttl", "5m", env=off)
    assert "sandboxer.client.local" in modules  # in-process; it started the keeper off
    served_by = ping(local_home)  # which binds the socket anyway
    said = run("extend", doc["id"], "--ttl", "6m", "--json",
               env={**os.environ, "SANDBOXER_DEBUG": "1"})
    assert said.returncode == 0, said.stderr
    assert "the local service is off" in said.stderr  # answered fallback, not waited for
    assert ping(local_home) == served_by


def test_the_database_url_reaches_the_keeper_over_a_pipe_not_its_environ(
        local_home: Settings, command: Path, pg_url: str) -> None:
    """SANDBOXER_DATABASE_URL carries a password: the keeper that hosts the service gets it
    on its stdin (childenv.PIPED) and works on that database, while its /proc/PID/environ
    never holds it."""
    import psycopg

    env = {**os.environ, "SANDBOXER_DATABASE_URL": pg_url}
    doc, modules = imported(command, "create", "profile.local", "--ttl", "5m", env=env)
    assert "pydantic" not in modules  # the service did it, in its own settings
    served_by = ping(local_home)
    environ = Path(f"/proc/{served_by}/environ").read_bytes()
    assert pg_url.encode() not in environ
    assert b"SANDBOXER_DATABASE_URL=" not in environ
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT state FROM sandboxes WHERE id = %s", (doc["id"],)).fetchone()
    assert row == ("ready",)
    assert run("destroy", doc["id"], env=env).returncode == 0


def test_a_per_home_dir_goes_once_the_service_that_kept_spares_in_it_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # like /root: the local root moves to /var/lib/sandboxer/local
    monkeypatch.setenv("SANDBOXER_HOME", str(private / "home"))
    monkeypatch.delenv("SANDBOXER_LOCAL_ROOT", raising=False)
    settings = Settings.from_env()
    if os.geteuid() != 0 or settings.local_root.parent != Path("/var/lib/sandboxer/local"):
        pytest.skip("the shared local root is root's")
    made = run("create", "profile.local", "--ttl", "5m", "--json")
    assert made.returncode == 0, made.stderr
    keeper = ping(settings)
    assert run("destroy", json.loads(made.stdout)["id"], "--json").returncode == 0
    assert [p.name for p in settings.local_root.iterdir()] == [".spares"]  # the service's
    os.kill(keeper, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{keeper}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{keeper}").exists()
    assert not settings.local_root.exists()
