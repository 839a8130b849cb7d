"""The guest side of secrets, one copy: the loader that exports /run/secrets/NAME as NAME
(after /run/secrets/.env/NAME, the environment ext.vm-packer binds there)
and the session wrapper sshd runs for every session (ForceCommand) when a sandbox has
secrets.

The files ship as package data (``sandboxer/extensions/guest/``); ext.compose-ssh reads
them here and copies them into the container. ext.vm-packer's Packer template installs
``packer/base/guest/loader.sh`` and ``session``, checked-in copies that a unit test keeps
byte-equal to these (copies rather than files generated at build time, so that the image
cache key, which hashes the template's input files, stays what it was).
"""

from __future__ import annotations

from importlib.resources import files

LOADER = "/etc/profile.d/sandboxer-secrets.sh"
SESSION = "/usr/local/lib/sandboxer/session"
FILES = ("loader.sh", "session")  # package data names, as in packer/base/guest/


def text(name: str) -> str:
    """One guest file (``loader.sh`` or ``session``) as shipped."""
    if name not in FILES:
        raise ValueError(f"no guest file {name!r}")
    return files("sandboxer.extensions").joinpath("guest", name).read_text(encoding="utf-8")
