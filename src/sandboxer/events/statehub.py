"""The State Hub publisher: outbox -> ``POST {SANDBOXER_STATE_HUB_URL}/v1/events``.

Contract (docs/api.md): one event per request, JSON ``sandboxer.event/v1`` without
sand-boxer's delivery bookkeeping; ``Authorization: Bearer $SANDBOXER_STATE_HUB_TOKEN``;
``Idempotency-Key: <event id>``. A 2xx or 409 (already have it) marks the event delivered;
anything else, a timeout or a refused connection is retried with exponential backoff and
full jitter, capped at ``SANDBOXER_STATE_HUB_BACKOFF_MAX``. Delivery is at least once and
in order per sandbox: a sandbox's next event waits until the one before it is delivered.
State lives in the store, so a restart resumes where the last process stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandboxer.config import Settings
from sandboxer.events import HubConfig
from sandboxer.redaction import redact
from sandboxer.store.outbox import Outbox, wire_document

if TYPE_CHECKING:
    import httpx

    from sandboxer.store.base import OutboxRow, Store

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """What one publishing pass did."""

    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def document(self, remaining: int) -> dict[str, Any]:
        return {"schema": "sandboxer.publish/v1", "delivered": self.delivered,
                "failed": self.failed, "remaining": remaining, "errors": self.errors[:20]}


def backoff(attempts: int, config: HubConfig) -> float:
    """Seconds before the next attempt: exponential, capped, with jitter (half to full)."""
    exponent = max(0, min(attempts - 1, 30))
    delay = min(config.backoff_max, config.backoff_base * float(2**exponent))
    return float(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto


class Publisher:
    """Delivers the outbox of one store to one State Hub."""

    def __init__(self, store: Store, config: HubConfig,
                 http: httpx.AsyncClient | None = None) -> None:
        self.store = store
        self.outbox = Outbox(store)
        self.config = config
        self._http = http
        self.wake = asyncio.Event()

    async def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            headers = {"Content-Type": "application/json", "User-Agent": "sand-boxer"}
            if self.config.token:
                headers["Authorization"] = f"Bearer {self.config.token}"
            self._http = httpx.AsyncClient(
                headers=headers, timeout=self.config.timeout, follow_redirects=False,
                limits=httpx.Limits(max_connections=self.config.concurrency))
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _send(self, row: OutboxRow) -> str | None:
        """Deliver one event; None when delivered, else why not (never a secret)."""
        import httpx

        # The body is the stored event exactly, so every replica and every retry sends the
        # same bytes under one Idempotency-Key. No secret value is in it: events are written
        # from sandbox documents whose error text was redacted when it was recorded. (Masking
        # here with this process's own registry of values would make the body differ between
        # processes and could break its JSON.)
        body = json.dumps(wire_document(row), separators=(",", ":"))
        http = await self._client()
        try:
            reply = await http.post(f"{self.config.url}/v1/events", content=body,
                                    headers={"Idempotency-Key": row.id})
        except httpx.TimeoutException:
            return f"timed out after {self.config.timeout:g}s"
        except httpx.HTTPError as e:
            return redact(f"{type(e).__name__}: {e}")[:300]
        if 200 <= reply.status_code < 300 or reply.status_code == 409:
            return None
        return f"HTTP {reply.status_code} from State Hub"

    async def _deliver_chain(self, rows: list[OutboxRow], result: Pass) -> None:
        """One sandbox's events in order; stop at the first failure (order per sandbox)."""
        for row in rows:
            error = await self._send(row)
            # Store calls off the loop: a slow database must not stall the leader's watchdog
            # on this loop (it cancels this publisher the moment the role is lost).
            if error is None:
                await asyncio.to_thread(self.outbox.mark_delivered, [row.id], time.time())
                result.delivered += 1
                continue
            attempts = row.attempts + 1
            wait = backoff(attempts, self.config)
            await asyncio.to_thread(self.outbox.mark_failed, row.id, error, time.time() + wait)
            result.failed += 1
            result.errors.append(f"{row.id} ({row.type} {row.sandbox_id}): {error}")
            log.warning("State Hub delivery of %s failed (attempt %d, next in %.1fs): %s",
                        row.id, attempts, wait, error)
            return

    async def publish_pass(self, *, ignore_backoff: bool = False) -> Pass:
        """Send every event that is due now, once: what `sandboxer events publish` runs."""
        result = Pass()
        now = float("inf") if ignore_backoff else time.time()
        rows = await asyncio.to_thread(self.outbox.due, now, limit=2000)
        chains: dict[str, list[OutboxRow]] = {}
        for row in rows:
            chains.setdefault(row.sandbox_id, []).append(row)
        sem = asyncio.Semaphore(self.config.concurrency)

        async def run(chain: list[OutboxRow]) -> None:
            async with sem:
                await self._deliver_chain(chain, result)

        await asyncio.gather(*(run(c) for c in chains.values()))
        return result

    async def run(self, stop: asyncio.Event, *, idle: float = 1.0,
                  ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Publish until ``stop`` is set: drain what is due, then sleep until the next
        retry is due, ``idle`` seconds pass, or ``wake`` is set by a local state change.
        ``ready`` is awaited before each pass (the leader's check that it still leads):
        False ends the run."""
        while not stop.is_set():
            if ready is not None and not await ready():
                return
            try:
                done = await self.publish_pass()
            except Exception as e:  # a broken pass must not end the service's publisher
                log.error("State Hub publisher pass failed: %s", redact(str(e)))
                done = Pass(failed=1)
            if done.delivered and not done.failed:
                continue  # more may be waiting behind the batch limit
            nxt = await asyncio.to_thread(self.outbox.next_due_at)
            wait = idle if nxt is None else max(0.01, min(idle, nxt - time.time()))
            self.wake.clear()
            stopper = asyncio.ensure_future(stop.wait())
            waker = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait({stopper, waker}, timeout=wait,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this run is cancelled (a leader that lost its role)
                stopper.cancel()
                waker.cancel()


async def publish_once(settings: Settings, store: Store, config: HubConfig) -> Pass:
    """One pass over everything undelivered, backoff or not (the operator asked now)."""
    publisher = Publisher(store, config)
    try:
        return await publisher.publish_pass(ignore_backoff=True)
    finally:
        await publisher.aclose()
