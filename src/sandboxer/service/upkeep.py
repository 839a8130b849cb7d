"""Keeping served what should be served, generically: ready sandboxes whose endpoint
process died are served again, and fast paths through an already-running extension
process (an ext.local destroy) are taken when one answers.

Uses only the light ``FastPaths`` an extension registers (``sandboxer.fast_paths``) until
something must really be done, so the CLI's reads stay cheap: neither pydantic nor
asyncio nor ``importlib.metadata`` (tens of milliseconds) is imported on the way
(``sandboxer/entrypoints.py`` reads the entry points).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandboxer.entrypoints import find

if TYPE_CHECKING:
    from sandboxer.config import Settings
    from sandboxer.extensions.base import FastPaths
    from sandboxer.manager import Manager

# extensions.base.FAST_PATH_GROUP, which this module may not import (it loads pydantic).
GROUP = "sandboxer.fast_paths"


def ensure_served(settings: Settings, documents: list[dict[str, Any]],
                  manager: Callable[[], Manager]) -> bool:
    """Serve again the ready sandboxes among ``documents`` that are not served (by the
    extension's ``ServesEndpoints``), storing moved descriptors. True when anything was
    restarted (the caller reads the store again); when it cannot be, each affected
    document's ``reason`` says so. ``manager`` is called only when work is needed."""
    from sandboxer.errors import SandboxerError

    by_extension: dict[str, list[dict[str, Any]]] = {}
    for d in documents:
        if d.get("state") == "ready" and isinstance(d.get("extension"), str):
            by_extension.setdefault(d["extension"], []).append(d)
    restarted = False
    for name, docs in by_extension.items():
        paths = _fast_paths(name)
        if paths is None or not paths.unserved(settings, docs):
            continue
        try:
            restarted |= _run(_serve_again(manager(), name, docs))
        except SandboxerError as e:
            for d in docs:
                d["reason"] = f"unserved: {e.message}"
    return restarted


async def _serve_again(manager: Manager, name: str, documents: list[dict[str, Any]]) -> bool:
    from sandboxer.extensions.base import ServesEndpoints

    ext = manager.extension(name)
    if not isinstance(ext, ServesEndpoints):
        return False
    # Not restored by the extension's process (served now), or restored on a new port.
    for sandbox_id in await ext.serve_again(documents):
        await manager.refresh_reachability(sandbox_id)
    return True


def fast_destroy(settings: Settings, document: dict[str, Any]) -> dict[str, Any] | None:
    """Destroy through the extension's running process when its fast path answers: the
    final document (raising the mapped SandboxerError when it refused), else None."""
    paths = _fast_paths(str(document.get("extension")))
    if paths is None:
        return None
    reply = paths.destroy(settings, str(document["id"]))
    if reply is None:
        return None
    if not reply.get("ok"):
        from sandboxer.errors import from_code

        raise from_code(str(reply.get("code")), str(reply.get("error")))
    final: dict[str, Any] = reply["document"]
    return final


def _run(coro: Any) -> bool:
    import asyncio  # 30+ ms to import: only when something must be served again

    result: bool = asyncio.run(coro)
    return result


def _fast_paths(extension: str) -> FastPaths | None:
    """The FastPaths object ``extension`` registered, or None (a broken one is None too:
    it only costs the slow path)."""
    paths: FastPaths | None = find(GROUP, extension)
    return paths
