"""SSH into a VM with the system OpenSSH client: installing secrets over stdin, and the
attach variant's admin logins (operator identity, pinned host key)."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from sandboxer.errors import ProvisionFailed
from sandboxer.extensions._proc import communicate
from sandboxer.extensions._ssh import ssh_argv
from sandboxer.extensions.base import Endpoint

SECRETS_DIR = "/run/secrets"
KEY_MARK = "sandboxer.id="
TIMED_OUT = "timed out after"
_REFUSED = ("Permission denied", "Connection refused", "Host key verification failed",
            "No route to host", "Could not resolve hostname")
# The user owns the tmpfs (0700); each value becomes a 0400 file, written from stdin.
_FILL = 'umask 077 && cat > "/run/secrets/$1" && chmod 0400 "/run/secrets/$1"'


async def run(ep: Endpoint, command: str, *, input: bytes = b"",
              timeout: float = 30) -> tuple[int, str]:
    """One command over SSH with ``input`` on its stdin; (exit status, output)."""
    proc = await asyncio.create_subprocess_exec(
        *ssh_argv(ep, command, connect_timeout=10), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    done = await communicate(proc, input, timeout)
    if done is None:
        return 255, f"{TIMED_OUT} {timeout:.0f}s"
    return proc.returncode or 0, done[0].decode("utf-8", "replace")


def nothing_ran(rc: int, output: str) -> bool:
    """Whether a failed ``run`` certainly changed nothing on the VM: the command itself
    failed (its own exit status), or SSH was refused before any command started. A timeout
    or a connection lost midway may have run it."""
    if rc == 0 or output.startswith(TIMED_OUT):
        return False
    return rc != 255 or any(w in output for w in _REFUSED)


async def fill_secrets(ep: Endpoint, secrets: Mapping[str, SecretStr]) -> None:
    """Each value only ever travels as SSH stdin into the guest's tmpfs /run/secrets."""
    for name in sorted(secrets):
        rc, out = await run(ep, f"sh -c {shlex.quote(_FILL)} sh {shlex.quote(name)}",
                            input=secrets[name].get_secret_value().encode())
        if rc != 0:
            raise ProvisionFailed(f"writing secret {name} into {SECRETS_DIR} of the VM "
                                  f"failed: {out.strip()[-300:]}",
                                  hint="the image must come from a template that installs "
                                  "the sand-boxer guest files (see packer/base.json)")


def admin_endpoint(host: str, port: int, user: str, host_key: str, identity: str,
                   known_hosts: Path) -> Endpoint:
    """The operator's login to an attached VM, host key pinned in ``known_hosts``."""
    return Endpoint(host=host, port=port, user=user, host_key=host_key,
                    identity_file=identity, known_hosts_file=str(known_hosts))


def authorize_command(line: str) -> str:
    """Append one authorized_keys line (idempotently) for the login user."""
    q = shlex.quote(line)
    return ("umask 077 && mkdir -p ~/.ssh && touch ~/.ssh/authorized_keys && "
            f"(grep -qxF -- {q} ~/.ssh/authorized_keys || printf '%s\\n' {q} "
            ">> ~/.ssh/authorized_keys)")


def revoke_command(sandbox_id: str) -> str:
    """Remove exactly the lines that end with this sandbox's mark, keep everything else."""
    mark = shlex.quote(f" {KEY_MARK}{sandbox_id}$")
    return ("f=~/.ssh/authorized_keys; [ -f \"$f\" ] || exit 0; "
            f"grep -v -- {mark} \"$f\" > \"$f.sbx.$$\"; "
            "chmod 0600 \"$f.sbx.$$\" && mv -f \"$f.sbx.$$\" \"$f\"")


def key_line(public: str, sandbox_id: str) -> str:
    return f"{' '.join(public.split()[:2])} {KEY_MARK}{sandbox_id}"
