"""Leadership on a shared database: a session advisory lock (``pg_try_advisory_lock``) on a
connection of its own.

The lock lives as long as that connection's session: ``release()`` closes it, and when the
holding process dies the server ends the session and the next ``try_lead`` of another
replica succeeds — at once for a closed socket. For a holder whose machine vanished (no
FIN, no RST) the *server's* side decides: the session sets the server's TCP keepalives and
user timeout (``SERVER_TCP``: idle 5 s, every 2 s, 3 probes; unacknowledged data 10 s), so
the server drops it in about 11 s instead of its default of over two hours. libpq's own
keepalives (``KEEPALIVES``) let the holder notice the loss from its side.

``held()`` asks the server at most once a second whether this session still holds the lock
(``pg_locks``), not merely whether the connection answers: behind a pooler in transaction
mode a session is not ours alone. Use a direct connection or a session-mode pooler.

The holding session carries the holder's description (``holder_text()``) as its
``application_name``; ``leader_of`` finds it through ``pg_locks`` for the other processes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from sandboxer.store.base import HELD_STALE_MAX, holder_text
from sandboxer.store.postgres.connection import key64

_ROLE = re.compile(r"[a-z][a-z0-9-]{0,31}")
# libpq's TCP keepalives on the leader's connection: idle 10 s, then every 5 s, 3 probes.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}
SERVER_TCP = (("tcp_keepalives_idle", 5), ("tcp_keepalives_interval", 2),
              ("tcp_keepalives_count", 3), ("tcp_user_timeout", 10000))
HOLDS = ("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
         " AND pid = pg_backend_pid() AND classid = %s::bigint::oid"
         " AND objid = %s::bigint::oid AND objsubid = 1)")
RECHECK = HELD_STALE_MAX  # seconds between two real checks of held()
# The contract holds a role until release() or death, not until the caller drops the object:
# a dropped connection would close its session and free the role, so we keep each one here.
_KEPT: set[AdvisoryLeadership] = set()


def halves(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key's two halves as oids (classid, objid)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class AdvisoryLeadership:
    """A role held through a session advisory lock on ``conn``."""

    def __init__(self, conn: psycopg.Connection[Any], key: int) -> None:
        self._conn: psycopg.Connection[Any] | None = conn
        self._halves = halves(key)
        self._lock = threading.Lock()
        self._checked = time.monotonic()

    def held(self) -> bool:
        with self._lock:
            conn = self._conn
            if conn is None:
                return False
            if time.monotonic() - self._checked < RECHECK:
                return True
            try:
                row = conn.execute(HOLDS, self._halves).fetchone()
            except psycopg.Error:
                row = None
            if not (row and row[0]):
                self._drop()
                return False
            self._checked = time.monotonic()
            return True

    def release(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        _KEPT.discard(self)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()  # ending the session releases its advisory locks


class Leaderships:
    """``try_lead`` and ``leader_of`` for the PostgreSQL store; needs ``_direct`` (a
    connection of its own) and ``_guard`` (a down server as StoreUnavailable)."""

    _direct: Callable[..., psycopg.Connection[Any]]
    _guard: Callable[[Callable[[], Any]], Any]

    def try_lead(self, role: str) -> AdvisoryLeadership | None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"bad role name {role!r}")
        conn: psycopg.Connection[Any] = self._guard(lambda: self._direct(
            **KEEPALIVES, application_name=holder_text()[:63]))  # what leader_of reads
        key = key64("sandboxer", "lead", role)
        try:
            settings = [(name, str(value)) for name, value in SERVER_TCP]
            self._guard(lambda: [conn.execute("SELECT set_config(%s, %s, false)", pair)
                                 for pair in settings])  # this session's settings only
            row = self._guard(lambda: conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (key,)).fetchone())
        except BaseException:
            conn.close()
            raise
        if not (row and row[0]):
            conn.close()
            return None
        held = AdvisoryLeadership(conn, key)
        _KEPT.add(held)
        return held

    def leader_of(self, role: str) -> str | None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"bad role name {role!r}")
        halves_ = halves(key64("sandboxer", "lead", role))

        def ask() -> Any:
            with self._direct() as conn:
                return conn.execute(
                    "SELECT l.pid, a.application_name FROM pg_locks l "
                    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database()) "
                    "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid",
                    halves_).fetchone()

        row = self._guard(ask)
        if row is None:
            return None
        pid, name = row
        return str(name) if name else f"the session of PostgreSQL backend {pid}"
