"""Descriptor assembly: precedence (profile only, env only, both, neither), auto ports,
pinned host key for both names, SSH options, and refusal before anything is created."""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, NoTarget, ProfileInvalid
from sandboxer.extensions.base import Endpoint, key_paths
from sandboxer.manager import Manager
from sandboxer.models.profile import Profile
from sandboxer.openssh import ensure_known_hosts, known_hosts_path
from sandboxer.openssh import stanza as ssh_config_stanza
from sandboxer.reachability import (
    DEFAULT_PORT_RANGE,
    TunnelDecl,
    assemble,
    host_alias,
    parse_port_range,
    pick_local_port,
    resolve_tunnel,
    ssh_options,
)
from sandboxer.values import config_value

SID = "sbx-abcdefghij"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE"
TUNNEL_ENV = {"SANDBOXER_TUNNEL_VIA": "obr-env", "SANDBOXER_TUNNEL_ALIAS": "env-{id}",
              "SANDBOXER_TUNNEL_LOCAL_PORT": "2301", "SANDBOXER_TUNNEL_IDENTITY": "env-actor"}
PROFILE_TUNNEL = {"identity": "agt",
                  "tunnel": {"via": "obr-profile", "alias": "sbx-{id}", "local_port": 2201}}


def profile(reachability: dict[str, Any] | None = None) -> Profile:
    return Profile.model_validate({"id": "profile.t", "extension": "ext.fake",
                                   "reachability": reachability or {}})


def endpoint(tmp_path: Path, port: int = 40123) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=port, user="agent", host_key=f"{KEY} comment",
                    identity_file=str(tmp_path / SID),
                    known_hosts_file=str(tmp_path / f"{SID}.known_hosts"))


def no_bind_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandboxer.reachability._bindable", lambda _port: True)


# -- precedence -----------------------------------------------------------------------


def test_neither_declares_nothing(tmp_path: Path) -> None:
    assert resolve_tunnel(profile().reachability, {}) == TunnelDecl()
    r = assemble(SID, endpoint(tmp_path), profile(), {})
    assert (r.tunnel, r.tunnel_via, r.identity, r.tunnel_status) == (None, None, None, None)
    assert r.known_hosts == f"[127.0.0.1]:40123 {KEY}"
    assert "HostKeyAlias" not in r.ssh_command
    assert r.ssh_command.endswith("-p 40123 agent@127.0.0.1")
    assert not (tmp_path / f"{SID}.known_hosts").exists()  # nothing to add for no tunnel


def test_profile_only(tmp_path: Path) -> None:
    r = assemble(SID, endpoint(tmp_path), profile(PROFILE_TUNNEL), {})
    assert r.tunnel is not None
    assert (r.tunnel.alias, r.tunnel.local_port) == (f"sbx-{SID}", 2201)
    assert (r.tunnel_via, r.identity) == ("obr-profile", "agt")
    assert r.tunnel_status is not None
    assert r.tunnel_status.command == "ops-bridge tunnel status obr-profile"
    assert r.tunnel_status.doc == "docs/integrations/ops-bridge.md"
    # host/port/user stay the direct endpoint; the command goes through the tunnel.
    assert (r.host, r.port, r.user) == ("127.0.0.1", 40123, "agent")
    argv = shlex.split(r.ssh_command)
    assert argv[-3:] == ["-p", "2201", "agent@127.0.0.1"]
    assert f"HostKeyAlias=sbx-{SID}" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert r.known_hosts == f"[127.0.0.1]:40123,sbx-{SID} {KEY}"


def test_env_only(tmp_path: Path) -> None:
    r = assemble(SID, endpoint(tmp_path), profile(), TUNNEL_ENV)
    assert r.tunnel is not None
    assert (r.tunnel.alias, r.tunnel.local_port) == (f"env-{SID}", 2301)
    assert (r.tunnel_via, r.identity) == ("obr-env", "env-actor")
    assert r.tunnel_status is not None
    assert r.tunnel_status.command == "ops-bridge tunnel status obr-env"


