"""Where the service reaches an extension's work, one small function each: the generic
use of the capabilities (``sandboxer.capabilities``) and of the endpoint upkeep
(``sandboxer.service.upkeep``), imported only when a command needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.config import Settings
    from sandboxer.manager import Manager
    from sandboxer.models.doctor import Check


def target_summaries(manager: Manager) -> list[dict[str, Any]]:
    from sandboxer import capabilities

    return capabilities.target_summaries(manager)


async def add_target(manager: Manager, *, name: str, url: str, options: dict[str, Any],
                     confirm: Callable[[str], bool] | None,
                     extension: str | None = None) -> dict[str, Any]:
    from sandboxer import capabilities

    return await capabilities.add_target(manager, name=name, url=url, extension=extension,
                                         options=options, confirm=confirm)


async def check_targets(manager: Manager, name: str | None) -> list[dict[str, Any]]:
    from sandboxer import capabilities

    return await capabilities.check_targets(manager, name)


def remove_target(manager: Manager, name: str) -> None:
    from sandboxer import capabilities

    capabilities.remove_target(manager, name)


async def build_image(manager: Manager, name: str, *, target: str,
                      variables: dict[str, str], force: bool,
                      progress: Callable[[str], None],
                      confined: bool = False) -> dict[str, Any]:
    from sandboxer import capabilities

    return await capabilities.build_image(manager, name, target=target, variables=variables,
                                          force=force, progress=progress, confined=confined)


def doctor_checks(manager: Callable[[], Manager]) -> list[Check]:
    """Every extension's doctor checks; ``manager`` is called only here, after core's own
    checks (the state store may be what is broken)."""
    from sandboxer import capabilities
    from sandboxer.models.doctor import Check

    try:
        return capabilities.doctor_checks(manager())
    except Exception as e:  # a store that cannot be opened must not hide the other checks
        return [Check("extensions", False, f"could not load the extensions' checks: {e}",
                      "see the state store check")]


def ensure_served(settings: Settings, docs: list[dict[str, Any]],
                  manager: Callable[[], Manager]) -> bool:
    """Serve again ready sandboxes whose endpoint process is gone (service.upkeep)."""
    from sandboxer.service import upkeep

    return upkeep.ensure_served(settings, docs, manager)


def fast_destroy(settings: Settings, doc: dict[str, Any]) -> dict[str, Any] | None:
    """Destroy through the extension's running process when one answers (service.upkeep)."""
    from sandboxer.service import upkeep

    return upkeep.fast_destroy(settings, doc)
