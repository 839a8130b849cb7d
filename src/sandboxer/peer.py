"""Who is on the other end of a unix socket (``SO_PEERCRED``); stdlib only.

Used by ext.local's control socket and the local service's socket. Each sits in a
0700 directory, so normally only we can reach it. These checks hold
even when that is not so (a squatter that bound the path first, a loosened ``run/``):

* a client talks only to an endpoint running as its own effective uid — root only to a
  root daemon, a user only to their own — and checks before it sends a byte;
* the endpoint answers only its own uid, or root (who could read its memory anyway);
* a client that sends what it must not lose (its environment, secret values) first makes
  sure (``unsafe``) that the path is a socket in directories nobody else can write: the uid
  check alone would let a squatter's symlink lead it to any other socket of its own uid.
"""

from __future__ import annotations

import os
import stat
import struct
from _socket import SO_PEERCRED, SOL_SOCKET  # not socket.py: its enums cost the CLI ~7 ms
from pathlib import Path
from typing import Protocol

from sandboxer.errors import UnsafePermissions

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _Sock(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


def peer(sock: _Sock) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected unix socket."""
    pid, uid, _gid = _CRED.unpack(
        sock.getsockopt(SOL_SOCKET, SO_PEERCRED, _CRED.size))
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


def unsafe(path: Path, top: Path) -> str | None:
    """Why connecting to ``path`` could reach a socket someone else chose, or None.

    ``path`` must be a unix socket (not a symlink) owned by us or root, and every directory
    from its parent up to ``top`` owned by us or root and writable by nobody else: then
    nobody else can put or swap anything there between this check and ``connect``. A
    ``path`` that does not exist is None (connecting fails, as it should). A few ``stat``
    calls: cheap enough for every command.
    """
    trusted = (os.geteuid(), 0)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a socket"
        return f"{path} is {kind}"
    if st.st_uid not in trusted:
        return f"{path} belongs to uid {st.st_uid}"
    for d in [path.parent, *path.parent.parents]:
        st = os.stat(d)
        if st.st_uid not in trusted or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (f"{d} can be written by others (owner uid {st.st_uid}, mode "
                    f"{stat.S_IMODE(st.st_mode):04o})")
        if d == top:
            break
    return None
