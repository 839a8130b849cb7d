"""The descriptor model and the profile's reachability spec: every field, every refusal."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from sandboxer.models.profile import ReachabilitySpec, TunnelSpec
from sandboxer.models.reachability import (
    REACHABILITY_SCHEMA,
    Reachability,
    Tunnel,
    TunnelStatus,
    check_alias_template,
)

BASE: dict[str, Any] = {
    "sandbox_id": "sbx-aaaaaaaaaa", "host": "127.0.0.1", "port": 40123, "user": "agent",
    "identity_file": "/k/sbx-aaaaaaaaaa", "known_hosts": "[127.0.0.1]:40123 ssh-ed25519 AAAA",
    "ssh_command": "ssh -p 40123 agent@127.0.0.1",
}


def test_defaults_are_the_no_tunnel_descriptor() -> None:
    doc = Reachability(**BASE).model_dump(mode="json", by_alias=True)
    assert doc["schema"] == REACHABILITY_SCHEMA
    assert doc["transport"] == "ssh"
    assert {k: doc[k] for k in ("tunnel", "tunnel_via", "identity", "tunnel_status")} == {
        "tunnel": None, "tunnel_via": None, "identity": None, "tunnel_status": None}
    assert list(doc) == ["schema", "sandbox_id", "transport", "host", "port", "user",
                         "identity_file", "known_hosts", "ssh_command", "tunnel",
                         "tunnel_via", "identity", "tunnel_status", "forward"]
    assert doc["forward"] == []


def test_every_field_round_trips() -> None:
    full = Reachability(
        **BASE, tunnel=Tunnel(alias="sbx-x", local_port=2201), tunnel_via="obr-agent-dev",
        identity="agt", tunnel_status=TunnelStatus(command="ops-bridge tunnel status obr",
                                                   doc="docs/integrations/ops-bridge.md"),
    )
    doc = full.model_dump(mode="json", by_alias=True)
    assert doc["tunnel"] == {"alias": "sbx-x", "local_port": 2201}
    assert Reachability.model_validate(doc) == full


@pytest.mark.parametrize(("field", "value"), [
    ("port", 0), ("port", 65536), ("tunnel_via", "a b"), ("identity", "x;y"),
    ("tunnel", {"alias": "a b", "local_port": 2201}),
    ("tunnel", {"alias": "ok", "local_port": 70000}),
    ("transport", "http"), ("schema", "sandboxer.reachability/v2"), ("unknown", 1),
])
def test_descriptor_refuses(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Reachability.model_validate({**BASE, field: value})


def test_spec_defaults_declare_nothing() -> None:
    spec = ReachabilitySpec()
    assert (spec.user, spec.identity, spec.tunnel) == ("sandbox", None, None)
    assert TunnelSpec().model_dump() == {"via": None, "alias": None, "local_port": None}


@pytest.mark.parametrize("tunnel", [
    {"via": "obr-agent-dev", "alias": "sbx-{id}", "local_port": "auto"},
    {"alias": "{id}.dev", "local_port": 2201},
    {"alias": "fixed_alias"}, {"local_port": 1}, {"local_port": 65535}, {},
])
def test_spec_accepts(tunnel: dict[str, Any]) -> None:
    assert ReachabilitySpec.model_validate({"tunnel": tunnel, "identity": "agt"}).tunnel


@pytest.mark.parametrize(("tunnel", "needle"), [
    ({"local_port": 0}, "expected a TCP port 1-65535"),
    ({"local_port": 65536}, "expected a TCP port 1-65535"),
    ({"local_port": True}, "expected a TCP port 1-65535"),
    ({"local_port": "2201"}, "expected a TCP port 1-65535"),
    ({"local_port": "AUTO"}, "expected a TCP port 1-65535"),
    ({"alias": "two words"}, "no spaces or shell metacharacters"),
    ({"alias": "sbx-$(id)"}, "no spaces or shell metacharacters"),
    ({"alias": "a;b"}, "no spaces or shell metacharacters"),
    ({"alias": "-oProxyCommand=x"}, "no spaces or shell metacharacters"),
    ({"alias": "sbx-*"}, "no spaces or shell metacharacters"),
    ({"alias": "sbx-{name}"}, "unknown placeholder {name}"),
    ({"alias": "sbx-{}"}, "unknown placeholder {}"),
    ({"alias": "sbx-{id"}, "no spaces or shell metacharacters"),
    ({"via": "obr agent"}, "an ops-bridge route id"),
    ({"via": "obr|x"}, "an ops-bridge route id"),
    ({"via": "x" * 65}, "an ops-bridge route id"),
    ({"unknown": 1}, "Extra inputs are not permitted"),
])
def test_spec_refuses(tunnel: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(needle)):
        ReachabilitySpec.model_validate({"tunnel": tunnel})


def test_identity_must_be_an_actor_id() -> None:
    with pytest.raises(ValidationError, match="warden actor id"):
        ReachabilitySpec.model_validate({"identity": "agt && rm"})


def test_alias_placeholder_only_id() -> None:
    assert check_alias_template("{id}-{id}") == "{id}-{id}"
    with pytest.raises(ValueError, match=r"unknown placeholder \{ID\}"):
        check_alias_template("{ID}")
