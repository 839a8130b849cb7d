"""`sandboxer targets ...` for docker hosts: add (pinning the host key), list, check, remove."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, NotFound, ProvisionFailed
from sandboxer.extensions.compose_ssh.extension import (
    LOCAL,
    ComposeSSHExtension,
    target_config,
    target_record,
)
from sandboxer.extensions.compose_ssh.remote import first_contact
from sandboxer.models.target import TargetConfig


def _summary(t: TargetConfig) -> dict[str, Any]:
    return {"name": t.name, "extension": t.extension, "url": t.url,
            "identity_file": t.identity_file, "public_host": t.public_host,
            "capacity": t.capacity, "kind": t.kind, "allow": t.allow,
            "host_keys": t.host_keys, "implicit": False}


def local_summary(settings: Settings) -> dict[str, Any]:
    return {"name": LOCAL, "extension": ComposeSSHExtension.name, "url": None,
            "identity_file": None, "public_host": "127.0.0.1",
            "capacity": envvars.compose_local_capacity(settings.env),
            "kind": "self-hosted", "allow": [], "host_keys": [], "implicit": True}


def list_targets(settings: Settings) -> list[dict[str, Any]]:
    ext = ComposeSSHExtension(settings)
    recorded = ext.store.list_targets(ext.name)
    return [local_summary(settings), *(_summary(target_config(t)) for t in recorded)]


async def add(
    settings: Settings,
    *,
    name: str,
    url: str,
    identity: str | None,
    public_host: str | None = None,
    capacity: int | None = None,
    kind: str = "self-hosted",
    allow: list[str] | None = None,
    fingerprint: str | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Record a target after first contact: the host key is shown, then pinned."""
    from pydantic import ValidationError

    try:
        cfg = TargetConfig(name=name, url=url, public_host=public_host, capacity=capacity,
                           kind=kind, allow=allow or [],
                           identity_file=str(Path(identity).absolute()) if identity else None)
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidInput(f"targets add {name}: {first['msg']}") from e
    if cfg.identity_file:
        path = Path(cfg.identity_file)
        if not path.is_file():
            raise InvalidInput(f"--identity {path}: no such file")
        if path.stat().st_mode & 0o077:
            raise InvalidInput(f"--identity {path}: private key is readable by others",
                               hint=f"chmod 600 {path}")
    ext = ComposeSSHExtension(settings)
    if ext.store.get_target(name) is not None:
        from sandboxer.errors import Conflict

        raise Conflict(f"a target named {name!r} exists already",
                       hint="remove it first with `sandboxer targets remove`")
    line, seen = await first_contact(cfg)
    if fingerprint is not None and fingerprint != seen:
        raise InvalidInput(f"target {name} presented host key {seen}, not {fingerprint}",
                           hint="check you are talking to the right host")
    if fingerprint is None and confirm is not None and not confirm(seen):
        raise InvalidInput(f"host key {seen} of {cfg.host}:{cfg.port} was not accepted")
    cfg.host_keys = [line]
    ext.store.add_target(target_record(cfg))
    return {**_summary(cfg), "fingerprint": seen}


async def check(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """SSH reachable? engine version? compose v2 or v1? free capacity? — per target."""
    ext = ComposeSSHExtension(settings)
    targets = ext.targets(settings)
    if name is not None:
        targets = [t for t in targets if t.name == name]
        if not targets:
            raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")

    async def one(t: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"name": t.name, "ok": False, "engine": None,
                                  "compose": None, "compose_version": None,
                                  "capacity": t.capacity, "used": t.used, "free": t.free,
                                  "error": None}
        try:
            async with await ext.runner(t.name) as r:
                result.update(await asyncio.wait_for(ext.facts(r), 30))
            result["ok"] = t.free is None or t.free > 0
            if not result["ok"]:
                result["error"] = f"full ({t.used}/{t.capacity})"
        except (ProvisionFailed, TimeoutError) as e:
            result["error"] = e.message if isinstance(e, ProvisionFailed) else "timed out"
        return result

    return list(await asyncio.gather(*(one(t) for t in targets)))


def remove(settings: Settings, name: str) -> None:
    if name == LOCAL:
        raise InvalidInput("the local target is implicit and cannot be removed")
    ComposeSSHExtension(settings).store.remove_target(name)


def default_identity() -> str | None:
    for candidate in ("id_ed25519", "id_ecdsa", "id_rsa"):
        p = Path(os.path.expanduser("~/.ssh")) / candidate
        if p.is_file():
            return str(p)
    return None
