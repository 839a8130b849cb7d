"""The reachability descriptor (docs/meta-framework.md): assembled once at ready, read often.

Values come from the extension's endpoint, then the profile's ``reachability`` spec, then
``SANDBOXER_TUNNEL_*`` in the environment of the process that creates the sandbox (the
environment wins, key by key). The resolved descriptor is stored with the sandbox, so any
shell later prints the same thing. sand-boxer never starts or checks a tunnel.

This module imports no pydantic at module level: ``ssh-config`` and ``ssh`` use the
descriptor helpers at the bottom on plain ``sandboxer.reachability/v1`` documents; the
OpenSSH knowledge itself (options, quoting, known_hosts lines) is ``sandboxer.openssh``.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from sandboxer import openssh
from sandboxer.errors import InvalidInput, NoTarget
from sandboxer.values import ALIAS_PATTERN, LIVE_STATES, validate_host, validate_user

if TYPE_CHECKING:
    from sandboxer.models.extension import Endpoint
    from sandboxer.models.profile import Profile, ReachabilitySpec
    from sandboxer.models.reachability import Reachability, Tunnel

ENV_VIA = "SANDBOXER_TUNNEL_VIA"
ENV_ALIAS = "SANDBOXER_TUNNEL_ALIAS"
ENV_LOCAL_PORT = "SANDBOXER_TUNNEL_LOCAL_PORT"
ENV_IDENTITY = "SANDBOXER_TUNNEL_IDENTITY"
ENV_PORT_RANGE = "SANDBOXER_TUNNEL_PORT_RANGE"
DEFAULT_ALIAS = "{id}"
DEFAULT_PORT_RANGE = (2200, 2999)
T = TypeVar("T")


@dataclass(frozen=True)
class TunnelDecl:
    """What the profile and the environment declare, validated; nothing picked yet."""

    declared: bool = False
    via: str | None = None
    alias: str = DEFAULT_ALIAS
    local_port: int | Literal["auto"] = "auto"
    identity: str | None = None
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE


class Documents(Protocol):
    """The part of the store that auto port selection reads."""

    def query_documents(self, *, states: Iterable[str] | None = None
                        ) -> list[dict[str, Any]]: ...


def _from_env(env: Mapping[str, str], name: str, check: Callable[[str], T]) -> T | None:
    """The checked value of ``name``; set-but-empty counts as unset."""
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return check(value)
    except ValueError as e:
        raise InvalidInput(
            f"{name}={value!r}: {e}",
            hint=f"fix or unset {name} in the environment of the creating process "
            "(see docs/meta-framework.md)",
        ) from e


def parse_port_range(text: str) -> tuple[int, int]:
    """``"2200-2999"`` -> (2200, 2999); both ends are ports and low <= high."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", text)
    if not m:
        raise ValueError("expected a port range LOW-HIGH such as 2200-2999")
    low, high = int(m.group(1)), int(m.group(2))
    if not (1 <= low <= high <= 65535):
        raise ValueError(f"expected 1 <= LOW <= HIGH <= 65535, got {low}-{high}")
    return low, high


def _local_port(text: str) -> int | Literal["auto"]:
    from sandboxer.models.reachability import check_port

    if text == "auto":
        return "auto"
    return check_port(int(text) if text.isdigit() else text, "local_port (or auto)")


def resolve_tunnel(spec: ReachabilitySpec, env: Mapping[str, str]) -> TunnelDecl:
    """Merge the profile's spec with ``SANDBOXER_TUNNEL_*`` (environment wins, per key).

    Pure apart from reading ``env``; raises InvalidInput (exit 4) for a bad variable, so
    ``Manager.plan`` can refuse a create before anything exists. Profile values were
    already validated by the profile model.
    """
    from sandboxer.models.reachability import check_alias_template, check_name

    via = _from_env(env, ENV_VIA, lambda v: check_name(v, "an ops-bridge route id"))
    alias = _from_env(env, ENV_ALIAS, check_alias_template)
    local_port = _from_env(env, ENV_LOCAL_PORT, _local_port)
    identity = _from_env(env, ENV_IDENTITY, lambda v: check_name(v, "a warden actor id"))
    port_range = _from_env(env, ENV_PORT_RANGE, parse_port_range) or DEFAULT_PORT_RANGE
    tunnel = spec.tunnel
    return TunnelDecl(
        declared=tunnel is not None or any(v is not None for v in (via, alias, local_port)),
        via=via or (tunnel.via if tunnel else None),
        alias=alias or (tunnel.alias if tunnel else None) or DEFAULT_ALIAS,
        local_port=local_port or (tunnel.local_port if tunnel else None) or "auto",
        identity=identity or spec.identity,
        port_range=port_range,
    )


