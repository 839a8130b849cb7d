"""The connection under every part of the SQLite store: WAL, migrations, write
transactions (savepoints when nested), bounded retries while another process holds the lock.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxer.errors import StoreBusy
from sandboxer.store.migrations import LATEST, MIGRATIONS, refuse_newer
from sandboxer.values import LIVE_STATES

LIVE = "state IN (" + ", ".join(f"'{s}'" for s in LIVE_STATES) + ")"


def ts(when: datetime) -> float:
    """What the tables hold for a time: epoch seconds."""
    return when.timestamp()


def dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class Connection:
    """One SQLite connection, shared by the threads of a process under one lock."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()  # one transaction at a time on the one connection
        self._depth = 0  # open transaction blocks; beyond the first, savepoints
        self.migrated_from = LATEST  # the schema version found on open (before migrating)
        try:
            self._retry(self._setup)
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def _retry(self, fn: Any, *args: Any) -> Any:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"the state store {self.path} stayed locked for "
                        f"{self.busy_timeout:.0f}s",
                        hint="another sandboxer process holds it; retry, or check for a "
                        "hung process with `fuser` on that file",
                    ) from e
                time.sleep(delay * (1 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 0.2)

    def _setup(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # WAL + NORMAL: commits stay atomic and the file consistent; only the last
        # transactions before a power cut may be lost (they are replayed by reconcile).
        c.execute("PRAGMA synchronous = NORMAL")
        found = c.execute("PRAGMA user_version").fetchone()[0]
        refuse_newer(found, LATEST, f"the state store {self.path}")
        self.migrated_from = found
        if found == LATEST:
            return
        if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            c.execute("PRAGMA journal_mode = WAL")
        c.execute("BEGIN IMMEDIATE")
        try:
            current = c.execute("PRAGMA user_version").fetchone()[0]
            refuse_newer(current, LATEST, f"the state store {self.path}")
            self.migrated_from = current  # another process may have migrated meanwhile
            for version, script in MIGRATIONS:
                if version <= current:
                    continue
                for stmt in script.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {version}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, or a savepoint inside the one already open."""
        with self._lock:
            c = self._conn
            if self._depth:
                name = f"sp{self._depth}"
                c.execute(f"SAVEPOINT {name}")
                self._depth += 1
                try:
                    yield c
                except BaseException:
                    c.execute(f"ROLLBACK TO {name}")
                    c.execute(f"RELEASE {name}")
                    raise
                finally:
                    self._depth -= 1
                c.execute(f"RELEASE {name}")
                return
            self._retry(c.execute, "BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield c
                self._retry(c.execute, "COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._write():
            yield

    def _one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, tuple(args)).fetchone()
            return row

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def _all_tuples(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """``_all`` as plain tuples, for reads of many rows (no sqlite3.Row to build)."""
        with self._lock:
            cur = self._conn.cursor()
            cur.row_factory = None
            try:
                rows: list[tuple[Any, ...]] = cur.execute(sql, tuple(args)).fetchall()
                return rows
            finally:
                cur.close()

    def schema_version(self) -> int:
        row = self._one("PRAGMA user_version")
        return int(row[0]) if row else 0
