"""Per-sandbox SSH key material: an ed25519 client key pair and a pinned host key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sandboxer.config import Settings
from sandboxer.extensions.base import key_paths


@dataclass(frozen=True)
class SandboxKeys:
    identity: Path       # client private key (OpenSSH format, 0600)
    identity_pub: Path
    host_key: Path       # host private key the endpoint serves (0600)
    known_hosts: Path    # pinned host key line(s) for the OpenSSH client
    client_public: str   # "ssh-ed25519 AAAA... sbx-..."
    host_public: str     # "ssh-ed25519 AAAA..."


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _keypair(comment: str) -> tuple[bytes, str]:
    # cryptography costs ~15 ms to import; only provisioning needs it.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return private, f"{public} {comment}".strip()


def known_hosts_line(host: str, port: int, host_public: str, *aliases: str) -> str:
    """A known_hosts line for ``[host]:port`` (plus aliases) pinning ``host_public``."""
    name = host if port == 22 else f"[{host}]:{port}"
    key = " ".join(host_public.split()[:2])
    return f"{','.join([name, *aliases])} {key}"


def generate(settings: Settings, sandbox_id: str) -> SandboxKeys:
    """Create fresh client and host keys for a sandbox; files are 0600 in a 0700 dir."""
    settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = key_paths(settings, sandbox_id)
    client_priv, client_pub = _keypair(sandbox_id)
    host_priv, host_pub = _keypair("")
    _write_private(paths["identity"], client_priv)
    _write_private(paths["identity_pub"], (client_pub + "\n").encode())
    _write_private(paths["host_key"], host_priv)
    return SandboxKeys(
        identity=paths["identity"],
        identity_pub=paths["identity_pub"],
        host_key=paths["host_key"],
        known_hosts=paths["known_hosts"],
        client_public=client_pub,
        host_public=host_pub,
    )


def write_known_hosts(path: Path, lines: list[str]) -> None:
    _write_private(path, ("\n".join(lines) + "\n").encode())


def remove(settings: Settings, sandbox_id: str) -> None:
    """Delete a sandbox's key files; missing files are fine."""
    for p in key_paths(settings, sandbox_id).values():
        p.unlink(missing_ok=True)


def public_of(private_key: Path) -> str:
    """The OpenSSH public line ("ssh-ed25519 AAAA...") of a private key file."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
