"""The environment a long-lived child process starts with: an allow-list, never a copy.

A daemon outlives the shell that started it, and ``/proc/PID/environ`` keeps whatever it
was given for its whole life: an ``env:`` secret variable, ``SANDBOXER_TOKEN`` or cloud
credentials of the caller must not be in it. So children get the few system variables a
process needs plus the settings they read, named by the caller.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

SYSTEM = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
# A setting under an allowed prefix is still dropped when its name looks like a credential.
SECRETISH = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|KEY", re.IGNORECASE)


def allowed(
    env: Mapping[str, str], *, names: Iterable[str] = (), prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """The subset of ``env`` a child may see: SYSTEM, ``LC_*``, ``names`` (exactly), and
    variables starting with one of ``prefixes`` whose name does not look secret."""
    wanted = SYSTEM | set(names)
    return {
        k: v for k, v in env.items()
        if k in wanted or k.startswith("LC_")
        or (k.startswith(prefixes) and not SECRETISH.search(k))
    }


# Settings a build tool never needs and must not see: the database URL carries a password.
NEVER_TO_TOOLS = frozenset({"SANDBOXER_DATABASE_URL", "SANDBOXER_STATE_HUB_URL", "SANDBOXER_URL"})
# Which docker engine and client configuration the docker CLI uses.
DOCKER_NAMES = frozenset({"DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT"})
PROXY_NAMES = frozenset({"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                         "NO_PROXY"})
# What a build tool may need beyond the system basics: proxies and its own settings.
TOOL_NAMES = PROXY_NAMES | DOCKER_NAMES
# Read from the process environment, not from settings, by what a sand-boxer process runs
# (the docker CLI, an HTTP library's proxies and CA bundle): the local service runs with
# its starter's and serves only callers with the same (service/wire.py, the settings key).
PROCESS_NAMES = TOOL_NAMES | frozenset({"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                                        "CURL_CA_BUNDLE"})


def for_tool(env: Mapping[str, str], *, prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a build tool or image recipe (packer, a recipe script): the
    system basics, proxies, docker's client settings, ``SANDBOXER_*`` settings (the image
    recipes read some) and ``prefixes`` (``PACKER_``) — never a credential, the database
    URL or a server URL."""
    chosen = allowed(env, names=TOOL_NAMES, prefixes=("SANDBOXER_", *prefixes))
    return {k: v for k, v in chosen.items() if k not in NEVER_TO_TOOLS}


def source_dir() -> str:
    """The directory this sand-boxer is imported from (site-packages or a checkout's
    ``src``): what a keeper gets first on its PYTHONPATH."""
    import sandboxer

    return str(Path(sandboxer.__file__).resolve().parent.parent)


def for_sandboxer(caller: Mapping[str, str], home: Path) -> dict[str, str]:
    """The environment of a long-lived sand-boxer process of ``home`` (core's daemon):
    the system basics, docker's client settings, proxies and CA bundles (``PROCESS_NAMES``:
    the local service acts for its callers with them), sand-boxer's own settings (none
    whose name looks like a credential), and the same sand-boxer on PYTHONPATH as the
    caller's, installed or from a checkout."""
    env = allowed(caller, names=PROCESS_NAMES, prefixes=("SANDBOXER_",))
    env["SANDBOXER_HOME"] = str(home)
    src = source_dir()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, caller.get("PYTHONPATH")) if p)
    return env
