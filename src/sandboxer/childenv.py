"""The environment a long-lived child process starts with: an allow-list, never a copy.

A daemon outlives the shell that started it, and ``/proc/PID/environ`` keeps whatever it
was given for its whole life: an ``env:`` secret variable, ``SANDBOXER_TOKEN`` or cloud
credentials of the caller must not be in it. So children get the few system variables a
process needs plus the settings they read, named by the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import subprocess

SYSTEM = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
# A setting under an allowed prefix is still dropped when its name looks like a credential.
SECRETISH = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|KEY", re.IGNORECASE)


def allowed(
    env: Mapping[str, str], *, names: Iterable[str] = (), prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """The subset of ``env`` a child may see: SYSTEM, ``names`` (exactly), and ``LC_*``
    and variables starting with one of ``prefixes`` whose name does not look secret (an
    ssh client's ``SendEnv LC_*`` passes anything under that prefix)."""
    wanted = SYSTEM | set(names)
    return {
        k: v for k, v in env.items()
        if k in wanted
        or (k.startswith(("LC_", *prefixes)) and not SECRETISH.search(k))
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


def piped(caller: Mapping[str, str]) -> bytes:
    """What a keeper's starter writes to its stdin: the ``PIPED`` settings it has."""
    return json.dumps(_piped_settings(caller)).encode()


def _piped_settings(caller: Mapping[str, str]) -> dict[str, str]:
    return {k: caller[k] for k in sorted(PIPED) if k in caller}


def send_piped(proc: subprocess.Popen[bytes], caller: Mapping[str, str]) -> None:
    """Hand a keeper just started with ``stdin=PIPE`` the ``PIPED`` settings of
    ``caller``; it reads them before it forks."""
    if proc.stdin is None:
        return
    with contextlib.suppress(BrokenPipeError):  # it died at once: its log says why
        proc.stdin.write(piped(caller))
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()


def receive_piped(stream: BinaryIO) -> dict[str, str]:
    """The ``PIPED`` settings a keeper's starter wrote (none from ``/dev/null``); anything
    else in the stream is ignored."""
    data = stream.read(1 << 16)
    try:
        got = json.loads(data) if data.strip() else {}
    except ValueError:
        return {}
    if not isinstance(got, dict):
        return {}
    return {k: v for k, v in got.items() if k in PIPED and isinstance(v, str)}


EARLY_MAX = 4 << 20  # the largest environment send_environ may write
HANDOVER_TIMEOUT = 5.0  # a keeper reads it within ~0.1 s of its start here


def send_environ(fd: int, caller: Mapping[str, str], home: Path,
                 timeout: float = HANDOVER_TIMEOUT) -> bool:
    """Hand a keeper started early (``sandboxer/early.py``) its environment on the pipe
    ``fd``, which is then closed: ``for_sandboxer``'s, with the ``PIPED`` settings, which
    it keeps out of ``/proc/PID/environ`` as ``receive_piped`` does. False, the pipe
    closed with nothing whole on it (the keeper exits), when it is too large for
    ``receive_environ`` or the keeper has not read it within ``timeout`` seconds (stuck
    in its start): the caller starts a keeper otherwise."""
    import select
    import time

    environ = {**for_sandboxer(caller, home), **_piped_settings(caller)}
    data = memoryview(json.dumps({"environ": environ}).encode())
    try:
        if len(data) > EARLY_MAX:
            return False
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False  # cut off: invalid JSON, which the keeper refuses
                select.select([], [fd], [], left)
            except BrokenPipeError:  # it died at once: its log says why
                return False
        return True
    finally:
        os.close(fd)


def receive_environ(stream: BinaryIO) -> dict[str, str] | None:
    """What ``send_environ`` wrote, read to its end; None when the starter wrote nothing
    (it closed the pipe: it will not be served by this keeper) or something else."""
    data = stream.read(EARLY_MAX + 1)
    try:
        got = json.loads(data) if data.strip() and len(data) <= EARLY_MAX else None
    except ValueError:
        return None
    environ = got.get("environ") if isinstance(got, dict) else None
    if not isinstance(environ, dict):
        return None
    return {k: v for k, v in environ.items() if isinstance(k, str) and isinstance(v, str)
            and k and "=" not in k and "\0" not in k + v}


def source_dir() -> str:
    """The directory this sand-boxer is imported from (site-packages or a checkout's
    ``src``): what a keeper gets first on its PYTHONPATH."""
    import sandboxer

    return str(Path(sandboxer.__file__).resolve().parent.parent)


# Settings a keeper needs but must not carry in ``/proc/PID/environ`` for its whole life
# (the database URL holds a password): they reach it over a pipe on its stdin instead
# (``piped`` in the starter, ``receive_piped`` in the keeper, before it reads settings).
PIPED = frozenset({"SANDBOXER_DATABASE_URL"})


def for_sandboxer(caller: Mapping[str, str], home: Path) -> dict[str, str]:
    """The environment of a long-lived sand-boxer process of ``home`` (core's daemon):
    the system basics, docker's client settings, proxies and CA bundles (``PROCESS_NAMES``:
    the local service acts for its callers with them), sand-boxer's own settings (none
    whose name looks like a credential, none of ``PIPED``), and the same sand-boxer on
    PYTHONPATH as the caller's, installed or from a checkout."""
    env = {k: v for k, v in allowed(caller, names=PROCESS_NAMES, prefixes=("SANDBOXER_",))
           .items() if k not in PIPED}
    env["SANDBOXER_HOME"] = str(home)
    src = source_dir()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, caller.get("PYTHONPATH")) if p)
    return env
