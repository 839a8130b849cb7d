"""PostgreSQL store for a shared control plane: the ``Store`` of store/base.py for several
``sandboxer serve`` replicas on several machines, on psycopg 3 with a connection pool
(``SANDBOXER_DB_POOL_SIZE`` connections per process), chosen by
``SANDBOXER_DATABASE_URL=postgresql://…``.

Every write is one transaction (READ COMMITTED) that re-checks the state in its own
UPDATE and appends its event to the outbox before it commits; a write inside
``transaction()`` joins it through a savepoint. A transaction that loses a serialization
race or a deadlock is retried; a server that is down or unreachable is ``StoreUnavailable``
(its URL's password never in the message). Capacity: an advisory lock per (extension,
target) held by the inserting transaction (see sandboxes.py); leadership: a session
advisory lock on a connection of its own (leadership.py); migrations: under an advisory
lock on open (migrations.py).
"""

from __future__ import annotations

from sandboxer.store.postgres.leadership import Leaderships
from sandboxer.store.postgres.outbox import OutboxRows
from sandboxer.store.postgres.records import Records
from sandboxer.store.postgres.sandboxes import Sandboxes
from sandboxer.store.postgres.snapshots import Snapshots


class PostgresStore(Sandboxes, Snapshots, OutboxRows, Records, Leaderships):
    """The shared store in the PostgreSQL database ``SANDBOXER_DATABASE_URL`` names."""


__all__ = ["PostgresStore"]
