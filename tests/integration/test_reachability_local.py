"""Reachability v1 against a real ext.local sandbox and the system OpenSSH client.

There is no ops-bridge here, so the tunnel path is proven with a tiny TCP forwarder on
127.0.0.1:tunnel.local_port: what ops-bridge would run. It shows that the key pinned under
the tunnel alias (HostKeyAlias) lets the right sandbox in and keeps a wrong one out.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sandboxer import schemas
from sandboxer.config import Settings

from .conftest import SANDBOXER, ssh

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TUNNEL_VARS = ("SANDBOXER_TUNNEL_VIA", "SANDBOXER_TUNNEL_ALIAS",
               "SANDBOXER_TUNNEL_LOCAL_PORT", "SANDBOXER_TUNNEL_IDENTITY",
               "SANDBOXER_TUNNEL_PORT_RANGE")
FORWARDER = """
import asyncio, sys

async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    finally:
        w.close()

async def handle(r, w):
    r2, w2 = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    await asyncio.gather(pipe(r, w2), pipe(r2, w))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This test's SANDBOXER_HOME etc., without any SANDBOXER_TUNNEL_* of the caller."""
    env = {k: v for k, v in os.environ.items() if k not in TUNNEL_VARS}
    return {**env, **extra}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOXER, *args], capture_output=True, text=True, timeout=120,
                          env=env or clean_env(), stdin=subprocess.DEVNULL, check=False)


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    done = cli(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def validator(file: str) -> jsonschema.Draft202012Validator:
    published = json.loads((ROOT / "docs" / "schemas" / file).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schemas.strict(published))


@contextmanager
def forwarder(listen: int, target: int) -> Iterator[None]:
    """127.0.0.1:listen -> 127.0.0.1:target, like the local end of a tunnel."""
    proc = subprocess.Popen([sys.executable, "-c", FORWARDER, str(listen), str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def openssh(config: Path, host: str, command: str) -> subprocess.CompletedProcess[bytes]:
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            host, "--", command]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)


def test_tunnel_metadata_is_stored_and_read_from_a_shell_without_the_variables(
    local_home: Settings,
) -> None:
    creating = clean_env(SANDBOXER_TUNNEL_VIA="obr-agent-dev", SANDBOXER_TUNNEL_ALIAS="dev-{id}",
                         SANDBOXER_TUNNEL_LOCAL_PORT="auto", SANDBOXER_TUNNEL_IDENTITY="agt")
    created = cli_json("create", "profile.local", "--ttl", "5m", "-q", env=creating)
    sid = created["id"]
    shown = cli_json("reachability", "show", sid)  # clean_env(): no SANDBOXER_TUNNEL_*
    got = cli_json("get", sid)
    assert shown == got["reachability"] == created["reachability"]
    validator("reachability.v1.json").validate(shown)
    for doc in (created, got):
        validator("sandbox.v1.json").validate(doc)
    assert shown["tunnel"]["alias"] == f"dev-{sid}"
    assert 2200 <= shown["tunnel"]["local_port"] <= 2999
    assert (shown["tunnel_via"], shown["identity"]) == ("obr-agent-dev", "agt")
    assert shown["tunnel_status"] == {"command": "ops-bridge tunnel status obr-agent-dev",
                                      "doc": "docs/integrations/ops-bridge.md"}
    # host/port stay the direct endpoint, which still answers (no tunnel needed for it)
    assert shown["host"] == "127.0.0.1"
    assert shown["port"] != shown["tunnel"]["local_port"]
    direct = cli("ssh", sid, "--direct", "--json", "--", "echo direct")
    assert direct.returncode == 0, direct.stdout
    assert json.loads(direct.stdout)["stdout"] == "direct\n"
    human = cli("reachability", "show", sid)
    assert "ops-bridge tunnel status obr-agent-dev" in human.stdout


def test_ssh_config_reaches_a_sandbox_with_strict_host_key_checking(
    local_home: Settings, tmp_path: Path
) -> None:
    created = cli_json("create", "profile.local", "--ttl", "5m", "-q")
    sid = created["id"]
    assert created["reachability"]["tunnel"] is None
    config = tmp_path / "ssh_config"
    done = cli("ssh-config", sid)
    assert done.returncode == 0, done.stderr
    config.write_text(done.stdout)
    assert "    StrictHostKeyChecking yes\n" in done.stdout
    reached = openssh(config, sid, "echo $USER:$PWD")
    assert reached.returncode == 0, reached.stderr
    assert reached.stdout.decode() == f"{created['reachability']['user']}:/workspace\n"
    # every ready sandbox, unchanged for this one
    assert done.stdout.split("\n", 2)[2] in cli("ssh-config").stdout
    # the pinned key is enforced: another key under the same name is refused
    known = local_home.keys_dir / f"{sid}.known_hosts"
    good = known.read_text()
    known.write_text(f"[127.0.0.1]:{created['reachability']['port']} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIGJzZWNvbmRrZXlub3R0aGVyZWFsb25lYWFhYWFhYWFh\n")
    refused = openssh(config, sid, "true")
    assert refused.returncode == 255
    assert b"host key" in refused.stderr.lower()
    known.write_text(good)


def test_a_tunnel_is_verified_against_the_sandbox_key_under_its_alias(
    local_home: Settings, tmp_path: Path
) -> None:
    creating = clean_env(SANDBOXER_TUNNEL_VIA="obr-test", SANDBOXER_TUNNEL_ALIAS="tun-{id}")
    created = cli_json("create", "profile.local", "--ttl", "5m", "-q", env=creating)
    other = cli_json("create", "profile.local", "--ttl", "5m", "-q")
    sid, reach = created["id"], created["reachability"]
    alias, local_port = reach["tunnel"]["alias"], reach["tunnel"]["local_port"]
    assert "HostKeyAlias=" + alias in shlex.split(reach["ssh_command"])
    known = (local_home.keys_dir / f"{sid}.known_hosts").read_text().splitlines()
    assert reach["known_hosts"] in known
    config = tmp_path / "ssh_config"
    config.write_text(cli("ssh-config").stdout)
    assert f"Host {alias}\n" in config.read_text()

    down = openssh(config, alias, "true")  # nobody runs the tunnel yet
    assert down.returncode == 255
    with forwarder(local_port, reach["port"]):
        via_config = openssh(config, alias, "echo $SANDBOXER_ID")
        assert via_config.returncode == 0, via_config.stderr
        assert via_config.stdout.decode() == f"{sid}\n"
        via_descriptor = ssh(reach, "echo one-liner")
        assert via_descriptor.returncode == 0, via_descriptor.stderr
        via_cli = cli("ssh", sid, "--json", "--", "echo cli")
        assert json.loads(via_cli.stdout)["stdout"] == "cli\n"
    # a route that lands on another sandbox is refused: the alias pins this one's key
    with forwarder(local_port, other["reachability"]["port"]):
        wrong = openssh(config, alias, "true")
        assert wrong.returncode == 255
        assert b"host key" in wrong.stderr.lower() or b"verification" in wrong.stderr.lower()


@pytest.mark.parametrize(("name", "value"), [
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "70000"),
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "0"),
    ("SANDBOXER_TUNNEL_ALIAS", "my sandbox"),
    ("SANDBOXER_TUNNEL_ALIAS", "sbx-$(reboot)"),
    ("SANDBOXER_TUNNEL_ALIAS", "sbx-{name}"),
    ("SANDBOXER_TUNNEL_VIA", "obr;rm -rf ~"),
    ("SANDBOXER_TUNNEL_PORT_RANGE", "2999-2200"),
])
def test_bad_values_are_refused_before_anything_is_created(
    local_home: Settings, name: str, value: str
) -> None:
    done = cli("create", "profile.local", "--json", "-q", env=clean_env(**{name: value}))
    assert done.returncode == 4, done.stderr
    assert json.loads(done.stdout)["code"] == "invalid_input"
    assert name in done.stderr
    assert_nothing_created(local_home)


def test_a_bad_profile_tunnel_is_refused_before_anything_is_created(
    local_home: Settings,
) -> None:
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "tun.yaml").write_text(
        "id: profile.tun\nextends: profile.local\n"
        "reachability:\n  tunnel: {via: obr-x, alias: 'sbx-{host}', local_port: 65536}\n")
    done = cli("create", "profile.tun", "--json", "-q")
    assert done.returncode == 4, done.stderr
    assert json.loads(done.stdout)["code"] == "profile_invalid"
    assert "reachability.tunnel.alias" in done.stderr
    assert "reachability.tunnel.local_port" in done.stderr
    assert cli("profiles", "validate", str(profiles / "tun.yaml")).returncode == 4
    assert_nothing_created(local_home)


def assert_nothing_created(settings: Settings) -> None:
    assert cli_json("list", "--all")["items"] == []
    # The service's spare images (extensions/local/spares.py) are no sandbox's.
    workspaces = settings.local_root
    assert not workspaces.exists() or not [p for p in workspaces.iterdir()
                                           if p.name != ".spares"]
    assert not settings.keys_dir.exists() or not any(settings.keys_dir.iterdir())
