"""The store contract for snapshots (``sandboxer.snapshot/v1``), part of ``Store``.

A snapshot row holds its public status, the extension's artifact document (never a secret,
never in an event) and its version. Every change re-checks the state and appends its event
(``snapshot.created``, ``snapshot.failed``, ``snapshot.deleted``) in the same transaction;
an event's ``sandbox_id`` is the snapshotted sandbox and its payload the snapshot document.

Standard library only, as store/base.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from sandboxer.models.snapshot import SnapshotStatus

# States whose record claims an artifact (reconcile removes the others' leftovers): a
# ``creating`` row is written before the extension makes anything.
CLAIMING_STATES = ("creating", "ready", "deleting")
SNAPSHOT_FIELDS = ("reason", "error", "expires_at", "artifact", "size_bytes", "content_hash",
                   "target")


def snapshot_document(row: Any) -> dict[str, Any]:
    """The SnapshotStatus document of a row of either backend (a mapping by column
    name, times in epoch seconds), built without pydantic."""
    from sandboxer.store.base import iso_from_epoch

    return {
        "schema": "sandboxer.snapshot/v1",
        "id": row["id"], "name": row["name"], "sandbox_id": row["sandbox_id"],
        "profile": row["profile"], "extension": row["extension"], "target": row["target"],
        "state": row["state"], "reason": row["reason"], "actor": row["actor"],
        "created_at": iso_from_epoch(row["created_at"]),
        "expires_at": iso_from_epoch(row["expires_at"]),
        "size_bytes": row["size_bytes"], "content_hash": row["content_hash"],
        "error": row["error"],
    }


def snapshot_status(row: Any) -> SnapshotStatus:
    """``snapshot_document`` as the model."""
    from sandboxer.models.snapshot import SnapshotStatus

    return SnapshotStatus.model_validate(snapshot_document(row))


@dataclass
class SnapshotRecord:
    """A stored snapshot: its public status plus the artifact only core sees."""

    status: SnapshotStatus
    artifact: dict[str, Any] | None
    updated_at: datetime
    version: int


class SnapshotChanges(TypedDict, total=False):
    """What a snapshot transition may change besides the state."""

    reason: str | None
    error: str | None
    expires_at: datetime
    artifact: dict[str, Any] | None
    size_bytes: int | None
    content_hash: str | None
    target: str | None


class SnapshotRows(Protocol):
    """Snapshots: what ``Store`` keeps of them (both backends, one contract suite)."""

    def insert_snapshot(self, status: SnapshotStatus) -> None:
        """Record a new snapshot (version 1, no artifact, no event: ``snapshot.created``
        is appended when it becomes ready). A duplicate id is ``Conflict``."""
        ...

    def get_snapshot(self, snapshot_id: str) -> SnapshotStatus | None:
        """The snapshot's status, or None when there is none."""
        ...

    def get_snapshot_record(self, snapshot_id: str) -> SnapshotRecord | None:
        """The snapshot's status with its artifact and version, or None."""
        ...

    def snapshot_transition(self, snapshot_id: str, *, from_states: Iterable[str],
                            to_state: str, event: str | None,
                            **changes: Unpack[SnapshotChanges]) -> SnapshotStatus:
        """Move a snapshot from one of ``from_states`` to ``to_state`` with ``changes``
        (keys of ``SnapshotChanges``; another key is a ValueError), bump its version and,
        with ``event``, append that event (``sandbox_id``: the snapshotted sandbox;
        payload: the new snapshot document) — in one transaction. ``NotFound`` when there
        is no such snapshot; ``Conflict``, nothing written, in another state."""
        ...

    def query_snapshots(self, *, states: Iterable[str] | None = None,
                        sandbox_id: str | None = None, actor: str | None = None,
                        extension: str | None = None,
                        limit: int | None = None) -> list[SnapshotStatus]:
        """Snapshots matching every filter given, oldest first (creation time, then id),
        at most ``limit``."""
        ...

    def reapable_snapshots(self, now: datetime, *, extension: str | None = None,
                           stale_after: float = 1800.0) -> list[SnapshotStatus]:
        """What the snapshot reaper acts on, soonest-expiring first: ready snapshots whose
        retention ended by ``now``, and creating or deleting ones not updated for
        ``stale_after`` seconds (a snapshot or delete whose process died). Only
        ``extension``'s when given."""
        ...

    def has_reapable_snapshots(self, now: datetime, *, stale_after: float = 1800.0) -> bool:
        """Cheap: is any snapshot due (``reapable_snapshots`` would not be empty)?"""
        ...

    def claimed_snapshots(self, extension: str) -> set[str]:
        """Ids of ``extension``'s snapshots whose record claims an artifact
        (``CLAIMING_STATES``), for reconcile."""
        ...
