"""Reaching a sandbox with the system OpenSSH client, host key pinned."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from typing_extensions import override

from sandboxer import openssh
from sandboxer.errors import (
    InvalidInput,
    NotFound,
    ProvisionFailed,
    RequestTooLarge,
    SandboxerError,
)
from sandboxer.extensions._proc import communicate
from sandboxer.extensions.base import CopiesFiles, Extension
from sandboxer.models.extension import Endpoint, Handle
from sandboxer.perms import open_regular
from sandboxer.values import safe_repr, validate_remote_path

# Answers that retrying cannot change: a wrong host key or a refused key.
_PERMANENT = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
              "Permission denied", "Host key is not trusted")


def ssh_options(ep: Endpoint) -> list[str]:
    """Options that pin the host key and use only the sandbox's own identity
    (``sandboxer.openssh.endpoint_args``)."""
    return openssh.endpoint_args(ep)


def destination(ep: Endpoint) -> str:
    """``user@host``, each checked again here: this is what lands in an argv."""
    try:
        return openssh.destination(ep.user, ep.host)
    except ValueError as e:
        raise ProvisionFailed(str(e)) from e


def ssh_argv(ep: Endpoint, command: str | None = None, *, connect_timeout: int = 5) -> list[str]:
    """``ssh OPTIONS -- user@host [COMMAND]``: after ``--`` nothing is an option to ssh."""
    dest = destination(ep)
    return openssh.argv(openssh.client(ProvisionFailed),
                        [*openssh.endpoint_args(ep),
                         *openssh.option_args([("ConnectTimeout", str(connect_timeout))])],
                        dest, command)


async def ssh_run(ep: Endpoint, command: str, *, timeout: float) -> tuple[int, str]:
    """Run one command; returns (exit status, stdout+stderr). 255 means SSH itself failed."""
    proc = await asyncio.create_subprocess_exec(
        *ssh_argv(ep, command, connect_timeout=max(1, int(timeout))),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    done = await communicate(proc, None, timeout)
    if done is None:
        return 255, f"timed out after {timeout:.0f}s"
    return proc.returncode or 0, done[0].decode("utf-8", "replace")


def warm_up() -> None:
    """Load asyncssh now, so that probes in this (long-lived) process use it, and keep
    key pairs generated ahead (in memory)."""
    import asyncssh  # noqa: F401 - imported for its side effect on ssh_probe

    from sandboxer.extensions import _keys

    _keys.warm_up()


# Tried first (any other the server offers still works): the cheapest of the strong
# ones in asyncssh, where the default post-quantum hybrid and ChaCha20 cost more CPU.
_KEX = "^curve25519-sha256"
_CIPHERS = "^aes128-gcm@openssh.com"
_parsed: dict[tuple[str, int, int, int], Any] = {}  # (path, inode, mtime, size) -> key


def _client_key(path: str) -> Any:
    """The private key of ``path``, parsed once while the file stays the same."""
    import asyncssh

    st = os.stat(path)
    ident = (path, st.st_ino, st.st_mtime_ns, st.st_size)
    key = _parsed.get(ident)
    if key is None:
        if len(_parsed) > 1024:
            _parsed.clear()
        key = _parsed[ident] = asyncssh.read_private_key(path)
    return key


def _connect(ep: Endpoint, **options: Any) -> Any:
    """An asyncssh connection to ``ep``: only its identity, its pinned host key, no agent,
    no ssh_config (an ``async with`` context)."""
    import asyncssh

    known = asyncssh.import_known_hosts(Path(ep.known_hosts_file).read_text(encoding="utf-8"))
    return asyncssh.connect(
        ep.host, ep.port, username=ep.user, client_keys=[_client_key(ep.identity_file)],
        known_hosts=known, agent_path=None, config=None, kex_algs=_KEX,
        encryption_algs=_CIPHERS, **options,
    )


async def _asyncssh_run(ep: Endpoint, command: str, timeout: float) -> tuple[int, str]:
    """One command over asyncssh, host key pinned: ~25 ms against ~70 ms for a new ssh(1)."""
    import asyncssh

    try:
        async with asyncio.timeout(timeout):
            async with _connect(ep) as conn:
                done = await conn.run(command, check=False)
    except TimeoutError:
        return 255, f"timed out after {timeout:.0f}s"
    except (OSError, asyncssh.Error) as e:
        return 255, str(e) or type(e).__name__
    out = "".join(x if isinstance(x, str) else x.decode("utf-8", "replace")
                  for x in (done.stdout or "", done.stderr or ""))
    return (done.exit_status if done.exit_status is not None else 255), out


async def ssh_probe(ep: Endpoint, *, timeout: float, command: str = "true") -> None:
    """Retry ``command`` over SSH until it succeeds or ``timeout`` passes.

    A process that has asyncssh loaded already (``sandboxer serve``) probes with it; a CLI
    call, where importing asyncssh would cost more than it saves, uses the system client.
    """
    run = _asyncssh_run if "asyncssh" in sys.modules else (
        lambda e, c, t: ssh_run(e, c, timeout=t))
    deadline = time.monotonic() + timeout
    delay = 0.02
    last = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProvisionFailed(
                f"SSH to {ep.user}@{ep.host}:{ep.port} did not succeed within {timeout:.0f}s: "
                f"{last.strip()[-300:] or 'no answer'}"
            )
        rc, out = await run(ep, command, min(remaining, 10.0))
        if rc == 0:
            return
        if any(word in out for word in _PERMANENT):
            raise ProvisionFailed(
                f"SSH to {ep.user}@{ep.host}:{ep.port} was refused: {out.strip()[-300:]}"
            )
        last = out
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


# -- one file in or out over sftp (CopiesFiles) ------------------------------------------

CONNECT_TIMEOUT = 15.0
CHUNK = 1 << 20  # asyncssh splits a write into parallel sftp requests of its block size
# A transfer whose server stops answering ends after 4 keepalives 15 s apart (no deadline
# on the transfer itself: a large file on a slow link may take long).
_KEEPALIVE = {"keepalive_interval": 15, "keepalive_count_max": 4}


@asynccontextmanager
async def _sftp(ep: Endpoint, sandbox_id: str) -> AsyncIterator[Any]:
    """An sftp client on the sandbox's pinned endpoint; errors that are not about one
    path become SandboxerError naming the sandbox."""
    import asyncssh

    where = f"{ep.user}@{ep.host}:{ep.port}"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            conn = await _connect(ep, **_KEEPALIVE)
    except TimeoutError as e:
        raise SandboxerError(f"cannot reach sandbox {sandbox_id} over SSH ({where}) within "
                             f"{CONNECT_TIMEOUT:.0f}s",
                             hint=f"is it ready? `sandboxer get {sandbox_id}`") from e
    except (OSError, asyncssh.Error) as e:
        raise SandboxerError(f"cannot reach sandbox {sandbox_id} over SSH ({where}): "
                             f"{str(e) or type(e).__name__}",
                             hint=f"is it ready? `sandboxer get {sandbox_id}`") from e
    async with conn:
        try:
            sftp = await conn.start_sftp_client()
        except (OSError, asyncssh.Error) as e:
            raise SandboxerError(
                f"sandbox {sandbox_id}'s SSH endpoint ({where}) does not serve sftp: "
                f"{str(e) or type(e).__name__}",
                hint="its image needs an sftp server (openssh-sftp-server)") from e
        async with sftp:
            yield sftp


def _path_error(e: Exception, sandbox_id: str, remote: str, doing: str) -> SandboxerError:
    """What an sftp status means for ``remote`` (the user's path, quoted safely)."""
    import asyncssh

    what = f"{safe_repr(remote)} in sandbox {sandbox_id}"
    reason = getattr(e, "reason", "") or type(e).__name__
    if isinstance(e, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath):
        return NotFound(f"cannot {doing} {what}: no such file or directory",
                        hint="relative paths start at the sandbox user's home directory")
    if isinstance(e, asyncssh.SFTPPermissionDenied | asyncssh.SFTPWriteProtect):
        return InvalidInput(f"cannot {doing} {what}: permission denied",
                            hint="the sandbox's user must be allowed to (see its "
                            "read-only paths)")
    if isinstance(e, asyncssh.SFTPFileIsADirectory):
        return InvalidInput(f"cannot {doing} {what}: it is a directory",
                            hint="name a file (`sandboxer cp -r` copies directories)")
    if isinstance(e, asyncssh.SFTPNoSpaceOnFilesystem | asyncssh.SFTPQuotaExceeded):
        return InvalidInput(f"cannot {doing} {what}: no space left", hint="free some room")
    if isinstance(e, asyncssh.SFTPError):
        return SandboxerError(f"cannot {doing} {what}: {reason}")
    return SandboxerError(f"cannot {doing} {what}: the connection failed ({reason})",
                          hint="retry; `sandboxer get` shows whether it is still ready")


def _remote(remote: str) -> str:
    try:
        return validate_remote_path(remote)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


async def sftp_put(ep: Endpoint, sandbox_id: str, local: Path, remote: str) -> int:
    """Copy the regular file ``local`` to ``remote`` in the sandbox; bytes written."""
    import asyncssh

    remote = _remote(remote)
    fd = open_regular(local)
    written = 0
    with os.fdopen(fd, "rb") as src:
        async with _sftp(ep, sandbox_id) as sftp:
            try:
                # sftp-server (protocol 3) answers a plain "Failure" for a directory.
                if await sftp.isdir(remote):
                    raise asyncssh.SFTPFileIsADirectory("is a directory")
                async with sftp.open(remote, "wb") as dst:
                    while chunk := await asyncio.to_thread(src.read, CHUNK):
                        await dst.write(chunk)
                        written += len(chunk)
            except (OSError, asyncssh.Error) as e:
                raise _path_error(e, sandbox_id, remote, "write") from e
    return written


async def sftp_get(ep: Endpoint, sandbox_id: str, remote: str, local: Path, *,
                   max_bytes: int | None = None) -> int:
    """Copy the sandbox's regular file ``remote`` to ``local`` (0600, replaced whole:
    written beside it, then renamed); bytes read."""
    import asyncssh

    remote = _remote(remote)
    too_large = RequestTooLarge(f"{safe_repr(remote)} in sandbox {sandbox_id} is larger than "
                                f"{max_bytes} bytes", hint="copy it with `sandboxer cp`, "
                                "which has no size limit")
    part = local.with_name(f".{local.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
    read = 0
    async with _sftp(ep, sandbox_id) as sftp:
        try:
            attrs = await sftp.stat(remote)
            if attrs.permissions is not None and not stat.S_ISREG(attrs.permissions):
                raise InvalidInput(f"{safe_repr(remote)} in sandbox {sandbox_id} is not a "
                                   "regular file",
                                   hint="copy one file (`sandboxer cp -r` copies directories)")
            if max_bytes is not None and (attrs.size or 0) > max_bytes:
                raise too_large
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb") as dst:
                    async with sftp.open(remote, "rb") as src:
                        while chunk := await src.read(CHUNK):
                            read += len(chunk)
                            if max_bytes is not None and read > max_bytes:
                                raise too_large  # it grew while we read it
                            await asyncio.to_thread(dst.write, chunk)
                os.replace(part, local)
            finally:
                if part.exists():
                    part.unlink()
        except (OSError, asyncssh.Error) as e:
            if isinstance(e, OSError) and not isinstance(e, asyncssh.Error) and \
                    e.filename in (str(part), str(local)):
                raise InvalidInput(f"cannot write {local}: {e.strerror}") from e
            raise _path_error(e, sandbox_id, remote, "read") from e
    return read


class SSHExtension(Extension, CopiesFiles):
    """An extension whose sandboxes are reached over SSH: readiness and commands go
    through the endpoint with its pinned host key (asyncssh in a long-lived process),
    and one file goes in or out over sftp on the same endpoint (``CopiesFiles``)."""

    @override
    async def put_file(self, handle: Handle, local: Path, remote: str) -> int:
        return await sftp_put(await self.endpoint(handle), handle.sandbox_id, local, remote)

    @override
    async def get_file(self, handle: Handle, remote: str, local: Path, *,
                       max_bytes: int | None = None) -> int:
        return await sftp_get(await self.endpoint(handle), handle.sandbox_id, remote, local,
                              max_bytes=max_bytes)

    @override
    async def wait_ready(self, handle: Handle, timeout: float) -> None:
        await ssh_probe(await self.endpoint(handle), timeout=timeout)

    @override
    async def run(self, handle: Handle, command: str, timeout: float) -> tuple[int, str]:
        return await ssh_run(await self.endpoint(handle), command, timeout=timeout)

    @override
    @classmethod
    def warm_up(cls) -> None:
        warm_up()
