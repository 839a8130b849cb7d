"""Events: the outbox (``store/outbox.py``) and its State Hub publisher (``statehub.py``).

Configuration comes from the environment (documented in docs/cli.md and docs/api.md):
``SANDBOXER_STATE_HUB_URL`` turns delivery on; ``SANDBOXER_EVENTS_RETENTION`` bounds the
outbox. Standard library only; the publisher imports httpx lazily.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandboxer import envvars
from sandboxer.config import Settings

if TYPE_CHECKING:
    from sandboxer.store.base import Store

@dataclass(frozen=True)
class HubConfig:
    """Where and how events are delivered."""

    url: str
    token: str | None = None
    timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_max: float = 300.0
    concurrency: int = 16


def hub_config(settings: Settings) -> HubConfig | None:
    """The State Hub to deliver to, or None when ``SANDBOXER_STATE_HUB_URL`` is unset."""
    url = envvars.url(settings.env, "SANDBOXER_STATE_HUB_URL")
    if url is None:
        return None
    return HubConfig(
        url=url,
        token=settings.env.get("SANDBOXER_STATE_HUB_TOKEN") or None,
        timeout=envvars.state_hub_timeout(settings.env),
        backoff_max=envvars.state_hub_backoff_max(settings.env),
    )


def retention(settings: Settings) -> float:
    """Seconds an event is kept (``SANDBOXER_EVENTS_RETENTION``, a duration; default 7d)."""
    return envvars.events_retention(settings.env)


def prune(settings: Settings, store: Store) -> int:
    """Drop events past retention: delivered ones, and every one when no State Hub is
    configured (nothing would ever deliver them). Undelivered events wait for State Hub."""
    from sandboxer.store.outbox import Outbox

    configured = bool(settings.env.get("SANDBOXER_STATE_HUB_URL", "").strip())
    return Outbox(store).prune(time.time() - retention(settings), undelivered_too=not configured)
