"""The connection pool under every part of the PostgreSQL store: migrations on open, write
transactions (savepoints when nested) with retries on serialization failures and deadlocks,
and the mapping of a down or unreachable server to ``StoreUnavailable``.

Pool connections are in autocommit mode, so a read is one statement and one round trip (no
BEGIN, no ROLLBACK when the connection goes back to the pool); a write sends its own
``BEGIN`` … ``COMMIT``. ``transaction()`` binds one connection to the calling thread for
the whole block: every store call of that thread inside it runs on that connection, a
write as a savepoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool, PoolTimeout

from sandboxer.envvars import masked_database_url
from sandboxer.errors import InvalidInput, StoreBusy, StoreUnavailable
from sandboxer.store.postgres.fastread import LoopReader
from sandboxer.store.postgres.migrations import migrate
from sandboxer.values import LIVE_STATES

log = logging.getLogger(__name__)
T = TypeVar("T")
Conn = psycopg.Connection[dict[str, Any]]

LIVE = "state IN (" + ", ".join(f"'{s}'" for s in LIVE_STATES) + ")"
# Lost to another transaction (SERIALIZABLE, or a deadlock PostgreSQL broke): safe to redo.
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
# The session is gone (a restarted or shut-down server, a terminated backend): the statement
# never ran, so it is safe to take another connection and send it again.
_SESSION_GONE = (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow,
                 pg_errors.IdleSessionTimeout)


def _stale(conn: psycopg.Connection[Any], e: psycopg.OperationalError) -> bool:
    """Whether ``e`` says ``conn`` is dead (then it is closed, so the pool drops it)."""
    gone = conn.broken or isinstance(e, _SESSION_GONE) or e.sqlstate is None
    if gone and not conn.closed:
        conn.close()
    return gone and not isinstance(e, _RETRYABLE)


def ts(when: datetime) -> float:
    """What the tables hold for a time: epoch seconds (double precision), as SQLite does."""
    return when.timestamp()


def sorted_json(value: Any) -> Json:
    """A document for a ``json`` column, its keys sorted (one text for equal documents)."""
    return Json(value, dumps=lambda v: json.dumps(v, sort_keys=True))


def dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def key32(*parts: str) -> int:
    """A stable signed 32-bit advisory-lock key of ``parts`` (the same in every process)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def key64(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key of ``parts``."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Bound(threading.local):
    conn: Conn | None = None


class Connection:
    """A pool of connections to one PostgreSQL database, shared by a process's threads."""

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 10.0) -> None:
        self.url = url
        self.label = masked_database_url(url)
        self.timeout = timeout
        self._password = _password_of(url)
        self._bound = _Bound()
        self._reader = LoopReader(url, timeout=timeout)  # the API's GET of one sandbox
        # Migrate on a connection of our own first: it fails with libpq's reason (the pool
        # would only time out), and the migration lock is a session lock.
        first = self._guard(self._direct)
        try:
            self.migrated_from, _ = self._guard(
                lambda: migrate(first, f"the PostgreSQL store {self.label}"))
        finally:
            first.close()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url, min_size=1, max_size=max(1, pool_size), timeout=timeout, num_workers=2,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, round(timeout))},
            open=False, name="sandboxer")
        try:
            self._guard(lambda: self._pool.open(wait=True, timeout=timeout))
        except BaseException:
            self._pool.close()
            raise
        # A store dropped without close() must not leave its pool's threads and connections
        # behind (the pool's threads keep the pool alive, not the store).
        weakref.finalize(self, self._pool.close)

    # -- plumbing ---------------------------------------------------------------------

    def _direct(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection of its own (migrations, leadership), outside the pool."""
        try:
            return psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=max(1, round(self.timeout)), **kwargs)
        except psycopg.ProgrammingError as e:
            # libpq's text of a malformed URL may repeat all of it, password and all.
            detail = self._scrub(str(e).strip().splitlines()[0] if str(e).strip() else "")
            if self.url.partition("://")[2] in str(e):
                detail = "it does not parse"
            raise InvalidInput(
                f"SANDBOXER_DATABASE_URL is not a connection URL libpq accepts: {detail}",
                hint="fix SANDBOXER_DATABASE_URL (postgresql://USER:PASSWORD@HOST:PORT/DB, "
                "special characters percent-encoded)") from None

    def close(self) -> None:
        self._reader.close()
        self._pool.close()

    def schema_version(self) -> int:
        row = self._one("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        return int(row["v"]) if row else 0

    def _scrub(self, text: str) -> str:
        text = text.replace(self.url, self.label)
        return text.replace(self._password, "***") if self._password else text

    def _unavailable(self, e: BaseException) -> StoreUnavailable:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = self._scrub(detail)
        return StoreUnavailable(
            f"the PostgreSQL store {self.label} is unavailable: {detail}",
            hint="check that the server is up and reachable from here and that "
            "SANDBOXER_DATABASE_URL names the right host, database, user and password; "
            "SANDBOXER_DB_TIMEOUT sets how long to wait")

    def _guard(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the driver's connection errors turned into StoreUnavailable."""
        try:
            return fn()
        except (psycopg.OperationalError, PoolTimeout) as e:
            if isinstance(e, _RETRYABLE):
                raise
            raise self._unavailable(e) from None  # the driver's text may repeat the URL

    @contextmanager
    def _pooled(self) -> Iterator[Conn]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as e:
            raise self._unavailable(e) from None

    def _run(self, fn: Callable[[Conn], T], *, write: bool) -> T:
        """``fn`` on this thread's bound connection (a savepoint when ``write``), else on a
        pooled one in a transaction of its own (when ``write``), retried while that is
        safe: the transaction lost a serialization race or a deadlock, or the connection
        was found broken before anything was sent (a server restart leaves stale
        connections in the pool)."""
        bound = self._bound.conn
        if bound is not None:
            try:
                if not write:
                    return self._guard(lambda: fn(bound))
                with bound.transaction():
                    return self._guard(lambda: fn(bound))
            except _RETRYABLE as e:
                raise self._contended(e) from e
        deadline = time.monotonic() + self.timeout
        delay, broken = 0.005, 0
        while True:
            try:
                with self._pooled() as conn:
                    return self._once(conn, fn, write)
            except _Stale as e:
                broken += 1
                if broken > self._pool.max_size:  # every pooled connection was stale
                    raise self._unavailable(e.__cause__ or e) from None
            except _RETRYABLE as e:
                if time.monotonic() > deadline:
                    raise self._contended(e) from e
                time.sleep(delay * (1 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 0.2)
            except psycopg.OperationalError as e:
                raise self._unavailable(e) from None

    @staticmethod
    def _once(conn: Conn, fn: Callable[[Conn], T], write: bool) -> T:
        if not write:
            try:
                return fn(conn)
            except psycopg.OperationalError as e:
                if _stale(conn, e):
                    raise _Stale from e  # a read is safe to repeat on a fresh connection
                raise
        try:
            conn.execute("BEGIN")
        except psycopg.OperationalError as e:
            if _stale(conn, e):
                raise _Stale from e  # nothing was written yet
            raise
        try:
            out = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return out

    def _contended(self, e: BaseException) -> StoreBusy:
        return StoreBusy(
            f"the PostgreSQL store {self.label} aborted this write: it lost a race with "
            f"another writer ({type(e).__name__})",
            hint="retry the command; many writers on one target or sandbox contend")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        bound = self._bound.conn
        if bound is not None:
            try:
                with bound.transaction():
                    yield
            except _RETRYABLE as e:
                raise self._contended(e) from e
            return
        attempts = self._pool.max_size + 1
        for attempt in range(attempts):
            with self._pooled() as conn:
                try:
                    conn.execute("BEGIN")
                except psycopg.OperationalError as e:
                    if _stale(conn, e) and attempt < attempts - 1:
                        continue  # a stale connection of the pool: take another
                    raise self._unavailable(e) from None
                self._bound.conn = conn
                try:
                    yield
                except BaseException as e:
                    _rollback(conn)
                    if isinstance(e, _RETRYABLE):
                        raise self._contended(e) from e
                    raise
                else:
                    self._commit(conn)
                finally:
                    self._bound.conn = None
                return

    def _commit(self, conn: Conn) -> None:
        try:
            conn.execute("COMMIT")
        except _RETRYABLE as e:
            raise self._contended(e) from e
        except psycopg.OperationalError as e:
            raise self._unavailable(e) from None

    def _one(self, sql: str, args: Iterable[Any] = ()) -> dict[str, Any] | None:
        return self._run(lambda c: c.execute(sql, tuple(args)).fetchone(),
                         write=False)

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return self._run(lambda c: c.execute(sql, tuple(args)).fetchall(),
                         write=False)


def _rollback(conn: Conn) -> None:
    """End the failed transaction so the connection goes back to the pool clean; a dead
    connection is closed instead (the pool then drops it)."""
    if conn.broken or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()


class _Stale(Exception):
    """A pooled connection was broken before the write began: take another one."""


def _password_of(url: str) -> str | None:
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        found = parse_qs(parts.query).get("password")
    except ValueError:
        return None
    return found[0] if found else None
