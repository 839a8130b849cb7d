"""Where the service reaches an extension's work, one small function each.

Each body still runs today's code; the comment names the generic function
(``sandboxer.capabilities`` / ``sandboxer.service.upkeep``) that replaces it once the
capabilities land, so the swap touches nothing else.
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
                      progress: Callable[[str], None]) -> dict[str, Any]:
    from sandboxer import capabilities

    return await capabilities.build_image(manager, name, target=target, variables=variables,
                                          force=force, progress=progress)


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
    """Bring the ext.local endpoint back when a ready local sandbox is not served.

    A killed endpoint takes every jail with it; the next command that shows or needs a
    local sandbox starts it again, which restores every live sandbox (on its recorded
    port, or a new one when that was taken: then the stored descriptor is renewed
    here). True when anything was restarted, so the caller reads the store again. One
    connect to the control socket when the endpoint is up. If it cannot be brought
    back, the documents say so in ``reason`` rather than claim a servable endpoint.
    """
    # i13-merge: upkeep.ensure_served(settings, docs, manager)
    local = [d for d in docs if d.get("extension") == "ext.local" and d["state"] == "ready"]
    if not local:
        return False
    from sandboxer.extensions.local.wire import request_if_running

    listed = request_if_running(settings, "list", timeout=5)
    served = {e["sandbox_id"]: e["port"] for e in (listed or {}).get("sandboxes", [])}
    if listed is not None and all(
            served.get(d["id"]) == (d.get("reachability") or {}).get("port") for d in local):
        return False
    import asyncio

    from sandboxer.errors import SandboxerError

    try:
        return asyncio.run(_restore_local(settings, local, manager))
    except SandboxerError as e:
        for d in local:
            d["reason"] = f"unserved: {e.message}"
        return False


async def _restore_local(settings: Settings, docs: list[dict[str, Any]],
                         manager: Callable[[], Manager]) -> bool:
    from sandboxer.extensions.local import control

    await control.ensure_running(settings)
    listed = await control.request(settings, "list")
    served = {e["sandbox_id"]: e["port"] for e in listed["sandboxes"]}
    for d in docs:
        # Not restored by the daemon (serve it now), or restored on a new port.
        if served.get(d["id"]) != (d.get("reachability") or {}).get("port"):
            await manager().refresh_reachability(d["id"])
    return True


def fast_destroy(settings: Settings, doc: dict[str, Any]) -> dict[str, Any] | None:
    """A running ext.local endpoint already has the manager loaded, so a local sandbox's
    destroy is handed to it; None when there is no such process (destroy in this one)."""
    # i13-merge: upkeep.fast_destroy(settings, doc)
    if doc["extension"] != "ext.local":
        return None
    from sandboxer.errors import from_code
    from sandboxer.extensions.local.wire import request_if_running

    reply = request_if_running(settings, "destroy", sandbox_id=doc["id"])
    if reply is None:
        return None
    if not reply.get("ok"):
        raise from_code(str(reply.get("code")), str(reply.get("error")))
    document: dict[str, Any] = reply["document"]
    return document
