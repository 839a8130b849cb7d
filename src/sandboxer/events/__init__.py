"""Events: the outbox (``store/outbox.py``) and its State Hub publisher (``statehub.py``).

Configuration comes from the environment (documented in docs/cli.md and docs/api.md):
``SANDBOXER_STATE_HUB_URL`` turns delivery on; ``SANDBOXER_EVENTS_RETENTION`` bounds the
outbox. Standard library only; the publisher imports httpx lazily.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput
from sandboxer.values import parse_duration

if TYPE_CHECKING:
    from sandboxer.store.sqlite import SqliteStore

DEFAULT_RETENTION = "7d"


@dataclass(frozen=True)
class HubConfig:
    """Where and how events are delivered."""

    url: str
    token: str | None = None
    timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_max: float = 300.0
    concurrency: int = 16


def _seconds(settings: Settings, name: str, default: float) -> float:
    raw = settings.env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InvalidInput(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def hub_config(settings: Settings) -> HubConfig | None:
    """The State Hub to deliver to, or None when ``SANDBOXER_STATE_HUB_URL`` is unset."""
    url = settings.env.get("SANDBOXER_STATE_HUB_URL", "").strip()
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"SANDBOXER_STATE_HUB_URL={url!r}: expected an http(s):// URL")
    return HubConfig(
        url=url.rstrip("/"),
        token=settings.env.get("SANDBOXER_STATE_HUB_TOKEN") or None,
        timeout=_seconds(settings, "SANDBOXER_STATE_HUB_TIMEOUT", 10.0),
        backoff_max=_seconds(settings, "SANDBOXER_STATE_HUB_BACKOFF_MAX", 300.0),
    )


def retention(settings: Settings) -> float:
    """Seconds an event is kept (``SANDBOXER_EVENTS_RETENTION``, a duration; default 7d)."""
    raw = settings.env.get("SANDBOXER_EVENTS_RETENTION") or DEFAULT_RETENTION
    try:
        return parse_duration(raw).total_seconds()
    except ValueError as e:
        raise InvalidInput(f"SANDBOXER_EVENTS_RETENTION: {e}") from e


def prune(settings: Settings, store: SqliteStore) -> int:
    """Drop events past retention: delivered ones, and every one when no State Hub is
    configured (nothing would ever deliver them). Undelivered events wait for State Hub."""
    from sandboxer.store.outbox import Outbox

    configured = bool(settings.env.get("SANDBOXER_STATE_HUB_URL", "").strip())
    return Outbox(store).prune(time.time() - retention(settings), undelivered_too=not configured)
