"""The API's hottest read — one sandbox's document — straight through libpq, on the thread
of an event loop.

`GET /v1/sandboxes/{id}` does one store read per request on the server's event loop, and
psycopg's cursor machinery (pool checkout, adaptation, row making) costs more CPU than the
query: measured in-process here, 224 µs per ``get_document`` through psycopg against 75 µs
through libpq's own prepared statement (psycopg's ``pq`` layer), and 289 against 136 µs of
the loop's time. So each event-loop thread keeps one libpq connection of its own with the
statement prepared, outside the pool: one per server worker, beside the pool's.

Anything unusual — no connection yet and it cannot be made, a broken one, an error from
the server — is not handled here: ``Skip`` tells the caller to read through the pool
instead, which reports errors as every other read does (and never with the password).
"""

from __future__ import annotations

import asyncio
import threading

from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGconn, PGresult


class Skip(Exception):
    """This path cannot answer now; read through the pool."""


class _Local(threading.local):
    conn: PGconn | None = None
    prepared: set[bytes]

    def __init__(self) -> None:
        self.prepared = set()


class LoopReader:
    """Per event-loop thread: a libpq connection and its prepared statements."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._url, self._timeout = url, timeout
        self._conninfo: bytes | None = None  # made on first use: the store's own open
        # reports a URL libpq refuses (without the password); here it is only a Skip
        self._local = _Local()
        self._opened: list[PGconn] = []
        self._lock = threading.Lock()

    def row(self, name: bytes, sql: bytes, args: list[bytes]) -> list[bytes | None] | None:
        """The first row of the prepared statement ``name`` (``sql``, ``$1``… parameters,
        text results), or None when there is none; ``Skip`` off an event loop's thread or
        when anything goes wrong."""
        if asyncio._get_running_loop() is None:
            raise Skip
        for attempt in (1, 2):  # a read is safe to repeat: once more on a new connection
            conn = self._connection()
            try:
                res = self._execute(conn, name, sql, args)
            except Exception as e:  # libpq failed (a dropped session): the pool says why
                self._drop()
                if attempt == 2:
                    raise Skip from e
                continue
            if res.status != pq.ExecStatus.TUPLES_OK:
                self._drop()
                if attempt == 2 or conn.status == pq.ConnStatus.OK:
                    raise Skip  # the server refused the statement itself
                continue
            if res.ntuples == 0:
                return None
            return [res.get_value(0, i) for i in range(res.nfields)]
        raise Skip  # pragma: no cover - the loop returns or raises

    def _execute(self, conn: PGconn, name: bytes, sql: bytes, args: list[bytes]) -> PGresult:
        local = self._local
        if name not in local.prepared:
            done = conn.prepare(name, sql)
            if done.status != pq.ExecStatus.COMMAND_OK:
                return done
            local.prepared.add(name)
        return conn.exec_prepared(name, args)

    def _connection(self) -> PGconn:
        conn = self._local.conn
        if conn is not None and conn.status == pq.ConnStatus.OK:
            return conn
        if conn is not None:
            self._drop()
        if self._conninfo is None:
            try:
                self._conninfo = make_conninfo(
                    self._url, connect_timeout=str(max(1, round(self._timeout))),
                    application_name="sandboxer-read").encode()
            except Exception as e:
                raise Skip from e
        made = pq.PGconn.connect(self._conninfo)
        if made.status != pq.ConnStatus.OK:
            made.finish()
            raise Skip
        with self._lock:
            self._opened = [c for c in self._opened if c.status == pq.ConnStatus.OK]
            self._opened.append(made)
        self._local.conn = made
        return made

    def _drop(self) -> None:
        conn, self._local.conn = self._local.conn, None
        self._local.prepared = set()
        if conn is not None:
            conn.finish()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.finish()
