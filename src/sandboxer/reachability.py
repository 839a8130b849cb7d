"""Assemble the reachability descriptor from an extension endpoint and the profile (§7)."""

from __future__ import annotations

import shlex

from sandboxer.extensions.base import Endpoint
from sandboxer.models.profile import Profile
from sandboxer.models.reachability import Reachability


def ssh_command(ep: Endpoint) -> str:
    """A copy-pasteable OpenSSH one-liner that pins the host key."""
    argv = [
        "ssh",
        "-i", ep.identity_file,
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={ep.known_hosts_file}",
        "-p", str(ep.port),
        f"{ep.user}@{ep.host}",
    ]
    return shlex.join(argv)


def known_hosts_text(ep: Endpoint) -> str:
    name = ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"
    return f"{name} {' '.join(ep.host_key.split()[:2])}"


def assemble(sandbox_id: str, ep: Endpoint, profile: Profile) -> Reachability:
    """The descriptor: direct endpoint first, then the profile's reachability spec."""
    return Reachability(
        sandbox_id=sandbox_id,
        host=ep.host,
        port=ep.port,
        user=ep.user,
        identity_file=ep.identity_file,
        known_hosts=known_hosts_text(ep),
        ssh_command=ssh_command(ep),
        identity=profile.reachability.identity,
    )
