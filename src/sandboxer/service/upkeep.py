"""Keeping served what should be served, generically: ready sandboxes whose endpoint
process died are served again, and fast paths through an already-running extension
process (an ext.local destroy) are taken when one answers.

Uses only the light ``FastPaths`` an extension registers (``sandboxer.fast_paths``) until
something must really be done, so the CLI's reads stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.config import Settings
    from sandboxer.manager import Manager


def ensure_served(settings: Settings, documents: list[dict[str, Any]],
                  manager: Callable[[], Manager]) -> bool:
    """Serve again the ready sandboxes among ``documents`` that are not served (by the
    extension's ``ServesEndpoints``), storing moved descriptors. True when anything was
    restarted (the caller reads the store again); when it cannot be, each affected
    document's ``reason`` says so. ``manager`` is called only when work is needed."""
    raise NotImplementedError  # i13-daemon


def fast_destroy(settings: Settings, document: dict[str, Any]) -> dict[str, Any] | None:
    """Destroy through the extension's running process when its fast path answers: the
    final document (raising the mapped SandboxerError when it refused), else None."""
    raise NotImplementedError  # i13-daemon
