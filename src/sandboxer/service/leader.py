"""Leadership among the `sandboxer serve` replicas of one store: the campaign for the
``leader`` role and the loop every duty of the leader runs in.

Every replica campaigns: every ``SANDBOXER_LEADER_INTERVAL`` seconds it tries
``store.try_lead("leader")``. The winner first waits ``settle`` seconds (``interval`` +
the check's ``timeout`` + ``HELD_STALE_MAX``), so that a leader that lost its hold without
knowing it yet (its database connection broke while its process lives; the server then
frees the lock at once) has made its next ``held()`` check and stopped; then it logs
"this replica leads" and runs its duties — the reaper, the periodic reconcile, the State
Hub publisher. Each duty asks ``Term.round()`` (a ``held()`` check)
before each round or batch, and a watchdog asks every interval. Once the hold is lost (or
does not answer within ``timeout``), the duties that must never overlap another leader's
(the publisher) are cancelled at once, the others end after the round they are in, the
role is released and the replica campaigns again. Leader or not, a replica answers every
API request: leadership only decides who runs the background work.

``held()``, ``release()`` and ``try_lead()`` may wait on the network (PostgreSQL), so they
run in worker threads, never on the event loop, each hold's calls one at a time in a
thread of its own with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sandboxer.events import HubConfig
from sandboxer.redaction import redact
from sandboxer.store.base import HELD_STALE_MAX, KnowsLeaders, Leadership, Store

log = logging.getLogger(__name__)
ROLE = "leader"
ROUND_GRACE = 10.0  # how long a duty that was told to stop may finish its round


UNKNOWN = "a process this store cannot name"


def check_timeout(interval: float) -> float:
    """How long one check of the role may take before it counts as lost."""
    return max(interval, 1.0)


def settle_seconds(interval: float) -> float:
    """How long a new holder of the role waits before its first duty: a lost leader
    notices at its next check — at most one interval, plus that check, plus the age a
    backend's cached answer may have."""
    return interval + check_timeout(interval) + HELD_STALE_MAX


def holder(store: Store, role: str = ROLE) -> str | None:
    """Who holds ``role`` ("host H, pid N, since T"), ``UNKNOWN`` when the backend cannot
    tell or the question failed, or None when nobody does."""
    if isinstance(store, KnowsLeaders):
        try:
            return store.leader_of(role)
        except Exception as e:  # a description is a courtesy: never fail a command for it
            log.debug("could not tell who holds %s: %s", role, redact(str(e)))
    return UNKNOWN


@dataclass(frozen=True)
class Duty:
    """Background work only the leader does: ``run(term)`` returns when the term ends.
    ``at_once``: cancelled the moment the hold is lost (it must never overlap another
    leader's), instead of finishing its round."""

    name: str
    run: Callable[[Term], Awaitable[None]]
    at_once: bool = False


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


class _Hold:
    """A Leadership whose calls run in a thread of their own, one at a time, each within
    ``timeout`` seconds; a check that fails, raises or does not answer loses the hold."""

    def __init__(self, lease: Leadership, timeout: float) -> None:
        self.lease = lease
        self.timeout = timeout
        self.lost: str | None = None  # why, once lost
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandboxer-leader")
        self._check: asyncio.Future[bool] | None = None

    def _held(self) -> bool:
        try:
            return bool(self.lease.held())
        except Exception as e:
            log.warning("checking the leader role failed: %s", redact(str(e)))
            return False

    async def held(self) -> bool:
        if self.lost is not None:
            return False
        if self._check is None or self._check.done():  # concurrent askers share one check
            self._check = asyncio.get_running_loop().run_in_executor(self._pool, self._held)
        check = self._check
        try:
            ok = await asyncio.wait_for(asyncio.shield(check), self.timeout)
        except TimeoutError:
            if not check.done():  # else our loop was busy, not the database slow
                self.lost = f"the database did not confirm it within {self.timeout:g}s"
                return False
            ok = check.result()
        if not ok and self.lost is None:
            self.lost = ("the store no longer confirms it: its database connection broke, "
                         "or its lock file was replaced")
        return ok

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._pool, self.lease.release),
                                   self.timeout)
        except Exception as e:  # a dead connection frees the role by itself
            log.warning("releasing the leader role failed: %s", redact(str(e) or type(e).__name__))
        finally:
            self._pool.shutdown(wait=False)


