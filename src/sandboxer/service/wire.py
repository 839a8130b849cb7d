"""The local service's socket: where it is, what a request carries, when it may serve it.

Standard library only: the CLI's thin client (``client/service.py``) imports this and
nothing heavier, so ``create``, ``destroy``, ``extend``, ``stop``, ``start``, ``pause``,
``resume``, ``ssh`` and ``reachability show`` pay for no pydantic, asyncio or SSH library.

The local service is core's keeper process for ext.local (``service/daemon.py``), which
hosts a ``Service``. It listens on ``$SANDBOXER_HOME/run/service.sock`` (0600, in the
0700 ``run/``, answering only its own uid or root). One connection carries one request,
a JSON line::

    {"v": 1, "op": "create", "args": {...}, "key": "…", "env": {...}}

and gets back ``{"taken": true}`` once the service runs it, any number of
``{"progress": "…"}`` lines, then exactly one of
``{"ok": true, "result": …}``, ``{"ok": false, "error": {"code": …, "message": …}}`` or
``{"ok": false, "fallback": "why"}`` (the service cannot act exactly as this caller
would, or is stopping: the caller does it in its own process instead). A connection that
ends before ``taken`` was never run (a service that stopped meanwhile): the caller does it
itself too; one that ends after it is reported, never done again.

**The environment.** ``env`` is the caller's whole environment, and the request runs in
it as it would in the caller's own process (``Service.for_environ``): secret refs resolve
in it (``env:`` refs, ``BAO_TOKEN``), tunnel variables and extensions read it, the tools
extensions run get what they would get. It travels over the private socket to a process
of the same user, is never logged, stored or kept after the request, and never becomes
the service's own process environment.

**The settings key.** What one process cannot change per request must match: the code
(its location, version and ``PYTHONPATH``, i.e. the plugins it can import), the home and
its store, ``HOME`` and ``PATH`` (where binaries and profiles are found), docker's,
proxy and CA bundle variables (``childenv.PROCESS_NAMES``: tools and libraries read them
from the process environment, the service's, not from settings) and every
``SANDBOXER_*`` setting whose name does not look like a credential. ``settings_key``
hashes those; a caller whose key differs from the service's is told to do the work in
its own process. A relative path in one of them (``SANDBOXER_PROFILES=profiles``, a
``PATH`` entry ``bin``) names another place from another directory, and the service keeps
its starter's: then the working directory is in the key too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandboxer import childenv
from sandboxer.config import Settings, sha256_hex
from sandboxer.states import LIFECYCLE

PROTOCOL = 1
MAX_LINE = 4 << 20  # one request or reply line, environment included
_KEY_NAMES = frozenset({"PATH", "HOME"}) | childenv.PROCESS_NAMES
# Settings of the local service itself, which its callers need not share.
_NOT_KEYED = frozenset({"SANDBOXER_HOME", "SANDBOXER_LOCAL_SERVICE",
                        "SANDBOXER_SERVICE_IDLE_EXIT", "SANDBOXER_DEBUG"})
# Values that are a path or a list of them (os.pathsep), read relative to the working
# directory when relative (SANDBOXER_WARDEN: when it holds a slash, else PATH finds it).
_PATH_NAMES = frozenset({"PATH", "PYTHONPATH", "SANDBOXER_PROFILES", "SANDBOXER_IMAGES",
                         "SANDBOXER_PACKER_DIR", "SANDBOXER_VM_IMAGES",
                         "SANDBOXER_LOCAL_ROOT", "SANDBOXER_WARDEN", "SANDBOXER_CA_CERT",
                         "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                         "CURL_CA_BUNDLE", "DOCKER_CONFIG"})
# The ops a thin client may send; the service refuses anything else.
OPS = frozenset({"create", "get", "extend", "destroy", "ping", "snapshot", "fork",
                 *LIFECYCLE})


def socket_path(settings: Settings) -> Path:
    return settings.run_dir / "service.sock"


def settings_key(env: Mapping[str, str], home: Path) -> str:
    """Who may be served by whom: equal keys mean the same code and settings."""
    import os

    import sandboxer

    items = sorted(
        (k, v) for k, v in env.items()
        if k not in _NOT_KEYED and (
            k in _KEY_NAMES
            or (k.startswith("SANDBOXER_") and not childenv.SECRETISH.search(k))))
    # Which plugins are importable: the caller's PYTHONPATH, without the source directory
    # a keeper's gets in front of it (childenv.for_sandboxer).
    src = childenv.source_dir()
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    payload = [PROTOCOL, sandboxer.__version__, src, str(home), items, path,
               _working_directory(env)]
    return sha256_hex(json.dumps(payload).encode())


def _working_directory(env: Mapping[str, str]) -> str | None:
    """This process's working directory when a keyed path is relative, else None."""
    import os

    for name in _PATH_NAMES:
        value = env.get(name)
        if value is None or (name == "SANDBOXER_WARDEN" and "/" not in value):
            continue
        # An empty PATH entry is the working directory; elsewhere empty ones are skipped.
        if any(not p.startswith("/") for p in value.split(os.pathsep)
               if p or name == "PATH"):
            try:
                return os.getcwd()
            except OSError:  # removed: nothing relative resolves there, for anyone
                return ""
    return None


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


GROUP = "sandboxer.local_service"


def host_extension() -> str | None:
    """The extension whose keeper hosts the local service: the first registered under
    the ``sandboxer.local_service`` entry-point group (ext.local's), or None."""
    from sandboxer.entrypoints import registered

    names = sorted(registered(GROUP))
    return names[0] if names else None
