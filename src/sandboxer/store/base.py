"""The store contract: everything core keeps between processes, whatever the backend.

``Store`` is what core (the manager, the clients, the API, the State Hub publisher) holds;
``store/sqlite/`` implements it for one machine, a server backend implements the same
methods for a shared control plane. tests/unit/store/test_contract.py is the suite every
backend must pass. The guarantees each method gives are in its docstring; beyond them:

- every write is atomic, and a sandbox's state change and its outbox event are written in
  one transaction (the outbox is never ahead of, or behind, the sandboxes);
- a check of a limit (a target's capacity) happens in the same transaction as the write it
  guards, so two processes cannot both pass it;
- ``transaction()`` groups several writes into one; reads inside it see its writes;
- a busy backend is waited for, then ``StoreBusy``; a missing row is ``None`` from a getter
  and ``NotFound``/``SandboxNotFound`` from a change; a wrong state is ``Conflict``.

Standard library only: the CLI's read paths import this module.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

from sandboxer.store.snapshots import SnapshotRows

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from sandboxer.models.events import Event
    from sandboxer.models.extension import Handle
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.target import TargetRecord


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while many objects without cycles are built at once
    (a list's documents): a collection starts every 700 allocations, and the oldest
    generation's walk everything alive. The collector is enabled again only if it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def iso_from_epoch(ts: float) -> str:
    """Epoch seconds as the same RFC 3339 text pydantic writes for a UTC datetime."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Record:
    """A stored sandbox: its public status plus what only sand-boxer itself sees."""

    status: SandboxStatus
    handle: dict[str, Any] | None
    max_expires_at: datetime
    updated_at: datetime
    version: int
    retain: float | None = None
    """Its profile's ``ttl.retain`` when it was created, in seconds (None: no retain)."""
    pool: str | None = None  # the profile whose pool holds it, while unclaimed


class Changes(TypedDict, total=False):
    """What a transition may change besides the state."""

    reason: str | None
    error: str | None
    expires_at: datetime
    reachability: dict[str, Any] | None
    handle: dict[str, Any] | None
    target: str | None
    retain: float | None


@dataclass(frozen=True)
class Claim:
    """What the claim of a pooled sandbox binds to it in the store (``Store.claim``)."""

    actor: str | None
    name: str | None
    labels: dict[str, str]
    created_at: datetime
    expires_at: datetime
    max_expires_at: datetime
    creator: str | None = None


@dataclass(frozen=True)
class ReapCandidate:
    """A sandbox the reaper may have to act on, with what it needs to decide."""

    id: str
    state: str
    updated_at: datetime
    creator: str | None
    reason: str | None = None
    retain: float | None = None


@dataclass(frozen=True)
class OutboxRow:
    """One event of the outbox with its State Hub delivery state (times: epoch seconds)."""

    seq: int
    id: str
    sandbox_id: str
    type: str
    time: float
    payload: dict[str, Any]
    delivered_at: float | None
    attempts: int
    next_attempt_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class OutboxCounts:
    """How many events the outbox holds, by delivery state."""

    total: int
    delivered: int
    retrying: int

    @property
    def pending(self) -> int:
        return self.total - self.delivered - self.retrying


@dataclass(frozen=True)
class TokenRow:
    """An API token as stored: only its sha256 hash, never the token."""

    id: str
    hash: str
    actor: str
    admin: bool
    created_at: float
    last_used_at: float | None


HELD_STALE_MAX = 1.0  # seconds a True from Leadership.held() may be old (leader.py waits it)


class Leadership(Protocol):
    """A role (``"leader"``: the reaper, reconcile and State Hub delivery) held by one process
    of all those that share a store. Held until ``release()`` or until the holding process
    dies, whatever kills it; then another process's ``try_lead`` succeeds."""

    def held(self) -> bool:
        """True while the role is still ours; False once it was lost (the database
        connection that held it broke). Cheap enough to call before every round; it asks
        the backend (one round trip on a server), or answers True from such a check at
        most ``HELD_STALE_MAX`` seconds old, so a hold that broke without the holder
        noticing is found within that time."""
        ...

    def release(self) -> None:
        """Give the role up now; idempotent."""
        ...


@runtime_checkable
class KnowsLeaders(Protocol):
    """Optional for a backend: who holds a role, for the processes that do not (what
    `sandboxer events publish` and the doctor name)."""

    def leader_of(self, role: str) -> str | None:
        """The holder of ``role`` as ``holder_text()`` described it when it took the role
        (host, pid, since when), or None when nobody holds it."""
        ...


def holder_text() -> str:
    """How a process that takes a role describes itself to the others: no secret, no
    argument of its command line."""
    import os
    import socket
    import time

    return (f"host {socket.gethostname()}, pid {os.getpid()}, since "
            f"{iso_from_epoch(round(time.time()))}")


