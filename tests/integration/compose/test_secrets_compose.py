"""Canary tests on ext.compose-ssh, through a real SSH target and dockerd.

Values are resolved from a KV v2 server (bao:) and the environment (env:), streamed into
the main container's /run/secrets tmpfs with `docker exec -i` over the target's SSH
channel, and exported into SSH sessions. They must be visible inside the sandbox (non-login
commands, login shells, a PTY) and nowhere else: not under $SANDBOXER_HOME, not in the
project directory on the target, not anywhere in dockerd's data root (images, container
layers, logs), not in `docker inspect`, not in any CLI output or log record, and not in
the error of a create that fails after resolution.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.canary_support import Cli, leaks

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings

if TYPE_CHECKING:
    from ..conftest import KVServer
    from .conftest import DockerDaemon, SshTarget

pytestmark = pytest.mark.integration


def sandbox_ssh(reach: dict[str, Any], command: str, *, tty_input: str | None = None
                ) -> subprocess.CompletedProcess[bytes]:
    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10"]
    if tty_input is not None:
        return subprocess.run([*argv, "-tt"], input=tty_input.encode(), capture_output=True,
                              timeout=60, check=False)
    return subprocess.run([*argv, "--", command], capture_output=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


def test_canaries_on_ext_compose_ssh(
    kv_server: KVServer, ssh_target: SshTarget, docker_daemon: DockerDaemon, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    bao, env = f"cnrybao{secrets.token_hex(12)}", f"cnryenv{secrets.token_hex(12)}"
    canaries = [bao, env]
    kv_server.put("kv/ci/deploy", token=bao)
    home = tmp_path / "home"
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for k, v in {"SANDBOXER_HOME": str(home), "HOME": str(tmp_path / "user"),
                 "SANDBOXER_PROFILES": str(profiles), "SBX_CANARY_ENV": env}.items():
        monkeypatch.setenv(k, v)
    compose = {"services": {"main": {"image": ssh_target.image}}}
    refs = [{"name": "TOKEN", "ref": "bao:kv/ci/deploy#token"},
            {"name": "ENVTOK", "ref": "env:SBX_CANARY_ENV"}]
    base = {"extension": "ext.compose-ssh", "route": "self-hosted-only",
            "spec": {"service": "main", "pull": "never", "compose": compose},
            "reachability": {"user": "agent"}}
    (profiles / "csec.yaml").write_text(json.dumps(
        {"id": "profile.csec", **base, "setup": {"env": {"PLAIN": "plain"},
                                                 "secret_refs": refs}}))
    (profiles / "cleaky.yaml").write_text(json.dumps(
        {"id": "profile.cleaky", **base, "setup": {
            "instructions": ['echo "leak $TOKEN $ENVTOK"; exit 3'], "secret_refs": refs}}))
    cli = Cli(timeout=600)
    added = cli("targets", "add", "tgt", ssh_target.url, "--identity",
                str(ssh_target.identity_file), "--yes", "--json")
    assert added.returncode == 0, added.stderr

    planned = cli("create", "profile.csec", "--target", "tgt", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert [r["status"] for r in json.loads(planned.stdout)["secret_refs"]] == ["ok", "ok"]

    created = cli("create", "profile.csec", "--target", "tgt", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    sid, reach = doc["id"], doc["reachability"]

    # Inside: a non-login command, a login shell from a clean environment, a PTY, the files.
    plain = sandbox_ssh(reach, 'printf "%s|%s|%s\\n" "$TOKEN" "$ENVTOK" "$PLAIN"; '
                        'stat -c "%a %U" /run/secrets/TOKEN /run/secrets/ENVTOK; '
                        'cat /run/secrets/TOKEN; echo; exit 7')
    assert plain.returncode == 7, plain.stderr  # the wrapper keeps the exit status
    assert plain.stdout.decode().splitlines() == [f"{bao}|{env}|plain", "400 agent",
                                                  "400 agent", bao]
    login = sandbox_ssh(reach, 'env -i bash -l -c \'printf "%s|%s\\n" "$TOKEN" "$ENVTOK"\'')
    assert login.stdout.decode().strip() == f"{bao}|{env}", login.stderr
    pty = sandbox_ssh(reach, "", tty_input='printf "pty[%s]\\n" "$TOKEN"; exit\n')
    assert f"pty[{bao}]" in pty.stdout.decode(errors="replace")

    # Second create in-process with every logger at DEBUG (asyncssh included).
    with caplog.at_level(logging.DEBUG):
        second = LocalClient(Settings.from_env()).create(
            "profile.csec", target="tgt").document()
    assert second["state"] == "ready"

    failed = cli("create", "profile.cleaky", "--target", "tgt", "--json")
    assert failed.returncode == 5, failed.stderr
    assert "leak *** ***" in json.loads(failed.stdout)["message"]
    failed_id = json.loads(failed.stdout)["message"].split()[1]

    for ident in (sid, second["id"], failed_id):
        cli("get", ident)
        cli("get", ident, "--json")
    for ident in (sid, second["id"]):
        cli("reachability", "show", ident)
        cli("reachability", "show", ident, "--json")
    for argv in (["list", "--all"], ["list", "--all", "--json"], ["events"],
                 ["events", "--json"]):
        assert cli(*argv).returncode == 0

    inspected = docker_daemon.docker("inspect", *docker_daemon.docker(
        "ps", "-aq", "--filter", "label=sandboxer.id").stdout.split()).stdout
    assert sid in inspected
    assert "/run/secrets" in inspected
    assert not [c for c in canaries if c in inspected]
    data_root = docker_daemon.root or Path(docker_daemon.docker(
        "info", "--format", "{{.DockerRootDir}}").stdout.strip())
    roots = [home, ssh_target.home, data_root]
    found = leaks(canaries, roots)
    assert not found, found

    for ident in (sid, second["id"]):
        assert cli("destroy", ident).returncode == 0
    text = "\n".join(cli.outputs) + caplog.text
    assert not [c for c in canaries if c in text]
    found = leaks(canaries, roots)
    assert not found, found
