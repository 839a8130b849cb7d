"""SSH sessions of ext.local sandboxes: the per-connection server and the jailed process.

Every session — an exec request or an interactive PTY — enters the sandbox's one jail
(holder.py) as its unprivileged user, with its environment (secrets included) passed as
the process's own environment, never on a command line. A session's process group ends
with its connection; what it started in the background in its own group (``setsid``,
``nohup … &`` from a PTY shell) lives on until the sandbox stops, as with sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import asyncssh
from typing_extensions import override

from sandboxer.extensions.local import forwarding, jail
from sandboxer.extensions.local.holder import Jail
from sandboxer.extensions.local.spawn import Process
from sandboxer.extensions.local.spawnerclient import spawn_jailed
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
    jail: Jail | None = None
    # Starts the jail again when it ended (its waiting process was killed); set by the
    # endpoint, which owns the jails.
    revive: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    revive_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    starting: asyncio.Task[None] | None = field(default=None, repr=False)  # its jail's start
    forward: frozenset[int] = frozenset()  # ports of its loopback ssh -L may reach
    paused: bool = False  # its jail is frozen (lifecycle.py): new sessions are refused
    # Set once core was asked for the secrets of a restored sandbox (lifecycle.py): a
    # session waits for it rather than start without them.
    rebound: asyncio.Event | None = field(default=None, repr=False)

    @property
    def started(self) -> bool:
        """Its jail's first start is over (it may have failed)."""
        return self.starting is None or self.starting.done()

    @property
    def port(self) -> int:
        return self.acceptor.get_port() if self.acceptor else 0


class SSHServer(asyncssh.SSHServer):
    """One connection to one sandbox: its user and its client key only; forwarding only
    to its own loopback at its forward ports (forwarding.py)."""

    def __init__(self, sb: Sandbox, *, bwrap: str | None = None, root: bool = False) -> None:
        self.sb = sb
        self.bwrap = bwrap
        self.root = root
        self.conn: asyncssh.SSHServerConnection | None = None
        self.procs: set[Process] = set()
        self.forwards = 0  # forwarded connections open now

    @override
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.sb.conns.add(self)

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        self.sb.conns.discard(self)
        # A client that goes away ends its sessions' process groups, as a hang-up would.
        for proc in self.procs:
            kill_session(proc)

    @override
    def session_requested(self) -> JailedProcess:
        return JailedProcess(partial(run_session, self.sb, bwrap=self.bwrap, root=self.root))

    @override
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        why = forwarding.refusal(self.sb.id, self.sb.forward, dest_host, dest_port)
        if why is None and self.sb.paused:
            why = f"{self.sb.id} is paused; run `sandboxer resume {self.sb.id}` first"
        if why is not None:
            log.info("refused a forwarded connection: %s", why)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, why)
        return self._forward(dest_host, dest_port)

    async def _forward(self, host: str, port: int) -> asyncssh.SSHTCPSession[bytes]:
        sb = self.sb
        if sb.starting is not None and not sb.starting.done():
            await asyncio.shield(sb.starting)
        if (sb.jail is None or not sb.jail.alive) and sb.revive is not None:
            await sb.revive()
        if sb.jail is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            f"the jail of {sb.id} is not running")
        session = await forwarding.forward(sb.jail, host, port, self._forward_closed)
        self.forwards += 1  # open relays count as sessions for idle handling
        return session

    def _forward_closed(self) -> None:
        self.forwards -= 1

    @override
    def begin_auth(self, username: str) -> bool:
        return True

    @override
    def password_auth_supported(self) -> bool:
        return False

    @override
    def kbdint_auth_supported(self) -> bool:
        return False

    @override
    def public_key_auth_supported(self) -> bool:
        return True

    @override
    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.sb.user and key.public_data == self.sb.client_key.public_data


class JailedProcess(asyncssh.SSHServerProcess[bytes]):
    """A session channel whose every request — a shell, a command, the sftp subsystem —
    becomes a process in the jail (``run_session``). asyncssh would serve sftp itself, in
    this process, as its uid: here OpenSSH's sftp-server runs in the jail instead."""

    def __init__(self, factory: Callable[[asyncssh.SSHServerProcess[bytes]],
                                         Awaitable[None]]) -> None:
        super().__init__(factory, None, 0, False)

    @override
    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    @override
    def session_started(self) -> None:
        # asyncssh's own would hand an sftp channel to its in-process server.
        stdin = asyncssh.SSHReader[bytes](self, self._chan)
        stdout = asyncssh.SSHWriter[bytes](self, self._chan)
        stderr = asyncssh.SSHWriter[bytes](self, self._chan, STDERR)
        factory = self._session_factory
        if factory is None or self._conn is None:
            return
        handler = factory(stdin, stdout, stderr)
        if inspect.isawaitable(handler):
            self._conn.create_task(handler, stdin.logger)


STDERR = 1  # SSH_EXTENDED_DATA_STDERR
OUTPUT_GRACE = 2.0
REBIND_WAIT = 30.0


async def _pump(fd: int, out: asyncssh.SSHWriter[bytes]) -> None:
    """Copy a pipe to an SSH stream until EOF (the reading end is ours and closed here)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    try:
        while chunk := await reader.read(1 << 16):
            out.write(chunk)
            await out.drain()
    finally:
        transport.close()


def kill_session(proc: Process) -> None:
    """SIGKILL a session's process group (its process leads it); gone already is fine."""
    proc.kill_group()


