"""Noticing a compose sandbox whose container docker restarted, and binding it again.

A restarted container (``docker restart``, a dockerd restart with the override's restart
policy, the docker host rebooted) comes back with an empty /run/secrets tmpfs and with the
SetEnv file its entrypoint writes from the container's own environment, so whatever was
bound later (``Binds.bind``: a claim, an earlier restart) is gone. Its ``State.StartedAt``
is then new.

Each time the sandbox is bound (provision, start, bind) the main container's StartedAt is
recorded here, in ``run/compose-started/<id>`` under SANDBOXER_HOME (a timestamp, nothing
else). Core's keeper process for ext.compose-ssh runs ``watch`` (``Housekeeping``): every
``INTERVAL`` seconds it reads StartedAt of each ready sandbox's main container (the engine
API here, one ``docker inspect`` per sandbox over the target's SSH connection for a remote
target) and, when it differs from the record, calls ``Host.rebind``: core resolves the
profile's secret refs again at the boundary and calls ``bind``, which records the new
time. Why polling rather than ``docker events``: it needs no connection held open to every
target, a keeper started late (after our machine rebooted) still finds every restart that
happened meanwhile, and a record per sandbox survives the keeper itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxer.config import Settings
from sandboxer.errors import SandboxerError
from sandboxer.values import SANDBOX_ID

if TYPE_CHECKING:
    from sandboxer.extensions.base import Handle, Host
    from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

log = logging.getLogger(__name__)
INTERVAL = 5.0  # seconds between two looks at the containers' start times
IDLE_EXIT = 30.0  # seconds without a live sandbox before the housekeeping returns


def _path(settings: Settings, sandbox_id: str) -> Path:
    if not SANDBOX_ID.fullmatch(sandbox_id):
        raise ValueError(f"not a sandbox id: {sandbox_id!r}")
    return settings.run_dir / "compose-started" / sandbox_id


def record(settings: Settings, sandbox_id: str, started_at: str) -> None:
    """Remember when the main container started that the sandbox was last bound."""
    path = _path(settings, sandbox_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(started_at)
    tmp.replace(path)


def recorded(settings: Settings, sandbox_id: str) -> str | None:
    try:
        return _path(settings, sandbox_id).read_text().strip() or None
    except OSError:
        return None


def forget(settings: Settings, sandbox_id: str) -> None:
    _path(settings, sandbox_id).unlink(missing_ok=True)


async def check(ext: ComposeSSHExtension, host: Host, handles: list[Handle]) -> list[str]:
    """Rebind every one of these (ready) sandboxes whose main container started since it
    was last bound; the ids rebound. A target that does not answer is tried next time."""
    by_target: dict[str, list[Handle]] = {}
    for h in handles:
        by_target.setdefault(h.target or "local", []).append(h)
    rebound: list[str] = []
    for target, mine in by_target.items():
        try:
            async with await ext.runner(target) as r:
                for h in mine:
                    info = await r.inspect(await ext.main_container(r, h))
                    state = (info or {}).get("State") or {}
                    if not state.get("Running") or state.get("Paused") \
                            or state.get("Restarting"):
                        continue  # nothing to bind until it runs (or it is paused)
                    started = str(state.get("StartedAt") or "")
                    before = recorded(ext.settings, h.sandbox_id)
                    if before is None:  # made before records were kept: from now on
                        record(ext.settings, h.sandbox_id, started)
                        continue
                    if before == started:
                        continue
                    log.info("%s: its container on target %s started again at %s; "
                             "binding its secrets again", h.sandbox_id, target, started)
                    if await host.rebind(h.sandbox_id):
                        record(ext.settings, h.sandbox_id, started)
                        rebound.append(h.sandbox_id)
                    else:  # core stopped it, saying which secret no longer resolves
                        forget(ext.settings, h.sandbox_id)
        except (SandboxerError, OSError, NotImplementedError) as e:
            log.warning("watching restarts on target %s: %s", target,
                        e.message if isinstance(e, SandboxerError) else e)
    return rebound


async def watch(ext: ComposeSSHExtension, host: Host, *, interval: float = INTERVAL,
                idle_exit: float = IDLE_EXIT) -> None:
    """``Housekeeping.housekeep``: ``check`` the ready sandboxes every ``interval``
    seconds; return once none has been live for ``idle_exit`` seconds."""
    idle_since: float | None = None
    while True:
        try:
            handles = host.live_handles()
            states = host.states(h.sandbox_id for h in handles)
        except Exception as e:  # a store that went away: the keeper notices it too
            log.warning("reading the live sandboxes: %s", e)
            handles, states = [], {}
        if handles or host.busy():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_exit:
            return
        ready = [h for h in handles if states.get(h.sandbox_id) == "ready"]
        if ready:
            try:
                await check(ext, host, ready)
            except Exception:  # never end the keeper's housekeeping for one bad round
                log.exception("watching the containers' restarts")
        await asyncio.sleep(interval)