def test_env_overrides_profile_key_by_key(tmp_path: Path) -> None:
    r = assemble(SID, endpoint(tmp_path), profile(PROFILE_TUNNEL), TUNNEL_ENV)
    assert r.tunnel is not None
    assert (r.tunnel.alias, r.tunnel.local_port, r.tunnel_via, r.identity) == (
        f"env-{SID}", 2301, "obr-env", "env-actor")
    partial = {"SANDBOXER_TUNNEL_LOCAL_PORT": "2400", "SANDBOXER_TUNNEL_VIA": ""}
    r = assemble(SID, endpoint(tmp_path), profile(PROFILE_TUNNEL), partial)
    assert r.tunnel is not None
    # an empty variable counts as unset: the profile's via stands
    assert (r.tunnel.alias, r.tunnel.local_port, r.tunnel_via, r.identity) == (
        f"sbx-{SID}", 2400, "obr-profile", "agt")


def test_identity_alone_declares_no_tunnel(tmp_path: Path) -> None:
    for prof, env in [(profile({"identity": "agt"}), {}),
                      (profile(), {"SANDBOXER_TUNNEL_IDENTITY": "agt"})]:
        r = assemble(SID, endpoint(tmp_path), prof, env)
        assert (r.identity, r.tunnel, r.tunnel_via, r.tunnel_status) == ("agt", None, None, None)


def test_one_key_declares_a_tunnel_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_bind_probe(monkeypatch)
    for prof, env in [(profile(), {"SANDBOXER_TUNNEL_LOCAL_PORT": "2500"}),
                      (profile({"tunnel": {"local_port": 2500}}), {})]:
        r = assemble(SID, endpoint(tmp_path), prof, env)
        assert r.tunnel is not None
        assert (r.tunnel.alias, r.tunnel.local_port) == (SID, 2500)  # alias {id}
        assert (r.tunnel_via, r.tunnel_status) == (None, None)  # not carried by ops-bridge
    r = assemble(SID, endpoint(tmp_path), profile({"tunnel": {}}), {})
    assert r.tunnel is not None
    assert r.tunnel.alias == SID
    assert DEFAULT_PORT_RANGE[0] <= r.tunnel.local_port <= DEFAULT_PORT_RANGE[1]  # auto
    r = assemble(SID, endpoint(tmp_path), profile(), {"SANDBOXER_TUNNEL_VIA": "obr-x"})
    assert r.tunnel is not None
    assert (r.tunnel.alias, r.tunnel_via) == (SID, "obr-x")


