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
    # i13-merge: capabilities.target_summaries(manager)
    from sandboxer.extensions.compose_ssh import targets

    return targets.list_targets(manager.settings)


async def add_target(manager: Manager, *, name: str, url: str, options: dict[str, Any],
                     confirm: Callable[[str], bool] | None) -> dict[str, Any]:
    # i13-merge: capabilities.add_target(manager, name=name, url=url, extension=None,
    #                                    options=options, confirm=confirm)
    from sandboxer.extensions.compose_ssh import targets

    options = dict(options)
    if options.get("identity") is None:
        options["identity"] = targets.default_identity()
    return await targets.add(manager.settings, name=name, url=url, confirm=confirm,
                             **options)


async def check_targets(manager: Manager, name: str | None) -> list[dict[str, Any]]:
    # i13-merge: capabilities.check_targets(manager, name)
    from sandboxer.extensions.compose_ssh import targets

    return await targets.check(manager.settings, name)


def remove_target(manager: Manager, name: str) -> None:
    # i13-merge: capabilities.remove_target(manager, name)
    from sandboxer.extensions.compose_ssh import targets

    targets.remove(manager.settings, name)


async def build_image(manager: Manager, name: str, *, target: str,
                      variables: dict[str, str], force: bool,
                      progress: Callable[[str], None]) -> dict[str, Any]:
    # i13-merge: capabilities.build_image(manager, name, target=target,
    #                                     variables=variables, force=force, progress=progress)
    from sandboxer.errors import InvalidInput
    from sandboxer.extensions.base import BuildsImages
    from sandboxer.extensions.compose_ssh import images
    from sandboxer.extensions.vm_packer import build as vm_build

    settings = manager.settings
    if name.startswith("profile."):  # whatever that profile's extension builds
        profile = manager.catalog.get(name)
        ext = manager.extension(profile.extension)
        if not isinstance(ext, BuildsImages):
            raise InvalidInput(f"{name} ({profile.extension}) needs no image to be built")
        return await ext.build_for_profile(profile, manager.catalog.source(name).path,
                                           target=target, variables=variables, force=force,
                                           progress=progress)
    if vm_build.is_packer_name(settings, name):  # ext.vm-packer: Packer
        return await vm_build.build_named(settings, name, variables=variables, force=force,
                                          progress=progress)
    return await images.build(settings, name, target, progress=progress)


def doctor_checks(manager: Callable[[], Manager]) -> list[Check]:
    """Every extension's doctor checks; ``manager`` is called only if they need it (the
    state store may be what is broken)."""
    # i13-merge: capabilities.doctor_checks(manager())
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from sandboxer.extensions.local import enforcement
    from sandboxer.models.doctor import Check

    out = []
    bwrap = shutil.which("bwrap")
    out.append(Check("bubblewrap", bwrap is not None, bwrap or "bwrap not on PATH",
                     "apt-get install bubblewrap"))
    max_ns = Path("/proc/sys/user/max_user_namespaces")
    n = int(max_ns.read_text()) if max_ns.exists() else 0
    out.append(Check("user namespaces", n > 0, f"user.max_user_namespaces = {n}",
                     "sysctl -w user.max_user_namespaces=15000"))
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists():
        v = clone.read_text().strip()
        out.append(Check("unprivileged user namespaces", v == "1",
                         f"kernel.unprivileged_userns_clone = {v}",
                         "sysctl -w kernel.unprivileged_userns_clone=1"))
    if bwrap:
        user = 65534 if os.geteuid() == 0 else None
        try:
            done = subprocess.run(
                # As ext.local runs it: a second user namespace that cannot make a third.
                [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "1000",
                 "--ro-bind", "/", "/", "true"],
                capture_output=True, timeout=10, user=user, check=False,
            )
            ok, detail = done.returncode == 0, (done.stderr.decode(errors="replace").strip()
                                                or "an unprivileged jail starts")
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, detail = False, str(e)
        out.append(Check("jail", ok, detail,
                         "enable unprivileged user namespaces (see the checks above)"))
    out += [Check(*c) for c in enforcement.report()]
    return out


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
