"""Reaching a sandbox with the system OpenSSH client, host key pinned."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from typing_extensions import override

from sandboxer import openssh
from sandboxer.errors import ProvisionFailed
from sandboxer.extensions._proc import communicate
from sandboxer.extensions.base import Extension
from sandboxer.models.extension import Endpoint, Handle

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


async def _asyncssh_run(ep: Endpoint, command: str, timeout: float) -> tuple[int, str]:
    """One command over asyncssh, host key pinned: ~25 ms against ~70 ms for a new ssh(1)."""
    import asyncssh

    try:
        async with asyncio.timeout(timeout):
            known = asyncssh.import_known_hosts(
                Path(ep.known_hosts_file).read_text(encoding="utf-8"))
            async with asyncssh.connect(
                ep.host, ep.port, username=ep.user, client_keys=[_client_key(ep.identity_file)],
                known_hosts=known, agent_path=None, config=None, kex_algs=_KEX,
                encryption_algs=_CIPHERS,
            ) as conn:
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


class SSHExtension(Extension):
    """An extension whose sandboxes are reached over SSH: readiness and commands go
    through the endpoint with its pinned host key (asyncssh in a long-lived process)."""

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
