"""ext.compose-ssh's targets (docker hosts): add (pinning the host key), summaries, check.

Core stores what ``add_target`` returns and lists, checks and removes targets through the
extension's ``ManagesTargets`` methods (``sandboxer.capabilities``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, NotFound, ProvisionFailed
from sandboxer.extensions.compose_ssh.config import (
    EXTENSION,
    LOCAL,
    TargetConfig,
    target_record,
)

if TYPE_CHECKING:
    from sandboxer.extensions.base import Target
    from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension
    from sandboxer.models.target import TargetRecord

# What `targets add` takes for a docker host (None: not given).
OPTIONS = ("identity", "public_host", "capacity", "kind", "allow", "labels", "fingerprint")


def summary(t: TargetConfig) -> dict[str, Any]:
    return {"name": t.name, "extension": t.extension, "url": t.url,
            "identity_file": t.identity_file, "public_host": t.public_host,
            "capacity": t.capacity, "kind": t.kind, "allow": t.allow,
            "labels": t.labels, "host_keys": t.host_keys, "implicit": False}


def local_summary(settings: Settings) -> dict[str, Any]:
    return {"name": LOCAL, "extension": EXTENSION, "url": None,
            "identity_file": None, "public_host": "127.0.0.1",
            "capacity": envvars.compose_local_capacity(settings.env),
            "kind": "self-hosted", "allow": [], "labels": {}, "host_keys": [],
            "implicit": True}


async def add_target(ext: ComposeSSHExtension, name: str, url: str, options: dict[str, Any],
                     confirm: Callable[[str], bool] | None
                     ) -> tuple[TargetRecord, dict[str, Any]]:
    """First contact with a new target: its host key is shown, then pinned in the record.

    ``options``: ``identity`` (default: the user's usual key), ``public_host``,
    ``capacity``, ``kind``, ``allow``, ``labels`` (for profiles' ``placement``),
    ``fingerprint`` (the host key expected).
    """
    from pydantic import ValidationError

    from sandboxer.extensions.compose_ssh.remote import first_contact

    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise InvalidInput(f"targets add {name}: {EXTENSION} takes no {', '.join(unknown)}",
                           hint=f"its options: {', '.join(OPTIONS)}")
    identity = given.get("identity") or default_identity()
    try:
        cfg = TargetConfig(name=name, url=url, public_host=given.get("public_host"),
                           capacity=given.get("capacity"),
                           kind=given.get("kind", "self-hosted"), allow=given.get("allow", []),
                           labels=given.get("labels", {}),
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
    line, seen = await first_contact(cfg)
    fingerprint = given.get("fingerprint")
    if fingerprint is not None and fingerprint != seen:
        raise InvalidInput(f"target {name} presented host key {seen}, not {fingerprint}",
                           hint="check you are talking to the right host")
    if fingerprint is None and confirm is not None and not confirm(seen):
        raise InvalidInput(f"host key {seen} of {cfg.host}:{cfg.port} was not accepted")
    cfg.host_keys = [line]
    return target_record(cfg), {**summary(cfg), "fingerprint": seen}


async def check_targets(ext: ComposeSSHExtension,
                        name: str | None = None) -> list[dict[str, Any]]:
    """SSH reachable? engine version? compose v2 or v1? free capacity? — per target."""
    targets = ext.targets(ext.settings)
    if name is not None:
        targets = [t for t in targets if t.name == name]
        if not targets:
            raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")

    async def one(t: Target) -> dict[str, Any]:
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


def default_identity() -> str | None:
    for candidate in ("id_ed25519", "id_ecdsa", "id_rsa"):
        p = Path(os.path.expanduser("~/.ssh")) / candidate
        if p.is_file():
            return str(p)
    return None
