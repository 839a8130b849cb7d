"""Leadership on a shared database: a session advisory lock (``pg_try_advisory_lock``) on a
connection of its own.

The lock lives as long as that connection's session: ``release()`` closes it, and when the
holding process dies the server ends the session (at once for a closed socket; TCP
keepalives find a vanished machine within about half a minute) and the next ``try_lead``
of another replica succeeds. ``held()`` asks the connection at most once a second
(``HELD_STALE_MAX``). The holder's session carries its description as its
``application_name``, which ``leader_of`` finds through ``pg_locks``.
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
RECHECK = HELD_STALE_MAX  # seconds between two real checks of held()
# The contract holds a role until release() or death, not until the caller drops the object:
# a dropped connection would close its session and free the role, so we keep each one here.
_KEPT: set[AdvisoryLeadership] = set()


class AdvisoryLeadership:
    """A role held through a session advisory lock on ``conn``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn: psycopg.Connection[Any] | None = conn
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
                conn.execute("SELECT 1")
            except psycopg.Error:
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
    """``try_lead`` for the PostgreSQL store; needs ``_direct`` (a connection of its own)."""

    _direct: Callable[..., psycopg.Connection[Any]]

    def try_lead(self, role: str) -> AdvisoryLeadership | None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"bad role name {role!r}")
        # The holder's description travels as the session's application_name, which
        # leader_of reads back through pg_stat_activity (63 bytes at most).
        conn = self._direct(**KEEPALIVES, application_name=holder_text()[:63])
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)",
                               (key64("sandboxer", "lead", role),)).fetchone()
        except BaseException:
            conn.close()
            raise
        if not (row and row[0]):
            conn.close()
            return None
        held = AdvisoryLeadership(conn)
        _KEPT.add(held)
        return held

    def leader_of(self, role: str) -> str | None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"bad role name {role!r}")
        key = key64("sandboxer", "lead", role)
        # A bigint advisory key shows in pg_locks as classid (high half), objid (low half).
        with self._direct() as conn:
            row = conn.execute(
                "SELECT l.pid, a.application_name FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) "
                "AND l.classid::bigint = %s AND l.objid::bigint = %s",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
        if row is None:
            return None
        pid, name = row
        return str(name) if name else f"the session of PostgreSQL backend {pid}"
