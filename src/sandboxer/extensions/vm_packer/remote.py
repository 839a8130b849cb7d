"""SSH into a VM with the system OpenSSH client: installing secrets over stdin, and the
attach variant's admin logins (operator identity, pinned host key)."""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from sandboxer import redaction
from sandboxer.errors import ProvisionFailed
from sandboxer.extensions._proc import communicate
from sandboxer.extensions._ssh import ssh_argv
from sandboxer.extensions.base import Endpoint

SECRETS_DIR = "/run/secrets"
KEY_MARK = "sandboxer.id="
TIMED_OUT = "timed out after"
_REFUSED = ("Permission denied", "Connection refused", "Host key verification failed",
            "No route to host", "Could not resolve hostname")


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


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Reads "KIND NAME LENGTH" lines from stdin, each followed by exactly LENGTH bytes of value
# (GNU head -c never reads past them), into .new/ of the user's tmpfs; then swaps it in
# for the previous binding and marks it bound. Values never reach an argv or a disk.
_BIND = r"""set -eu
d=/run/secrets
[ -d "$d" ] && [ -w "$d" ] || { echo "no writable tmpfs at $d" >&2; exit 3; }
umask 077
n="$d/.new"
rm -rf "$n"
mkdir -p "$n/.env"
while IFS=' ' read -r kind name len; do
    case $name in '' | [0-9]* | *[!A-Za-z0-9_]*) echo "bad name" >&2; exit 4 ;; esac
    case $kind in s) f="$n/$name" ;; e) f="$n/.env/$name" ;; *) exit 4 ;; esac
    head -c "$len" >"$f"
    [ "$(wc -c <"$f")" -eq "$len" ] || { echo "short value for $name" >&2; exit 5; }
    chmod 0400 "$f"
done
rm -f "$d/.bound"
for f in "$d"/* "$d/.env"; do if [ -e "$f" ]; then rm -rf "$f"; fi; done
mv "$n/.env" "$d/.env"
for f in "$n"/*; do if [ -e "$f" ]; then mv "$f" "$d/"; fi; done
rmdir "$n"
: >"$d/.bound"
"""
# Sessions: sshd processes of the login user (one per connection), ours left out. CPU:
# utime+stime+cutime+cstime of the login user's live processes outside our own SSH session
# and sshd. Kernel threads, root's daemons (journald logs each login) and init (sshd's
# session processes end as its orphans) are left out, so sampling is no activity; a
# process that ended takes its CPU along (the sum may drop: it only rises with work).
_ACTIVITY = r"""b=unbound
[ -e /run/secrets/.bound ] && b=bound
me=$(id -u)
awk -v self="$$" -v hz="$(getconf CLK_TCK)" -v b="$b" 'BEGIN {
    if ((getline st < ("/proc/" self "/stat")) > 0) {
        sub(/^.*\) /, "", st); split(st, s, " "); ours = s[4]
    }
    for (i = 1; i < ARGC; i++) {
        if ((getline st < (ARGV[i] "/stat")) <= 0) continue
        close(ARGV[i] "/stat")
        comm = st; sub(/^[^(]*\(/, "", comm); sub(/\)[^)]*$/, "", comm)
        sub(/^.*\) /, "", st); split(st, f, " ")
        if (comm == "sshd") { sessions++; continue }
        if (f[4] == ours) continue
        cpu += f[12] + f[13] + f[14] + f[15]
    }
    printf "activity %d %.2f %s\n", sessions - 1, cpu / hz, b
    exit
}' $(find /proc -mindepth 1 -maxdepth 1 -regex '/proc/[0-9]+' -user "$me" 2>/dev/null)
"""


def bind_stream(env: Mapping[str, str], secrets: Mapping[str, SecretStr]) -> bytes:
    """The binding as ``_BIND`` reads it on stdin: env first, then secrets, by name."""
    parts: list[bytes] = []
    for kind, items in (("e", dict(env)),
                        ("s", {k: v.get_secret_value() for k, v in secrets.items()})):
        for name in sorted(items):
            if not _NAME.fullmatch(name):
                raise ProvisionFailed(f"{name!r} is not a variable name")
            value = items[name].encode()
            parts += [f"{kind} {name} {len(value)}\n".encode(), value]
    return b"".join(parts)


async def bind(ep: Endpoint, env: Mapping[str, str],
               secrets: Mapping[str, SecretStr]) -> None:
    """Replace the guest's binding: ``env`` and ``secrets`` in its tmpfs /run/secrets (each
    value only ever travels as SSH stdin), which sessions export (the session wrapper)."""
    rc, out = await run(ep, f"sh -c {shlex.quote(_BIND)}", input=bind_stream(env, secrets))
    values = [v.get_secret_value() for v in secrets.values()]
    if rc != 0:
        raise ProvisionFailed(f"binding {len(env)} variable(s) and {len(secrets)} secret(s) "
                              f"into {SECRETS_DIR} of the VM failed: "
                              f"{redaction.redact(out, values).strip()[-300:]}",
                              hint="the image must come from a template that installs "
                              "the sand-boxer guest files (see packer/base.json)")


async def activity(ep: Endpoint, timeout: float = 60) -> tuple[int, float, bool]:
    """(sessions open besides ours, cumulative CPU seconds, binding present) of the guest."""
    rc, out = await run(ep, f"sh -c {shlex.quote(_ACTIVITY)}", timeout=timeout)
    for line in out.splitlines():
        words = line.split()
        if rc == 0 and len(words) == 4 and words[0] == "activity":
            return max(0, int(words[1])), float(words[2]), words[3] == "bound"
    raise ProvisionFailed(f"reading the activity of the VM at {ep.host}:{ep.port} failed: "
                          f"{out.strip()[-300:] or f'exit {rc}'}")


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
