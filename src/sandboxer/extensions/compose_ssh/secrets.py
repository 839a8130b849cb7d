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

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from sandboxer.errors import ProvisionFailed
from sandboxer.extensions import _guest
from sandboxer.extensions._guest import LOADER, SESSION
from sandboxer.extensions.compose_ssh.remote import Runner, tar_stream

SECRETS_DIR = "/run/secrets"
# Read before the image's 10-/20- drop-ins; for ForceCommand the first value wins.
SSHD_DROPIN = "/etc/ssh/sshd_config.d/05-sandboxer-secrets.conf"
TMPFS_BYTES = 4 << 20

SSHD_TEXT = f"""\
# sand-boxer: every session goes through {SESSION}, which exports /run/secrets/*.
ForceCommand {SESSION}
"""

# Root writes the file (the tmpfs is root's, 0755), then hands it to the login user, 0400.
# The entrypoint creates that user only once its keys have arrived, so wait (at most ~60 s)
# for the account to exist before handing the file over.
_FILL = ('umask 077 && cat > "/run/secrets/$1" && chmod 0400 "/run/secrets/$1" '
         '&& i=0 && until id -u "$2" >/dev/null 2>&1; do i=$((i+1)); '
         '[ "$i" -gt 1200 ] && break; sleep 0.05; done; chown "$2:" "/run/secrets/$1"')


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


async def fill(r: Runner, container: str, secrets: Mapping[str, SecretStr], user: str) -> None:
    """Stream each value into /run/secrets/NAME of the running container.

    The value is only ever ``docker exec``'s standard input; the argument array holds the
    name and the login user, nothing else.
    """
    for name in sorted(secrets):
        value = secrets[name].get_secret_value().encode()
        done = await r.run(["docker", "exec", "-i", "-u", "0", container,
                            "sh", "-c", _FILL, "sh", name, user], input=value, timeout=60)
        if done.rc != 0:
            raise ProvisionFailed(
                f"writing secret {name} into {SECRETS_DIR} of the sandbox on target "
                f"{r.name} failed: {done.tail(3)}",
                hint="the image needs sh, cat, chmod and chown, and the login user must "
                "exist once the container is up",
            )
