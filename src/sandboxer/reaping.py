"""What the reaper acts on: the store's candidates, judged against this host's processes.

The store knows times; only core can tell whether the process that started a create is
still running (``sandboxer.creator``), so that judgement happens here, not in the store.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxer.store.base import ReapCandidate, Store

# A destroy or create that has not moved for this long is abandoned, whatever its process.
STALE_AFTER = 1800.0


def _due(c: ReapCandidate, stale_before: datetime) -> bool:
    # The store returns every provisioning sandbox: only a create whose process is gone or
    # that has been silent too long is abandoned; a slow one is left alone.
    if c.state != "provisioning" or c.updated_at <= stale_before:
        return True
    from sandboxer.creator import is_gone  # socket: only when a create is in flight

    return is_gone(c.creator)


def due(store: Store, now: datetime, *, extension: str | None = None,
        stale_after: float = STALE_AFTER) -> list[str]:
    """Ids whose lease ran out, destroys abandoned for ``stale_after``, and creates whose
    creating process is gone (or silent for ``stale_after``), soonest-expiring first."""
    stale_before = now - timedelta(seconds=stale_after)
    candidates = store.reapable(now, extension=extension, stale_after=stale_after)
    return [c.id for c in candidates if _due(c, stale_before)]


def any_due(store: Store, now: datetime, *, stale_after: float = STALE_AFTER) -> bool:
    """A cheap check for the opportunistic reap in every CLI call: one indexed query, plus
    a look at the creators of the sandboxes being created, if any."""
    if store.has_reapable(now, stale_after=stale_after):
        return True
    stale_before = now - timedelta(seconds=stale_after)
    return any(_due(c, stale_before) for c in store.reapable(now, stale_after=stale_after)
               if c.state == "provisioning")