class Store(SnapshotRows, Protocol):
    """The state store core works with (SQLite, embedded; PostgreSQL, a shared plane);
    its snapshot methods are in store/snapshots.py."""

    migrated_from: int
    """The schema version the database had when this store opened it (then migrated it)."""

    # -- plumbing ---------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[None]:
        """``with store.transaction():`` runs every store call inside it as one atomic
        transaction: all of them commit together when the block ends, none when it raises
        (the exception propagates). Reads inside it see its writes; nested transactions
        join the outermost one. Holds the backend's write lock for the whole block: keep it
        short and never await the network inside it."""
        ...

    def schema_version(self) -> int:
        """The schema migration applied to this store (opening a store migrates it)."""
        ...

    def close(self) -> None:
        """Release the connection; the store is not used afterwards."""
        ...

    def try_lead(self, role: str) -> Leadership | None:
        """Take ``role`` if no other process holds it, else None at once (never waits).
        SQLite: a lock file beside the database; PostgreSQL: a session advisory lock on a
        connection of its own, so it ends with the process or its connection."""
        ...

    # -- sandboxes --------------------------------------------------------------------

    def insert(self, status: SandboxStatus, *, max_expires_at: datetime,
               creator: str | None = None, capacity: int | None = None,
               retain: float | None = None, pool: str | None = None,
               pool_size: int | None = None) -> None:
        """Record a new sandbox (version 1, no handle) and its ``sandbox.created`` event in
        one transaction. With ``capacity``, the live sandboxes of its extension on its
        target are counted in that same transaction and ``NoTarget`` is raised, nothing
        written, when ``capacity`` are live already. A duplicate id raises. ``retain``
        (seconds, its profile's ``ttl.retain``) is kept for the reaper (``Record``,
        ``ReapCandidate``).

        ``pool``: the sandbox is provisioned ahead for that profile's pool, unclaimed
        (``claim`` hands it out). With ``pool_size``, the live unclaimed sandboxes of that
        pool are counted in the same transaction and ``Conflict`` is raised, nothing
        written, when ``pool_size`` are live already (two fillers never overfill)."""
        ...

    def claim(self, pool: str, claim: Claim, *, born_after: datetime,
              targets: Iterable[str] | None = None) -> SandboxStatus | None:
        """Hand out one ``ready`` unclaimed sandbox of ``pool`` created after
        ``born_after`` (on one of ``targets`` when given), oldest first, in one
        transaction: it leaves the pool (``pool`` NULL), takes ``claim``'s actor, name,
        labels, times and creator, becomes ``provisioning`` (the claim binds and runs the
        setup steps, then makes it ready) and its ``sandbox.claimed`` event is appended.
        Two concurrent claims never get the same sandbox. None: none was free."""
        ...

    def get(self, sandbox_id: str) -> SandboxStatus | None:
        """The sandbox's status, or None when there is no such sandbox."""
        ...

    def get_record(self, sandbox_id: str) -> Record | None:
        """The sandbox's status with its handle, lease bound, version and pool (the
        profile whose pool holds it unclaimed, else None), or None."""
        ...

    def get_document(self, sandbox_id: str) -> dict[str, Any] | None:
        """The ``sandboxer.sandbox/v1`` document of the sandbox, built without pydantic (the
        fast read path; the same JSON as ``get(...).document()``), or None."""
        ...

    def transition(self, sandbox_id: str, *, from_states: Iterable[str], to_state: str,
                   event: str | None, **changes: Unpack[Changes]) -> SandboxStatus:
        """Move a sandbox from one of ``from_states`` to ``to_state`` with ``changes``
        (keys of ``Changes``; another key is a ValueError), bump its version and, with
        ``event``, append that event carrying the new status — all in one transaction.
        ``SandboxNotFound`` when there is no such sandbox; ``Conflict``, nothing written,
        when its state is not one of ``from_states``. Returns the new status."""
        ...

    def set_handle(self, sandbox_id: str, handle: dict[str, Any]) -> None:
        """Record the extension's handle of a sandbox (no event; never in any event)."""
        ...

    def set_last_active(self, sandbox_id: str, when: datetime) -> None:
        """Record that the sandbox was seen active at ``when`` (its ``last_active_at``),
        unless a later time is recorded already (two samplers never move it back). No
        event, no new version, ``updated_at`` unchanged: it is written every few seconds
        while a sandbox is busy. An unknown id is ignored."""
        ...

    def query(self, *, states: Iterable[str] | None = None, profile: str | None = None,
              actor: str | None = None, extension: str | None = None,
              labels: dict[str, str] | None = None,
              limit: int | None = None, pooled: bool | None = None) -> list[SandboxStatus]:
        """Sandboxes matching every filter given (``labels``: each key has that value;
        ``pooled``: True only unclaimed ones of a pool, False none of them), oldest first
        (creation time, then id), at most ``limit``."""
        ...

    def query_documents(self, *, states: Iterable[str] | None = None,
                        profile: str | None = None, actor: str | None = None,
                        extension: str | None = None, labels: dict[str, str] | None = None,
                        limit: int | None = None,
                        pooled: bool | None = None) -> list[dict[str, Any]]:
        """``query`` as ``sandboxer.sandbox/v1`` documents, built without pydantic."""
        ...

    def reapable(self, now: datetime, *, extension: str | None = None,
                 stale_after: float = 1800.0) -> list[ReapCandidate]:
        """What the reaper may have to act on, soonest-expiring first: ready, unreachable,
        stopped and paused sandboxes whose lease (or ``ttl.retain``) ended by ``now``,
        destroying ones not updated for ``stale_after`` seconds, and every provisioning one
        (the caller tells a dead or silent create from a slow one; see
        ``sandboxer.reaping``). Only ``extension``'s when given."""
        ...

    def has_reapable(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        """Cheap: is a sandbox due by time alone — a ready, unreachable, stopped or paused
        one past its lease, a destroying or provisioning one not updated for
        ``stale_after`` seconds?"""
        ...

    def live_handles(self, extension: str) -> list[Handle]:
        """Handles of every live sandbox (``LIVE_STATES``) of ``extension`` that has one."""
        ...

    def live_ids(self) -> set[str]:
        """Ids of every live sandbox."""
        ...

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        """The state of each of ``ids`` that exists (unknown ids are left out)."""
        ...

    def count(self) -> int:
        """How many sandboxes the store holds, in any state."""
        ...

    def live_count(self, target: str, extension: str) -> int:
        """Live sandboxes of ``extension`` on ``target``: target names are per extension
        (ext.local and ext.compose-ssh both have a ``local``)."""
        ...

    # -- the outbox -------------------------------------------------------------------

    def event_rows(self, *, after: int = 0, sandbox_id: str | None = None,
                   limit: int = 1000, actor: str | None = None,
                   newest: bool = False) -> list[OutboxRow]:
        """Events with ``seq`` above ``after`` in ``seq`` order, at most ``limit`` (0 for
        none); only ``sandbox_id``'s, or only those of ``actor``'s sandboxes, when given;
        ``newest``: the last ``limit`` of them (still in ``seq`` order) instead of the
        first. ``seq`` grows with every event appended, never reused."""
        ...

    def events(self, *, after: int = 0, sandbox_id: str | None = None,
               limit: int = 1000) -> list[Event]:
        """``event_rows`` as ``Event`` models (without the delivery state)."""
        ...

    def undelivered_events(self, *, limit: int = 500) -> list[OutboxRow]:
        """Events not yet delivered to State Hub, oldest first, at most ``limit``."""
        ...

    def next_event_due_at(self) -> float | None:
        """The earliest ``next_attempt_at`` of an undelivered event (0 for one never tried),
        or None when everything is delivered."""
        ...

    def mark_delivered(self, event_ids: Iterable[str], when: float) -> None:
        """Record that these events reached State Hub at ``when`` (counted as an attempt;
        the retry time and last error are cleared). Unknown ids are ignored."""
        ...

    def mark_failed(self, event_id: str, error: str, next_attempt_at: float) -> int:
        """Record a failed attempt (``error`` kept to 500 characters) and when to retry;
        returns the number of attempts so far, 0 for an unknown id or an event already
        delivered (a late failure of a replica that lost the leadership changes nothing)."""
        ...

    def prune_events(self, older_than: float, *, undelivered_too: bool) -> int:
        """Delete events appended before ``older_than``: the delivered ones, and the
        undelivered ones too with ``undelivered_too``. Returns how many were deleted."""
        ...

    def event_counts(self) -> OutboxCounts:
        """How many events there are, delivered, and retrying (tried, not delivered)."""
        ...

    # -- API tokens -------------------------------------------------------------------

    def add_token(self, row: TokenRow) -> None:
        """Record a token; ``Conflict`` when its id or hash is taken."""
        ...

    def token_by_hash(self, digest: str) -> TokenRow | None:
        """The token whose sha256 hash is ``digest``, or None."""
        ...

    def touch_token(self, token_id: str, when: float) -> None:
        """Record that a token was used at ``when`` (an unknown id is ignored)."""
        ...

    def list_tokens(self) -> list[TokenRow]:
        """Every token, by actor, then creation time."""
        ...

    def remove_token(self, token_id: str) -> TokenRow | None:
        """Delete a token and return what it was, atomically; None when there is none."""
        ...

    # -- targets ----------------------------------------------------------------------

    def add_target(self, rec: TargetRecord) -> None:
        """Record a target (its ``created_at`` defaults to now); ``Conflict`` when a target
        of that name exists, whatever its extension. The config document is stored as is:
        the extension validates it."""
        ...

    def list_targets(self, extension: str | None = None) -> list[TargetRecord]:
        """Recorded targets by name; only ``extension``'s when given."""
        ...

    def get_target(self, name: str) -> TargetRecord | None:
        """The target of that name, or None."""
        ...

    def remove_target(self, name: str) -> None:
        """Forget a target: ``Conflict``, nothing removed, while a live sandbox sits on a
        target of that name; ``NotFound`` when there is none."""
        ...

