"""SQLite store in WAL mode, safe for several sandboxer processes at once: the ``Store``
of store/base.py for one machine, and the only package that speaks SQL
(with its migrations, store/migrations.py).

Every write runs in ``BEGIN IMMEDIATE`` (the write lock is taken up front, so a read never
has to be upgraded and no update is lost), re-checks the sandbox's state inside the
transaction, and appends its event to the outbox in that same transaction; a write inside
``transaction()`` joins it through a savepoint. Lock waits are absorbed by SQLite's busy
handler plus a bounded retry, so "database is locked" never reaches a user; after the
deadline a StoreBusy error says what to do. One connection per store, shared by the
threads of a process under one lock.
"""

from __future__ import annotations

from sandboxer.store.sqlite.leadership import Leaderships
from sandboxer.store.sqlite.outbox import OutboxRows
from sandboxer.store.sqlite.records import Records
from sandboxer.store.sqlite.sandboxes import Sandboxes
from sandboxer.store.sqlite.snapshots import Snapshots


class SqliteStore(Sandboxes, Snapshots, OutboxRows, Records, Leaderships):
    """The embedded store at ``$SANDBOXER_HOME/state.db`` (or ``SANDBOXER_DATABASE_URL``)."""


__all__ = ["SqliteStore"]