def _bindable(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_local_port(
    sandbox_id: str,
    port_range: tuple[int, int],
    taken: Collection[int] = (),
    bindable: Callable[[int], bool] = _bindable,
) -> int:
    """A free port chosen deterministically per sandbox: start where the hash of the id
    points within the range, walk forward (wrapping) past ports other live sandboxes'
    tunnels claim or something on 127.0.0.1 holds."""
    low, high = port_range
    size = high - low + 1
    start = int.from_bytes(hashlib.sha256(sandbox_id.encode()).digest()[:8], "big") % size
    for step in range(size):
        port = low + (start + step) % size
        if port not in taken and bindable(port):
            return port
    raise NoTarget(
        f"no free tunnel port for {sandbox_id} in {low}-{high}",
        hint=f"widen {ENV_PORT_RANGE} or give the profile a fixed tunnel.local_port",
    )


def tunnel_ports_in_use(store: Documents, exclude: str | None = None) -> set[int]:
    """Local ports claimed by the tunnels of live sandboxes."""
    ports: set[int] = set()
    for doc in store.query_documents(states=list(LIVE_STATES)):
        tunnel = (doc.get("reachability") or {}).get("tunnel")
        if tunnel and doc.get("id") != exclude:
            ports.add(int(tunnel["local_port"]))
    return ports


def known_hosts_text(ep: Endpoint, alias: str | None = None) -> str:
    """One known_hosts line pinning the host key for the direct name (and the alias)."""
    return openssh.known_hosts_line(ep.host, ep.port, ep.host_key, *([alias] if alias else []))


def ssh_command(ep: Endpoint, tunnel: Tunnel | None = None) -> str:
    """A copy-pasteable OpenSSH one-liner that pins the host key.

    Through the tunnel's local end with ``HostKeyAlias`` when one is declared, so the
    key pinned for the sandbox still applies to ``127.0.0.1:local_port``.

    The destination ends the line with no ``--`` before it: consumers append options and
    then ``-- COMMAND`` (v1 promises that shape), so instead user and host are checked here
    by the rule every argv builder shares, which no option can pass.
    """
    if tunnel is None:
        return openssh.command_line(ep)
    return openssh.command_line(ep, tunnel_alias=tunnel.alias, tunnel_port=tunnel.local_port)


def assemble(
    sandbox_id: str,
    ep: Endpoint,
    profile: Profile,
    env: Mapping[str, str] | None = None,
    store: Documents | None = None,
) -> Reachability:
    """The descriptor: direct endpoint, then the profile's spec, then ``env``.

    ``store`` lets ``local_port: auto`` skip ports other live sandboxes' tunnels claim.
    When a tunnel is declared, the alias is also pinned in the endpoint's known_hosts file.
    """
    from sandboxer.models.reachability import (
        TUNNEL_STATUS_DOC,
        Reachability,
        Tunnel,
        TunnelStatus,
    )

    decl = resolve_tunnel(profile.reachability, env or {})
    tunnel = None
    if decl.declared:
        port = decl.local_port
        if port == "auto":
            taken = tunnel_ports_in_use(store, exclude=sandbox_id) if store else set()
            port = pick_local_port(sandbox_id, decl.port_range, taken)
        tunnel = Tunnel(alias=decl.alias.replace("{id}", sandbox_id), local_port=port)
    known = known_hosts_text(ep, tunnel.alias if tunnel else None)
    if tunnel is not None:
        _pin_in_file(Path(ep.known_hosts_file), known)
    return Reachability(
        sandbox_id=sandbox_id,
        host=ep.host,
        port=ep.port,
        user=ep.user,
        identity_file=ep.identity_file,
        known_hosts=known,
        ssh_command=ssh_command(ep, tunnel),
        tunnel=tunnel,
        tunnel_via=decl.via,
        identity=decl.identity,
        tunnel_status=TunnelStatus(command=f"ops-bridge tunnel status {decl.via}",
                                   doc=TUNNEL_STATUS_DOC) if decl.via else None,
        forward=list(profile.reachability.forward),
    )


def _pin_in_file(path: Path, line: str) -> None:
    # Only a regular file (or a new one in an existing directory): never /dev/null.
    if path.exists() and not path.is_file():
        return
    if not path.parent.is_dir():
        return
    openssh.ensure_known_hosts(path, line)


# -- consuming a descriptor (plain documents, no pydantic) ------------------------------


def _check_names(reach: Mapping[str, Any]) -> None:
    tunnel = reach.get("tunnel")
    alias = str(tunnel.get("alias", "")) if isinstance(tunnel, Mapping) else None
    try:
        validate_host(str(reach.get("host")), "the descriptor's host")
        validate_user(str(reach.get("user")), "the descriptor's user")
        if alias is not None and not re.fullmatch(ALIAS_PATTERN, alias):
            raise ValueError(f"the descriptor's tunnel alias: expected an SSH host alias, "
                             f"got {alias!r}")
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def host_alias(reach: Mapping[str, Any]) -> str:
    """The ``Host`` name: the tunnel alias when declared, else the sandbox id."""
    tunnel = reach.get("tunnel")
    return str(tunnel["alias"]) if tunnel else str(reach["sandbox_id"])


def ssh_options(
    reach: Mapping[str, Any], known_hosts_file: Path | str, *, direct: bool = False
) -> list[tuple[str, str]]:
    """OpenSSH options for a descriptor, in ssh_config order; raw (unquoted) values.

    Through the tunnel (``127.0.0.1:local_port`` with ``HostKeyAlias``) when one is
    declared, unless ``direct``; the host key is pinned either way. The descriptor may come
    from a server: its host, user and alias are checked before they reach an argv or a
    config line (a newline in one would start a new ssh_config directive).
    """
    _check_names(reach)
    tunnel = None if direct else reach.get("tunnel")
    return [
        ("HostName", openssh.TUNNEL_HOST if tunnel else str(reach["host"])),
        ("Port", str(tunnel["local_port"] if tunnel else reach["port"])),
        ("User", str(reach["user"])),
        *openssh.pinned(str(reach["identity_file"]), str(known_hosts_file),
                        str(tunnel["alias"]) if tunnel else None),
    ]
