"""Who is on the other end of a unix socket (``SO_PEERCRED``); stdlib only.

Used by ext.local's control socket and the local service's socket. Each sits in a
0700 directory, so normally only we can reach it. These checks hold
even when that is not so (a squatter that bound the path first, a loosened ``run/``):

* a client talks only to an endpoint running as its own effective uid — root only to a
  root daemon, a user only to their own — and checks before it sends a byte;
* the endpoint answers only its own uid, or root (who could read its memory anyway).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Protocol

from sandboxer.errors import UnsafePermissions

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _Sock(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


def peer(sock: _Sock) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected unix socket."""
    pid, uid, _gid = _CRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid


def check_server(sock: _Sock, path: Path) -> None:
    """Raise UnsafePermissions unless the endpoint behind ``path`` runs as our uid."""
    pid, uid = peer(sock)
    me = os.geteuid()
    if uid != me:
        raise UnsafePermissions(
            f"refusing to talk to {path}: it is served by process {pid} running as uid "
            f"{uid}, not by a sand-boxer endpoint of yours (uid {me})",
            hint=f"another user took the socket's path; stop process {pid}, remove {path} "
                 f"and make sure only you can write {path.parent} (sandboxer doctor)",
        )


def client_allowed(sock: _Sock) -> bool:
    """True for a client running as our uid or as root."""
    return peer(sock)[1] in (os.geteuid(), 0)
