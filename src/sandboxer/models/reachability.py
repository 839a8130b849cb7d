"""The versioned reachability descriptor handed to consumers (docs/meta-framework.md).

Versioning: within ``sandboxer.reachability/v1`` fields are only ever added; removing a
field or changing what one means is ``v2`` (docs/meta-framework.md).
"""

from __future__ import annotations

import re
from typing import Final, Literal

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel
from sandboxer.values import ALIAS_PATTERN, HOST_PATTERN, USER_PATTERN

REACHABILITY_SCHEMA: Final = "sandboxer.reachability/v1"
TUNNEL_STATUS_DOC: Final = "docs/integrations/ops-bridge.md"

# An ops-bridge route id or a warden actor id: a word safe to paste into a shell command.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a route or actor id, else ValueError naming ``what``."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{what}: expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
            f"or digit, got {value!r}"
        )
    return value


def check_alias_template(value: str) -> str:
    """An alias that may contain ``{id}``; any other placeholder is an error."""
    for name in PLACEHOLDER.findall(value):
        if name != "id":
            raise ValueError(
                f"alias {value!r}: unknown placeholder {{{name}}}; only {{id}} is accepted"
            )
    probe = value.replace("{id}", "sbx-aaaaaaaaaa")
    if not re.fullmatch(ALIAS_PATTERN, probe):
        raise ValueError(
            f"alias {value!r}: expected letters, digits, '.', '_', '-' and the placeholder "
            "{id}, starting with a letter, digit or {id}; no spaces or shell metacharacters"
        )
    return value


def check_port(value: object, what: str) -> int:
    """A TCP port 1-65535 (booleans are not ports)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: expected a TCP port 1-65535, got {value!r}")
    return value


class Tunnel(StrictModel):
    """Where the consumer's end of an ops-bridge tunnel listens."""

    alias: str = Field(
        pattern=ALIAS_PATTERN,
        description="local SSH host alias; HostKeyAlias and the ssh-config Host name",
    )
    local_port: int = Field(
        ge=1, le=65535, description="port on 127.0.0.1 where the tunnel's local end listens"
    )


class TunnelStatus(StrictModel):
    """A pointer to where a tunnel's status is found; sand-boxer never checks it."""

    command: str = Field(description="the command that shows the tunnel's status")
    doc: str = Field(description="documentation of the integration, relative to the repo")


class Reachability(StrictModel):
    """How to reach a ready sandbox: direct SSH endpoint, pinned host key, tunnel metadata."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["sandboxer.reachability/v1"] = Field(REACHABILITY_SCHEMA, alias="schema")
    sandbox_id: str = Field(description="the sandbox this descriptor belongs to")
    transport: Literal["ssh"] = Field("ssh", description="always ssh in v1")
    host: str = Field(pattern=HOST_PATTERN,
                      description="direct endpoint host (what an ops-bridge route targets)")
    port: int = Field(ge=1, le=65535, description="direct endpoint port")
    user: str = Field(pattern=USER_PATTERN, description="SSH user inside the sandbox")
    identity_file: str = Field(description="private key file on the creating machine")
    known_hosts: str = Field(
        description="known_hosts line pinning the host key, for the direct name and the "
        "tunnel alias when one is declared"
    )
    ssh_command: str = Field(
        description="OpenSSH one-liner; through 127.0.0.1:tunnel.local_port with "
        "HostKeyAlias when a tunnel is declared, else direct"
    )
    tunnel: Tunnel | None = Field(None, description="null unless a tunnel is declared")
    tunnel_via: str | None = Field(
        None, pattern=NAME_PATTERN, description="ops-bridge route id carrying the tunnel"
    )
    identity: str | None = Field(
        None, pattern=NAME_PATTERN, description="warden actor hint for the consumer"
    )
    tunnel_status: TunnelStatus | None = Field(
        None, description="where to see the tunnel's status; null unless tunnel_via is set"
    )
    forward: list[int] = Field(
        default_factory=list,
        description="ports of the sandbox's own loopback that `ssh -L` may reach "
        "(the profile's reachability.forward; `sandboxer port-forward`); empty: none",
    )