def test_profile_tunnel_null_in_a_child_removes_it(tmp_path: Path) -> None:
    r = assemble(SID, endpoint(tmp_path), profile({"tunnel": None}), {})
    assert r.tunnel is None


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "70000", "expected a TCP port 1-65535"),
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "0", "expected a TCP port 1-65535"),
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "22x", "expected a TCP port 1-65535"),
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "-1", "expected a TCP port 1-65535"),
    ("SANDBOXER_TUNNEL_ALIAS", "my alias", "no spaces or shell metacharacters"),
    ("SANDBOXER_TUNNEL_ALIAS", "a`id`", "no spaces or shell metacharacters"),
    ("SANDBOXER_TUNNEL_ALIAS", "sbx-{user}", "unknown placeholder {user}"),
    ("SANDBOXER_TUNNEL_VIA", "route; rm -rf /", "an ops-bridge route id"),
    ("SANDBOXER_TUNNEL_IDENTITY", "a b", "a warden actor id"),
    ("SANDBOXER_TUNNEL_PORT_RANGE", "3000-2000", "LOW <= HIGH"),
    ("SANDBOXER_TUNNEL_PORT_RANGE", "0-10", "LOW <= HIGH"),
    ("SANDBOXER_TUNNEL_PORT_RANGE", "2200", "expected a port range"),
])
def test_bad_environment_is_invalid_input(name: str, value: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        resolve_tunnel(profile().reachability, {name: value})
    text = info.value.render()
    assert text.startswith(f"{name}={value!r}: ")
    assert needle in text
    assert info.value.exit_code == 4


def test_port_range_parsing() -> None:
    assert parse_port_range("2200-2999") == (2200, 2999)
    assert parse_port_range(" 5 - 5 ") == (5, 5)


# -- auto ports -----------------------------------------------------------------------


def test_auto_port_is_deterministic_per_sandbox() -> None:
    free = lambda _p: True  # noqa: E731
    a = pick_local_port(SID, (2200, 2999), bindable=free)
    assert a == pick_local_port(SID, (2200, 2999), bindable=free)
    assert 2200 <= a <= 2999
    others = {pick_local_port(f"sbx-{i:010d}", (2200, 2999), bindable=free) for i in range(50)}
    assert len(others) > 30  # spread over the range, not one port for all


def test_auto_port_walks_forward_past_taken_and_bound_ports() -> None:
    start = pick_local_port(SID, (2200, 2209), bindable=lambda _p: True)
    nxt = 2200 + (start - 2200 + 1) % 10
    after = 2200 + (start - 2200 + 2) % 10
    assert pick_local_port(SID, (2200, 2209), taken={start}, bindable=lambda _p: True) == nxt
    assert pick_local_port(SID, (2200, 2209), taken={start},
                           bindable=lambda p: p != nxt) == after
    with pytest.raises(NoTarget, match="no free tunnel port"):
        pick_local_port(SID, (2200, 2201), taken={2200}, bindable=lambda p: p != 2201)


def test_auto_port_skips_a_port_something_listens_on() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        held = s.getsockname()[1]
        with pytest.raises(NoTarget):
            pick_local_port(SID, (held, held))
    assert pick_local_port(SID, (held, held)) == held  # released: free again


def test_auto_port_honours_the_configured_range(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    no_bind_probe(monkeypatch)
    env = {"SANDBOXER_TUNNEL_LOCAL_PORT": "auto", "SANDBOXER_TUNNEL_PORT_RANGE": "4000-4000"}
    r = assemble(SID, endpoint(tmp_path), profile(), env)
    assert r.tunnel is not None
    assert r.tunnel.local_port == 4000


def test_auto_port_avoids_other_live_sandboxes_tunnels(settings: Settings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    no_bind_probe(monkeypatch)
    monkeypatch.setenv("SANDBOXER_TUNNEL_LOCAL_PORT", "auto")
    monkeypatch.setenv("SANDBOXER_TUNNEL_PORT_RANGE", "4000-4002")
    m = Manager(Settings.from_env())
    ports = []
    for _ in range(3):
        reach = asyncio.run(m.create("profile.fake")).reachability
        assert reach is not None
        assert reach.tunnel is not None
        ports.append(reach.tunnel.local_port)
    assert sorted(ports) == [4000, 4001, 4002]
    with pytest.raises(NoTarget):
        asyncio.run(m.create("profile.fake"))


# -- the pinned host key, for both names ------------------------------------------------


def test_tunnel_alias_is_pinned_in_the_known_hosts_file(tmp_path: Path) -> None:
    ep = endpoint(tmp_path)
    direct = f"[127.0.0.1]:40123 {KEY}"
    Path(ep.known_hosts_file).write_text(direct + "\n")
    r = assemble(SID, ep, profile(PROFILE_TUNNEL), {})
    lines = Path(ep.known_hosts_file).read_text().splitlines()
    assert lines == [direct, r.known_hosts]
    assert os.stat(ep.known_hosts_file).st_mode & 0o777 == 0o600
    assemble(SID, ep, profile(PROFILE_TUNNEL), {})  # idempotent
    assert Path(ep.known_hosts_file).read_text().splitlines() == lines


def test_a_non_regular_known_hosts_file_is_left_alone(tmp_path: Path) -> None:
    ep = endpoint(tmp_path).model_copy(update={"known_hosts_file": "/dev/null"})
    assert assemble(SID, ep, profile(PROFILE_TUNNEL), {}).tunnel is not None


def test_known_hosts_path_is_the_extension_key_path(settings: Settings) -> None:
    assert known_hosts_path(settings, SID) == key_paths(settings, SID)["known_hosts"]


def test_ensure_known_hosts_creates_and_appends(tmp_path: Path) -> None:
    f = tmp_path / "keys" / "x.known_hosts"
    ensure_known_hosts(f, "a k")
    ensure_known_hosts(f, "b k")
    ensure_known_hosts(f, "a k")
    assert f.read_text() == "a k\nb k\n"


# -- SSH options shared by ssh, ssh-config and the one-liner ----------------------------


def test_ssh_options_direct_and_through_the_tunnel(tmp_path: Path) -> None:
    doc = assemble(SID, endpoint(tmp_path), profile(PROFILE_TUNNEL), {}).model_dump(
        mode="json", by_alias=True)
    through = dict(ssh_options(doc, "/k/kh"))
    assert through == {
        "HostName": "127.0.0.1", "Port": "2201", "User": "agent",
        "IdentityFile": str(tmp_path / SID), "IdentitiesOnly": "yes",
        "UserKnownHostsFile": "/k/kh", "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes", "HostKeyAlias": f"sbx-{SID}",
    }
    direct = dict(ssh_options(doc, "/k/kh", direct=True))
    assert (direct["Port"], "HostKeyAlias" in direct) == ("40123", False)
    assert host_alias(doc) == f"sbx-{SID}"
    assert host_alias({**doc, "tunnel": None}) == SID


def test_config_values_survive_spaces_quotes_and_percent_signs() -> None:
    assert config_value("/plain/path", path=True) == "/plain/path"
    assert config_value("/a b/%h", path=True) == '"/a b/%%h"'
    assert config_value('/a"b', path=True) == '"/a\\"b"'
    assert config_value("/x#y") == '"/x#y"'
    assert config_value("/a b", path=True, quote=False) == "/a b"
    stanza = ssh_config_stanza("h", [("IdentityFile", "/a b/k"), ("Port", "22")], "c")
    assert stanza == '# c\nHost h\n    IdentityFile "/a b/k"\n    Port 22\n'


def test_ssh_command_quotes_paths(tmp_path: Path) -> None:
    spaced = tmp_path / "a b"
    ep = endpoint(spaced)
    argv = shlex.split(assemble(SID, ep, profile(), {}).ssh_command)
    assert argv[argv.index("-i") + 1] == str(spaced / SID)
    assert f'UserKnownHostsFile="{spaced / SID}.known_hosts"' in argv


# -- refused before anything is created -----------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("SANDBOXER_TUNNEL_LOCAL_PORT", "65536"), ("SANDBOXER_TUNNEL_ALIAS", "a b"),
    ("SANDBOXER_TUNNEL_ALIAS", "x{host}"), ("SANDBOXER_TUNNEL_VIA", "bad route"),
])
def test_manager_refuses_bad_environment_before_creating(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    m = Manager(Settings.from_env())
    with pytest.raises(InvalidInput, match=name):
        asyncio.run(m.create("profile.fake"))
    assert m.store.query() == []
    assert not (settings.home / "fake").exists()


def test_bad_profile_tunnel_is_profile_invalid(settings: Settings, profiles_dir: Path) -> None:
    (profiles_dir / "bad.yaml").write_text(
        "id: profile.bad\nextension: ext.fake\n"
        "reachability:\n  tunnel: {alias: 'sbx {id}', local_port: 99999}\n")
    m = Manager(settings)
    with pytest.raises(ProfileInvalid) as info:
        asyncio.run(m.create("profile.bad"))
    assert "reachability.tunnel.alias" in info.value.render()
    assert "reachability.tunnel.local_port" in info.value.render()
    assert m.store.query() == []
