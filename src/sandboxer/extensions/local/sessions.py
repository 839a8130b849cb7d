"""SSH sessions of ext.local sandboxes: the per-connection server and the jailed process.

Every session — an exec request or an interactive PTY — runs in its own bwrap jail (see
jail.py) under the sandbox's unprivileged host uid, with its environment (secrets
included) passed as the child's own environment, never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from sandboxer.extensions.local import jail
from sandboxer.extensions.local.spec import LocalSpec

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sandbox:
    id: str
    user: str
    workspace: Path
    host_uid: int
    spec: LocalSpec
    env: dict[str, str]
    client_key: asyncssh.SSHKey
    acceptor: asyncssh.SSHAcceptor | None = None
    conns: set[SSHServer] = field(default_factory=set)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    secrets_missing: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.acceptor.get_port() if self.acceptor else 0


class SSHServer(asyncssh.SSHServer):
    """One connection to one sandbox: its user and its client key only, no forwarding."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.conn: asyncssh.SSHServerConnection | None = None
        self.procs: set[asyncio.subprocess.Process] = set()

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.sb.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sb.conns.discard(self)
        # A client that goes away must not leave its jailed processes running.
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.sb.user and key.public_data == self.sb.client_key.public_data


async def run_session(sb: Sandbox, process: asyncssh.SSHServerProcess[bytes], *,
                      bwrap: str | None, root: bool) -> None:
    """One SSH session (exec or PTY) of a sandbox, run inside a fresh bwrap jail."""
    if process.subsystem:
        process.stderr.write(b"subsystems are not supported\n")
        process.exit(1)
        return
    term = process.term_type
    pty = term is not None
    env = dict(sb.env)
    if sb.secrets_missing:
        env["SANDBOXER_SECRETS_MISSING"] = ",".join(sb.secrets_missing)
    s = jail.Session(sb.id, sb.user, sb.workspace, sb.spec, command=process.command,
                     term=term, pty=pty, env=env, secrets=sb.secrets)
    bwrap = bwrap or "bwrap"
    fds = jail.data_pipes(jail.etc_files(sb.user, sb.spec.hostname or sb.id, sb.spec.shell))
    try:
        secret_fds = jail.data_pipes(jail.secret_files(sb.secrets))
    except BaseException:
        jail.close_fds(fds.values())
        raise
    kw: dict[str, Any] = {
        "pass_fds": (*fds.values(), *secret_fds.values()),
        "preexec_fn": jail.make_preexec(sb.spec, pty=pty),
        # The whole environment, secrets included: never bwrap --setenv (argv).
        "env": jail.session_env(s),
    }
    if root:
        kw.update(user=sb.host_uid, group=sb.host_uid, extra_groups=[])
    master = slave = -1
    pipes: list[int] = []
    ours: tuple[int, int, int] = (-1, -1, -1)
    try:
        argv = jail.build_argv(s, fds, bwrap=bwrap, secret_fds=secret_fds)
        if pty:
            cols, rows, _, _ = process.term_size
            master, slave, _ = jail.open_pty(cols, rows, sb.host_uid if root else None)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, **kw)
        else:
            # Plain pipes (not asyncio streams): asyncssh owns and closes our ends.
            for _ in range(3):
                r, w = os.pipe()
                pipes += [r, w]
            child = (pipes[0], pipes[3], pipes[5])
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=child[0], stdout=child[1], stderr=child[2], **kw)
            ours = (pipes[1], pipes[2], pipes[4])
            pipes = list(child)
    except Exception as e:
        log.exception("spawning a session of %s failed", sb.id)
        jail.close_fds([master] if master >= 0 else [])
        process.stderr.write(f"sandboxer: could not start the session: {e}\n".encode())
        process.exit(255)
        return
    finally:
        jail.close_fds([*fds.values(), *secret_fds.values(),
                        *([slave] if slave >= 0 else []), *pipes])
    owner = process.get_extra_info("connection").get_owner()
    owner.procs.add(proc)
    tty_in = None
    try:
        if pty:
            # EOF from the client must not hang up the terminal: recv_eof=False.
            tty_in = os.fdopen(os.dup(master), "wb", buffering=0)
            await process.redirect(stdin=tty_in, stdout=master, recv_eof=False)
        else:
            await process.redirect(stdin=ours[0], stdout=ours[1], stderr=ours[2])
        rc = await proc.wait()
        # Every byte of output reaches the client before the exit status does.
        await process.stdout.drain()
        await process.stderr.drain()
        process.exit(rc if rc >= 0 else 128 - rc)
    except (OSError, asyncssh.Error) as e:
        log.info("session of %s ended early: %s", sb.id, e)
    finally:
        owner.procs.discard(proc)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        # Lets asyncssh finish its per-redirect cleanup instead of dropping coroutines.
        with contextlib.suppress(Exception):
            process.close()
            await asyncio.wait_for(process.wait_closed(), 10)
        if tty_in is not None:
            tty_in.close()