async def run_session(sb: Sandbox, process: asyncssh.SSHServerProcess[bytes], *,
                      bwrap: str | None = None, root: bool = False) -> None:
    """One SSH session (exec or PTY) of a sandbox, run inside the sandbox's jail."""
    program: tuple[str, ...] = ()
    if process.subsystem:  # sftp: JailedProcess accepts no other
        if not os.access(jail.SFTP_SERVER, os.X_OK):
            process.stderr.write(f"sandboxer: {jail.SFTP_SERVER} is missing on the host "
                                 "(apt-get install openssh-sftp-server)\n".encode())
            process.exit(1)
            return
        program = (jail.SFTP_SERVER,)
    if sb.paused:
        # Refused, not held: a client held for as long as a sandbox stays paused (hours,
        # when idle handling paused it) would look hung.
        process.stderr.write(f"sandboxer: sandbox {sb.id} is paused; run `sandboxer resume "
                             f"{sb.id}` first\n".encode())
        process.exit(255)
        return
    if sb.rebound is not None and not sb.rebound.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sb.rebound.wait(), REBIND_WAIT)
        if sb.jail is None or not sb.jail.alive:  # core stopped it: a ref did not resolve
            process.stderr.write(f"sandboxer: sandbox {sb.id} was stopped: its secrets "
                                 "no longer resolve (see sandboxer get)\n".encode())
            process.exit(255)
            return
    term = process.term_type
    pty = term is not None
    env = dict(sb.env)
    if sb.secrets_missing:
        env["SANDBOXER_SECRETS_MISSING"] = ",".join(sb.secrets_missing)
    s = jail.Session(sb.id, sb.user, sb.workspace, sb.spec, command=process.command,
                     term=term, pty=pty, env=env, secrets=sb.secrets, program=program)
    master = slave = -1
    pipes: list[int] = []
    ours: tuple[int, int, int] = (-1, -1, -1)
    ns_fds: tuple[int, ...] = ()
    try:
        if sb.starting is not None and not sb.starting.done():
            await asyncio.shield(sb.starting)  # a new sandbox: its jail is starting
        if (sb.jail is None or not sb.jail.alive) and sb.revive is not None:
            await sb.revive()
        if sb.jail is None:
            raise OSError("the sandbox's jail is not running")
        plan = sb.jail.plan(pty=pty)
        ns_fds = tuple(plan.ns.values())
        # The whole environment, secrets included: never on a command line.
        child_env = jail.session_env(s)
        argv = jail.session_argv(s)
        if pty:
            cols, rows, _, _ = process.term_size
            master, slave = jail.open_pty(cols, rows, sb.host_uid if root else None,
                                          ptmx=f"/proc/{sb.jail.holder_pid}/root/dev/pts/ptmx")
            proc = await spawn_jailed(argv, env=child_env, stdio=(slave, slave, slave), plan=plan)
        else:
            # Plain pipes (not asyncio streams): asyncssh owns and closes our ends.
            for _ in range(3):
                r, w = os.pipe()
                pipes += [r, w]
            child = (pipes[0], pipes[3], pipes[5])
            proc = await spawn_jailed(argv, env=child_env, stdio=child, plan=plan)
            ours = (pipes[1], pipes[2], pipes[4])
            pipes = list(child)
    except Exception as e:
        # No traceback: a sandbox could otherwise grow the endpoint's log at will.
        log.warning("spawning a session of %s failed: %s", sb.id, e)
        jail.close_fds([master] if master >= 0 else [])
        process.stderr.write(f"sandboxer: could not start the session: {e}\n".encode())
        process.exit(255)
        return
    finally:
        jail.close_fds([*([slave] if slave >= 0 else []), *pipes, *ns_fds])
    owner = process.get_extra_info("connection").get_owner()
    owner.procs.add(proc)
    tty_in = None
    pumps: list[asyncio.Task[None]] = []
    try:
        if pty:
            # EOF from the client must not hang up the terminal: recv_eof=False.
            tty_in = os.fdopen(os.dup(master), "wb", buffering=0)
            await process.redirect(stdin=tty_in, stdout=master, recv_eof=False)
        else:
            pumps = [asyncio.create_task(_pump(ours[1], process.stdout)),
                     asyncio.create_task(_pump(ours[2], process.stderr))]
            await process.redirect(stdin=ours[0])
        rc = await proc.wait()
        # Every byte the command wrote reaches the client before the exit status does; a
        # background process that keeps the pipes open is not waited for past a moment.
        if pumps:
            _done, pending = await asyncio.wait(pumps, timeout=OUTPUT_GRACE)
            for task in pending:
                task.cancel()
        await process.stdout.drain()
        await process.stderr.drain()
        process.exit(rc if rc >= 0 else 128 - rc)
    except (OSError, asyncssh.Error) as e:
        log.info("session of %s ended early: %s", sb.id, e)
    finally:
        owner.procs.discard(proc)
        if proc.returncode is None:
            kill_session(proc)
            await proc.wait()
        # Lets asyncssh finish its per-redirect cleanup instead of dropping coroutines.
        with contextlib.suppress(Exception):
            process.close()
            await asyncio.wait_for(process.wait_closed(), 10)
        if tty_in is not None:
            tty_in.close()