class Term:
    """One stretch of leadership, as the duties see it: ``ended`` is set when the hold is
    lost or the server stops."""

    def __init__(self, hold: _Hold) -> None:
        self._hold = hold
        self.ended = asyncio.Event()

    async def round(self) -> bool:
        """Before each round or batch: True while the role is still ours (it asks the
        store); False once the term ended — stop then."""
        if self.ended.is_set():
            return False
        if await self._hold.held():
            return True
        self.ended.set()
        return False

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` between rounds; False when the term ended meanwhile."""
        return not await _wait(self.ended, seconds)


def every(name: str, interval: float, work: Callable[[], Awaitable[object]]) -> Duty:
    """A duty that awaits ``work()`` every ``interval`` seconds, the first time at once; a
    round that raises is logged and the next one runs as usual."""

    async def run(term: Term) -> None:
        while await term.round():
            try:
                await work()
            except Exception as e:  # the loop outlives one bad round
                log.error("%s round failed: %s", name, redact(str(e) or type(e).__name__))
            if not await term.sleep(interval):
                return

    return Duty(name, run)


def publishing(store: Store, config: HubConfig, changed: asyncio.Event) -> Duty:
    """The State Hub publisher as a duty: woken by ``changed`` (set after each local state
    change), checking the role before each pass, cancelled at once when it is lost."""

    async def run(term: Term) -> None:
        from sandboxer.events.statehub import Publisher

        publisher = Publisher(store, config)
        relay = asyncio.ensure_future(_relay(changed, publisher.wake))
        try:
            await publisher.run(term.ended, ready=term.round)
        finally:
            relay.cancel()
            await publisher.aclose()

    return Duty("State Hub delivery", run, at_once=True)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    while True:
        await source.wait()
        source.clear()
        target.set()


class Campaign:
    """This process's campaign for the leader role of ``store``, and the ``duties`` it
    runs while it holds it (docstring of the module)."""

    def __init__(self, store: Store, duties: Sequence[Duty], *, interval: float,
                 role: str = ROLE) -> None:
        self.store = store
        self.duties = list(duties)
        self.role = role
        self.interval = interval
        self.timeout = check_timeout(interval)
        self.settle = settle_seconds(interval)
        self.since: float | None = None  # epoch seconds the duties started, while leading

    @property
    def leading(self) -> bool:
        return self.since is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead, campaign again, … until ``stop`` is set."""
        said: str | None = None
        failing = False
        while not stop.is_set():
            try:
                lease = await asyncio.to_thread(self.store.try_lead, self.role)
                failing = False
            except Exception as e:  # the database is away: serve on, try again
                lease = None
                (log.debug if failing else log.warning)(
                    "could not campaign for the leader role (trying again every %gs): %s",
                    self.interval, redact(str(e) or type(e).__name__))
                failing = True
            if lease is None and failing:
                await _wait(stop, self.interval)
                continue
            if lease is None:
                if said is None:
                    said = await asyncio.to_thread(holder, self.store, self.role) or "unknown"
                    log.info("another process leads (%s); this replica serves the API and "
                             "campaigns every %gs", said, self.interval)
                await _wait(stop, self.interval)
                continue
            said = None
            hold = _Hold(lease, self.timeout)
            try:
                await self._lead(hold, stop)
            finally:
                self.since = None
                await hold.release()
            if hold.lost is not None:  # likely our database connection is the sick one:
                await _wait(stop, 2 * self.interval)  # let a healthier replica win first

    async def _lead(self, hold: _Hold, stop: asyncio.Event) -> None:
        if await _wait(stop, self.settle) or not await hold.held():
            return
        term = Term(hold)
        self.since = time.time()
        log.info("this replica leads: it runs %s (checking the role every %gs)",
                 ", ".join(d.name for d in self.duties) or "nothing", self.interval)
        tasks: dict[asyncio.Future[None], Duty] = {
            asyncio.ensure_future(d.run(term)): d for d in self.duties}
        stopper = asyncio.ensure_future(stop.wait())
        ender = asyncio.ensure_future(term.ended.wait())
        try:
            while not term.ended.is_set() and not stop.is_set():
                await asyncio.wait({stopper, ender}, timeout=self.interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not stop.is_set() and not term.ended.is_set():
                    await term.round()
        finally:
            stopper.cancel()
            ender.cancel()
            term.ended.set()
            self.since = None
            await self._end(tasks, lost=not stop.is_set(), why=hold.lost)

    async def _end(self, tasks: dict[asyncio.Future[None], Duty], *, lost: bool,
                   why: str | None) -> None:
        if lost:
            log.warning("lost the leadership (%s): stopping %s; campaigning again",
                        why or "unknown", ", ".join(d.name for d in self.duties) or "nothing")
        for task, duty in tasks.items():
            if lost and duty.at_once:
                task.cancel()
        if not tasks:
            return
        _done, late = await asyncio.wait(set(tasks), timeout=ROUND_GRACE)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=ROUND_GRACE)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s ended with %s", tasks[task].name,
                          redact(repr(task.exception())))
