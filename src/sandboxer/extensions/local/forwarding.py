"""``ssh -L`` into an ext.local sandbox: to its own loopback, at its profile's ports only.

A direct-tcpip request is allowed when its destination is ``127.0.0.1``, ``localhost`` or
``::1`` at a port of the profile's ``reachability.forward`` (``ProvisionRequest.forward``,
kept in the sandbox's record and handle); anything else is refused before anything is
connected. The connection itself is made by a process of the jail, confined exactly like
a session (holder.Jail.enter: its cgroup, namespaces, root, uid, rlimits and seccomp
filter): once it stands in the jail, before its exec, it connects a socket — which so
belongs to the jail's network namespace, whose loopback is the sandbox's own — and hands
the fd back over a socketpair (SCM_RIGHTS, enter.connect_back), then execs
``/usr/bin/true``. The endpoint only
relays bytes between that socket and the SSH channel: nothing is connected from the host's
network namespace, so neither a listener on the host's 127.0.0.1 nor another sandbox's
port is reachable, whatever the port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from collections.abc import Callable, Iterable
from typing import cast

import asyncssh
from typing_extensions import override

from sandboxer.extensions.local import jail
from sandboxer.extensions.local.holder import Jail
from sandboxer.extensions.local.spawnerclient import DEVNULL, spawn_jailed

LOOPBACK = {"127.0.0.1": (socket.AF_INET, "127.0.0.1"),
            "localhost": (socket.AF_INET, "127.0.0.1"),
            "::1": (socket.AF_INET6, "::1")}
CONNECT_TIMEOUT = 5.0
MAX_PORTS = 32
TRUE = "/usr/bin/true"


def checked_ports(raw: object) -> frozenset[int]:
    """The ``forward`` of a record or request: TCP ports, or ValueError."""
    if not raw:
        return frozenset()
    if not isinstance(raw, Iterable) or isinstance(raw, str | bytes | dict):
        raise ValueError("forward must be a list of TCP ports")
    ports = list(raw)
    if len(ports) > MAX_PORTS or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise ValueError(f"forward must be at most {MAX_PORTS} TCP ports (1-65535)")
    return frozenset(ports)


def refusal(sandbox_id: str, ports: frozenset[int], host: str, port: int) -> str | None:
    """Why ``host:port`` may not be forwarded to, or None when it may."""
    if not ports:
        return (f"port forwarding is off for {sandbox_id}: its profile lists no "
                "reachability.forward ports")
    if host not in LOOPBACK:
        return (f"{sandbox_id} forwards only to its own loopback (127.0.0.1, localhost, "
                f"::1), not to {host[:100]!r}")
    if port not in ports:
        listed = ", ".join(str(p) for p in sorted(ports))
        return f"port {port} of {sandbox_id} is not forwarded (its profile lists {listed})"
    return None


async def connect(j: Jail, host: str, port: int) -> socket.socket:
    """A TCP socket connected, from inside the jail, to ``host:port`` of its loopback
    (``host`` one of LOOPBACK). OSError with the jail's errno when that fails."""
    family, address = LOOPBACK[host]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ns_fds: tuple[int, ...] = ()
    try:
        plan = j.plan(pty=False)
        ns_fds = tuple(plan.ns.values())
        # In the jail (its uid, namespaces, cgroup and seccomp filter), the child connects
        # and hands the socket back over ``theirs`` (enter.connect_back), then execs true.
        proc = await spawn_jailed([TRUE], env={"PATH": jail.JAIL_PATH}, stdio=(
            DEVNULL, DEVNULL, DEVNULL), plan=plan, connect=(family, address, port,
                                                           CONNECT_TIMEOUT),
            reply=theirs.fileno())
        jail.close_fds(ns_fds)
        ns_fds = ()
        await proc.wait()
        theirs.close()
        ours.setblocking(False)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
        except BlockingIOError:
            msg, fds = b"", []
    finally:
        jail.close_fds(ns_fds)
        theirs.close()
        ours.close()
    if msg == b"K" and len(fds) == 1:
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        return sock
    jail.close_fds(fds)
    code = int(msg[1:]) if msg[:1] == b"E" and msg[1:].isdigit() else errno.ECONNREFUSED
    raise OSError(code, f"connecting to {host}:{port} inside the sandbox: "
                        f"{os.strerror(code)}")


class _Channel(asyncssh.SSHForwarder):
    """The channel's side of a relay; ``closed`` is called once when it ends."""

    def __init__(self, peer: asyncssh.SSHForwarder, closed: Callable[[], None]) -> None:
        super().__init__(peer)
        self._closed: Callable[[], None] | None = closed

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            closed, self._closed = self._closed, None
            if closed is not None:
                closed()


async def forward(j: Jail, host: str, port: int,
                  closed: Callable[[], None]) -> asyncssh.SSHTCPSession[bytes]:
    """The session of a direct-tcpip channel: relays it to ``host:port`` of the jail;
    ``closed`` is called when the channel ends (not when this raises)."""
    import asyncio

    try:
        sock = await connect(j, host, port)
    except (OSError, subprocess.SubprocessError) as e:
        # SubprocessError: the connector's preexec failed (the jail went away meanwhile).
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(e)) from None
    loop = asyncio.get_running_loop()
    try:
        _, peer = await loop.create_connection(asyncssh.SSHForwarder, sock=sock)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    # asyncssh's own forward_connection returns the same object, cast the same way.
    return cast("asyncssh.SSHTCPSession[bytes]", _Channel(peer, closed))
