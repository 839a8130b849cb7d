"""How a new sandbox's sshd comes up: its keys copied in last, then its banner awaited.

The image's entrypoint waits for ``/etc/sandboxer/ready`` (``SANDBOXER_KEYS_WAIT``), which
the key tarball writes after the keys and the forwarding drop-in. Then it starts sshd.
Until sshd listens, the published port answers nothing (or docker-proxy accepts and
closes at once), so the
banner is polled every 10 ms in-process, a few microseconds of CPU a try, where an SSH
attempt costs a whole client's handshake and backs off. Readiness itself is still the
SSH command that ``SSHExtension.wait_ready`` runs through the endpoint afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from sandboxer.extensions.compose_ssh.remote import tar_stream

POLL = 0.01
# Read before the image's 20- drop-in (and the secrets' 05-): for these keywords the first
# value sshd reads wins.
FORWARD_DROPIN = "/etc/ssh/sshd_config.d/04-sandboxer-forward.conf"


def forward_dropin(ports: Sequence[int]) -> str:
    """sshd's forwarding for the profile's ``reachability.forward``: none at all by default
    (sshd's own default would let ``ssh -L`` reach the docker host and every container);
    with ports, ``ssh -L`` (direct-tcpip) to exactly those ports of the container's own
    loopback, by the three names a client gives it."""
    head = "# sand-boxer: TCP forwarding of this sandbox (the profile's reachability.forward).\n"
    if not ports:
        return f"{head}AllowTcpForwarding no\nAllowStreamLocalForwarding no\n"
    permit = " ".join(f"{h}:{int(p)}" for p in sorted(set(ports))
                      for h in ("localhost", "127.0.0.1", "[::1]"))
    return (f"{head}AllowTcpForwarding local\nAllowStreamLocalForwarding no\n"
            f"PermitOpen {permit}\nPermitListen none\n")


def key_tarball(host_key: bytes, authorized: str, forward: Sequence[int] = ()) -> bytes:
    """/etc/sandboxer/{ssh_host_ed25519_key,authorized_keys} and the forwarding drop-in,
    owned by root, for `docker cp`."""
    # `ready` last: the entrypoint waits for it, and tar writes members in order.
    return tar_stream([(FORWARD_DROPIN.lstrip("/"), forward_dropin(forward).encode(), 0o644),
                       ("etc/sandboxer/ssh_host_ed25519_key", host_key, 0o600),
                       ("etc/sandboxer/authorized_keys", authorized.encode() + b"\n", 0o644),
                       ("etc/sandboxer/ready", b"", 0o644)], dirs=["etc/sandboxer"])


async def _banner_once(host: str, port: int, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return (await reader.read(4)) == b"SSH-"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False


async def banner(host: str, port: int, deadline: float) -> bool:
    """Poll until an SSH server's banner comes from ``host:port``; False at ``deadline``
    (monotonic) without one."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if await _banner_once(host, port, min(left, 2.0)):
            return True
        await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
