"""Canary tests on ext.local: values are inside the sandbox and nowhere sand-boxer wrote.

Random canaries are stored in a KV v2 server (bao:), the environment (env:) and a file
(file:); sandboxes are created through the CLI and in-process (logging at DEBUG), one
create fails after resolution with the values in its output, and then every byte under
$SANDBOXER_HOME (state.db and its -wal, keys, records, the endpoint log), every CLI
output of get/list/events/reachability show (JSON and human), every command line on this
machine and every log record are searched for them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.canary_support import Cli, leaks

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings

from .conftest import ssh

if TYPE_CHECKING:
    from .conftest import KVServer

pytestmark = pytest.mark.integration


def canary(kind: str) -> str:
    return f"cnry{kind}{secrets.token_hex(12)}"


def command_lines() -> bytes:
    out = b""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    out += f.read() + b"\n"
            except OSError:
                continue
    return out


def test_canaries_on_ext_local(kv_server: KVServer, local_home: Settings, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    bao, env, filed = canary("bao"), canary("env"), canary("file")
    canaries = [bao, env, filed]
    kv_server.put("kv/app/one", token=bao)
    monkeypatch.setenv("SBX_CANARY_ENV", env)
    (tmp_path / "secret.txt").write_text(filed + "\n")
    refs = (f"[{{name: TOKEN, ref: 'bao:kv/app/one#token'}}, "
            f"{{name: ENVTOK, ref: 'env:SBX_CANARY_ENV'}}, "
            f"{{name: FILETOK, ref: 'file:{tmp_path / 'secret.txt'}'}}]")
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "sec.yaml").write_text(
        f"id: profile.sec\nextends: profile.local\nsetup:\n  env: {{PLAIN: plain}}\n"
        f"  secret_refs: {refs}\n")
    (profiles / "leaky.yaml").write_text(
        f"id: profile.leaky\nextends: profile.local\nsetup:\n"
        f"  instructions: ['echo \"leak $TOKEN $ENVTOK $FILETOK\"; exit 3']\n"
        f"  secret_refs: {refs}\n")
    cli = Cli()

    # Dry run: per-ref validity, no value read.
    for form in ([], ["--json"]):
        planned = cli("create", "profile.sec", "--dry-run", *form)
        assert planned.returncode == 0, planned.stderr
    doc = json.loads(cli.outputs[-2])
    assert [(r["name"], r["status"]) for r in doc["secret_refs"]] == [
        ("TOKEN", "ok"), ("ENVTOK", "ok"), ("FILETOK", "ok")]
    assert not any("/data/" in p for _m, p, _t in kv_server.requests)

    # A create through the CLI; the values are in the sandbox's sessions and files.
    created = cli("create", "profile.sec", "--json")
    assert created.returncode == 0, created.stderr
    sid = json.loads(created.stdout)["id"]
    reach = json.loads(created.stdout)["reachability"]
    shown = ssh(reach, 'printf "%s|%s|%s|%s\\n" "$TOKEN" "$ENVTOK" "$FILETOK" "$PLAIN"; '
                'for n in TOKEN ENVTOK FILETOK; do stat -c "%n %a %u" /run/secrets/$n; '
                'cat /run/secrets/$n; echo; done; echo "$BAO_TOKEN"')
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.decode().splitlines()
    assert lines[0] == f"{bao}|{env}|{filed}|plain"
    assert lines[1:7] == ["/run/secrets/TOKEN 400 1000", bao,
                          "/run/secrets/ENVTOK 400 1000", env,
                          "/run/secrets/FILETOK 400 1000", filed]
    assert lines[7] == ""  # sand-boxer's own OpenBao token never reaches a sandbox

    # While a session runs, no command line on this machine holds a value (never argv).
    argv = [*reach["ssh_command"].split(), "-o", "BatchMode=yes", "--",
            'test -n "$TOKEN" && sleep 3']
    session = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        lines_now = command_lines()
        assert session.poll() is None
    finally:
        assert session.wait(20) == 0
    assert not [c for c in canaries if c.encode() in lines_now]

    # A second create in-process, every logger at DEBUG.
    with caplog.at_level(logging.DEBUG):
        second = LocalClient(Settings.from_env()).create("profile.sec").document()
    assert second["state"] == "ready"
    assert len(caplog.records) > 0

    # A create that fails after resolution, printing the values in its setup output.
    for form in ([], ["--json"]):
        failed = cli("create", "profile.leaky", *form)
        assert failed.returncode == 5, failed.stderr
        assert "leak *** *** ***" in failed.stderr
    failed_id = json.loads(cli.outputs[-2])["message"].split()[1]
    assert failed_id.startswith("sbx-")

    # Every read command, JSON and human.
    for ident in (sid, second["id"], failed_id):
        cli("get", ident)
        cli("get", ident, "--json")
    for ident in (sid, second["id"]):
        cli("reachability", "show", ident)
        cli("reachability", "show", ident, "--json")
    for argv_ in (["list"], ["list", "--json"], ["list", "--all"], ["list", "--all", "--json"],
                  ["events"], ["events", "--json"]):
        assert cli(*argv_).returncode == 0
    got = json.loads(cli("get", failed_id, "--json").stdout)
    assert got["state"] == "failed"
    assert "leak *** *** ***" in got["error"]

    homes = [local_home.home, local_home.local_root]
    found = leaks(canaries, homes)
    assert not found, found
    assert (local_home.home / "state.db-wal").exists() or (local_home.home / "state.db").exists()
    # The endpoint's (and local service's) log was searched too: the keeper's log, named
    # by whoever started it (the CLI's local service client, or ext.local itself).
    assert any(p.stat().st_size for p in (local_home.home / "log").glob("*.log"))

    for ident in (sid, second["id"]):
        assert cli("destroy", ident).returncode == 0
    text = "\n".join(cli.outputs) + caplog.text
    assert not [c for c in canaries if c in text]
    assert not [r.getMessage() for r in caplog.records
                if any(c in r.getMessage() for c in canaries)]
    found = leaks(canaries, homes)
    assert not found, found


def test_restarted_endpoint_stops_a_sandbox_whose_env_ref_it_cannot_resolve(
    kv_server: KVServer, local_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper runs with an allow-listed environment: an env: ref the caller resolved
    at create does not resolve there, so after a restart core stops the sandbox (reason
    secrets_unresolved, naming the secret) instead of serving it without its value."""
    value = canary("rst")
    monkeypatch.setenv("SBX_CANARY_RST", value)
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "rst.yaml").write_text(
        "id: profile.rst\nextends: profile.local\nsetup:\n"
        "  secret_refs: [{name: TOKEN, ref: 'env:SBX_CANARY_RST'}]\n")
    client = LocalClient(Settings.from_env())  # sees SBX_CANARY_RST
    doc = client.create("profile.rst").document()
    before = ssh(doc["reachability"], 'echo "$TOKEN"')
    assert before.stdout.decode().strip() == value
    from sandboxer.extensions.local import control

    pid = control.daemon_pid(local_home)
    assert pid is not None
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while control.daemon_pid(local_home) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    import asyncio

    asyncio.run(control.ensure_running(local_home))  # restores it, then asks core
    # A session meanwhile waits for core's answer, then is refused: never run without it.
    after = ssh(doc["reachability"], 'echo "[$TOKEN]"')
    assert after.returncode == 255
    assert value not in after.stdout.decode() + after.stderr.decode()
    deadline = time.monotonic() + 20
    while client.get_document(doc["id"])["state"] != "stopped":
        assert time.monotonic() < deadline, "core did not stop the sandbox"
        time.sleep(0.1)
    got = client.get_document(doc["id"])
    assert got["reason"] == "secrets_unresolved"
    assert "TOKEN" in got["error"]
    assert value not in json.dumps(got)
    log = (local_home.log_dir / "keeper-ext.local.log").read_text()
    assert "its secrets no longer resolve" in log
    assert value not in log
