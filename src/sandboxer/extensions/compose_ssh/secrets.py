"""Secrets in a compose sandbox: a tmpfs at /run/secrets of the main service, filled after
``up`` through ``docker exec -i`` (values on standard input only), exported into SSH
sessions by a loader script.

Where values go: from sand-boxer's memory over the target's SSH channel (or a local pipe)
to ``docker exec``'s standard input, into ``/run/secrets/NAME`` (tmpfs, 0400, owned by
the login user) inside the running container. Nothing here writes a value to a file on
the docker host, into the compose project, the image or the container's configuration.

How sessions see them: three small files, holding no value, are copied into the created
container before it starts. ``/etc/profile.d/sandboxer-secrets.sh`` exports each file of
/run/secrets as a variable (login shells source it through /etc/profile); an sshd drop-in
sets ``ForceCommand`` to ``/usr/local/lib/sandboxer/session``, which sources that loader
and then runs what the client asked for with the user's shell (``$SHELL -c CMD``) or a
login shell. ``ssh host CMD`` needs this: bash run by sshd reads bashrc files that return
early when non-interactive and ignores ``BASH_ENV``, and without PAM sshd itself offers
no way to add variables from a file at session start (``SetEnv`` values would sit on disk).
The loader and the wrapper are the files ext.vm-packer's guests run too
(``sandboxer.extensions._guest``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions import _guest
from sandboxer.extensions._guest import LOADER, SESSION
from sandboxer.extensions.compose_ssh.remote import Runner, tar_stream

log = logging.getLogger(__name__)
SECRETS_DIR = "/run/secrets"
# Read before the image's 10-/20- drop-ins; for ForceCommand the first value wins.
SSHD_DROPIN = "/etc/ssh/sshd_config.d/05-sandboxer-secrets.conf"
TMPFS_BYTES = 4 << 20

SSHD_TEXT = f"""\
# sand-boxer: every session goes through {SESSION}, which exports /run/secrets/*.
ForceCommand {SESSION}
"""

ENV_CONF = "/etc/ssh/sshd_config.d/10-sandboxer-env.conf"  # the entrypoint's SetEnv file

# One `docker exec -i` as root, everything on standard input, one line each: `NAME VALUE`
# for a secret, `@env VALUE` for a new SetEnv file; VALUE escaped for printf's %b (no
# space, backslash or control byte left). Files are written into a new directory of the
# tmpfs, owned by the login user (the entrypoint creates it once its keys have arrived:
# wait at most ~60 s), 0400, then replace what /run/secrets held. A changed SetEnv file
# is put in place and sshd told (SIGHUP: it execs itself again and reads its config);
# then wait until it listens again (a new listening socket on the SSH port), so the next
# session sees the new environment. Arguments: the login user, the SSH port (hex), and
# 1 to tell sshd even when the SetEnv file is unchanged (a drop-in was just added).
_BIND = r"""set -u
umask 077
d=/run/secrets u=$1 hexport=$2 reload=$3 conf=""" + ENV_CONF + r"""
i=0; until id -u "$u" >/dev/null 2>&1; do
    i=$((i+1)); [ "$i" -gt 1200 ] && break; sleep 0.05; done
[ -d "$d" ] || { echo "the container has no $d tmpfs" >&2; exit 3; }
new=$(mktemp -d "$d/.bind.XXXXXX") || exit 1
env=
n=0
while IFS=' ' read -r name val; do
    case $name in
    @env) env=$val ;;
    ?*) printf '%b' "$val" >"$new/$name" || exit 1; n=$((n+1)) ;;
    esac
