"""Per-sandbox SSH key material: an ed25519 client key pair and a pinned host key.

A long-lived process (``warm_up``) keeps a few key pairs generated ahead, in memory only:
a pair is written to disk when it becomes one sandbox's keys, and never handed out twice
(a forked child starts with none of its parent's).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from sandboxer.config import Settings
from sandboxer.openssh import key_paths, known_hosts_line, write_known_hosts
from sandboxer.openssh import write_private as _write_private

# known_hosts lines, their files and key paths are sandboxer.openssh's; re-exported here.
__all__ = ["SandboxKeys", "generate", "key_paths", "known_hosts_line", "public_of", "remove",
           "write_known_hosts"]


@dataclass(frozen=True)
class SandboxKeys:
    identity: Path       # client private key (OpenSSH format, 0600)
    identity_pub: Path
    host_key: Path       # host private key the endpoint serves (0600)
    known_hosts: Path    # pinned host key line(s) for the OpenSSH client
    client_public: str   # "ssh-ed25519 AAAA... sbx-..."
    host_public: str     # "ssh-ed25519 AAAA..."


def _keypair(comment: str) -> tuple[bytes, str]:
    private, public = _pairs.take() or _new_pair()
    return private, f"{public} {comment}".strip()


def _new_pair() -> tuple[bytes, str]:
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
    return private, public


# A refill starts this long after the take that asked for it (or after ``warm_up``): the
# create that took the last pairs does not share the CPU with it. Two busy threads or
# processes each run much slower than one on a small machine (here, two vCPUs: ~1.6x).
REFILL_DELAY = 0.25


class _Pairs:
    """Key pairs generated ahead, in this process's memory only (after ``warm_up``)."""

    SIZE = 32

    def __init__(self) -> None:
        self.pairs: deque[tuple[bytes, str]] = deque()
        self.enabled = False
        self.filling = False
        self.guard = threading.Lock()

    def reset(self) -> None:
        # A child of fork must never hand out a key its parent may hand out too; it
        # fills a pool of its own (its parent's filling thread is not in it).
        self.pairs.clear()
        self.filling = False
        self.guard = threading.Lock()

    def take(self) -> tuple[bytes, str] | None:
        if not self.enabled:
            return None
        try:
            pair: tuple[bytes, str] | None = self.pairs.popleft()
        except IndexError:
            pair = None
        self.refill()
        return pair

    def refill(self) -> None:
        # From half full, in one batch: a thread start costs more than a key pair.
        with self.guard:
            if self.filling or len(self.pairs) > self.SIZE // 2:
                return
            self.filling = True
        threading.Thread(target=self._fill, name="sandboxer-keys", daemon=True).start()

    def _fill(self) -> None:
        try:
            time.sleep(REFILL_DELAY)
            while self.enabled and len(self.pairs) < self.SIZE:
                self.pairs.append(_new_pair())
                time.sleep(0)  # the GIL to a request waiting for it, after each pair
        finally:
            with self.guard:
                self.filling = False


_pairs = _Pairs()
os.register_at_fork(after_in_child=_pairs.reset)


def warm_up() -> None:
    """Keep key pairs generated ahead in this (long-lived) process's memory."""
    _pairs.enabled = True
    _pairs.refill()


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