done
# Few processes: a claim waits for this exec.
set -- "$d"/*
[ -e "$1" ] && { rm -f -- "$@" || exit 1; }
if [ "$n" -gt 0 ]; then
    chmod 0400 "$new"/* && chown "$u:" "$new"/* && mv -f -- "$new"/* "$d/" || exit 1
fi
rmdir "$new"
if [ -n "$env" ]; then
    printf '%b' "$env" >"$conf.new" || exit 1
    if [ "$(grep -v '^#' "$conf" 2>/dev/null)" = "$(grep -v '^#' "$conf.new")" ]; then
        rm -f "$conf.new"
    else
        chmod 0644 "$conf.new" && mv -f "$conf.new" "$conf" || exit 1
        reload=1
    fi
fi
[ "$reload" = 1 ] || exit 0
listening() {
    for t in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$t" ] || continue
        while read -r _ l _ st _ _ _ _ _ ino _; do
            [ "$st" = 0A ] && case $l in *:"$hexport") printf '%s ' "$ino" ;; esac
        done <"$t"
    done
}
count() { set -- $1; echo $#; }
shared() { for a in $1; do case " $2 " in *" $a "*) return 0 ;; esac; done; return 1; }
old=$(listening)
pid=$(cat /run/sshd.pid 2>/dev/null) || pid=1
kill -HUP "${pid:-1}" || exit 1
# Done once every listening socket is a new one (IPv4 and IPv6 alike).
i=0; while [ "$i" -lt 1000 ]; do
    now=$(listening)
    if [ -n "$now" ] && ! shared "$old" "$now" \
            && [ "$(count "$now")" -ge "$(count "$old")" ]; then
        exit 0
    fi
    i=$((i+1)); sleep 0.01
done
echo "sshd did not listen again within 10s of reading its new environment" >&2
exit 4
"""
_PLAIN = re.compile(rb"[A-Za-z0-9_.,:/=+@%-]")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by docker, the shell or sshd rather than by a profile (as the entrypoint skips them).
_SKIP = {"HOME", "HOSTNAME", "PATH", "PWD", "OLDPWD", "SHLVL", "TERM", "_"}


def escaped(value: bytes) -> str:
    """``value`` for printf's ``%b``: every byte outside a plain set as ``\\0ooo``."""
    return "".join(chr(b) if _PLAIN.fullmatch(bytes([b])) else f"\\0{b:03o}"
                   for b in value)


def env_conf(container_env: list[str], provisioned: list[str],
             env: Mapping[str, str]) -> str:
    """The SetEnv file sessions get ``env`` from, as the entrypoint writes it: the
    container's environment minus what provision bound (``provisioned``: names), plus
    ``env``. A value holding a newline cannot be expressed there and is left out."""
    found: dict[str, str] = {}
    for item in container_env:
        name, _, value = item.partition("=")
        if name not in provisioned:
            found[name] = value
    found.update(env)
    entries = []
    for name in sorted(found):
        value = found[name]
        if not NAME.fullmatch(name) or name.startswith("SANDBOXER_") or name in _SKIP:
            continue
        if "\n" in value:
            log.warning("not passing %s to SSH sessions: its value contains a newline", name)
            continue
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        entries.append(f'"{name}={quoted}"')
    line = f"SetEnv {' '.join(entries)}\n" if entries else ""
    return f"# Written by sand-boxer when it bound this environment. Do not edit.\n{line}"


def add_to_override(main: dict[str, Any]) -> None:
    """The main service's share of the override: the tmpfs (a mount, no value)."""
    main.setdefault("volumes", []).append({
        "type": "tmpfs", "target": SECRETS_DIR,
        "tmpfs": {"size": TMPFS_BYTES, "mode": 0o755},
    })


def loader_tarball() -> bytes:
    """The loader, the session wrapper and the sshd drop-in, root-owned, as a tar stream
    for ``docker cp - CID:/``."""
    files = [(path.lstrip("/"), text.encode(), mode)
             for path, text, mode in ((LOADER, _guest.text("loader.sh"), 0o644),
                                      (SESSION, _guest.text("session"), 0o755),
                                      (SSHD_DROPIN, SSHD_TEXT, 0o644))]
    return tar_stream(files, dirs=dict.fromkeys(p.rsplit("/", 1)[0] for p, _, _ in files))


async def install_loader(r: Runner, container: str) -> None:
    """Copy the loader into the created container, before it starts."""
    await r.check(["docker", "cp", "-", f"{container}:/"], input=loader_tarball(),
                  what="installing the secrets loader")


async def fill(r: Runner, container: str, secrets: Mapping[str, SecretStr], user: str,
               *, ssh_port: int = 22, conf: str | None = None, reload: bool = False
               ) -> None:
    """Put exactly ``secrets`` in /run/secrets of the running container (and, with
    ``conf``, that SetEnv file for sessions; ``reload``: sshd reads its configuration
    again even when that file is unchanged), in one ``docker exec -i``.

    Values are only ever its standard input; the argument array holds the login user and
    the port, nothing else.
    """
    lines = []
    for name in sorted(secrets):
        if not NAME.fullmatch(name):
            raise InvalidInput(f"secret name {name!r} is not a variable name")
        lines.append(f"{name} {escaped(secrets[name].get_secret_value().encode())}\n")
    if conf is not None:
        lines.append(f"@env {escaped(conf.encode())}\n")
    argv = ["docker", "exec", "-i", "-u", "0", container, "sh", "-c", _BIND, "sh", user,
            f"{ssh_port:04X}", str(int(reload))]
    done = await r.run(argv, input="".join(lines).encode(), timeout=60)
    if done.rc != 0:
        names = ", ".join(sorted(secrets)) or "no secret"
        raise ProvisionFailed(
            f"binding the sandbox's environment and secrets ({names}) in {SECRETS_DIR} "
            f"of container {container} on target {r.name} failed: {done.tail(3)}",
            hint="the image needs sh, cat, grep, mktemp, chmod and chown; the login user "
            "must exist once the container is up",
        )
