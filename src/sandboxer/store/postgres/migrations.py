"""Versioned schema migrations of the PostgreSQL store, equal in meaning to SQLite's
(store/migrations.py): version N is the same tables and columns on both backends.

``schema_migrations`` records each version applied. Opening a store migrates it under a
session advisory lock (``pg_advisory_lock``), so replicas that start together never migrate
at once: the first applies what is missing, each migration in a transaction of its own
(PostgreSQL's DDL is transactional), the others wait and then find nothing to do. A
database migrated by a newer sand-boxer is refused (``StoreSchemaTooNew``).

Types: times are epoch seconds in ``double precision`` (as SQLite's REAL, so every time
round-trips exactly); documents (handle, reachability, event payloads, target configs) are
``json``, which keeps the text as written — a document round-trips exactly, ``\\u0000``
included, which ``jsonb`` refuses; labels are ``jsonb``, matched with ``@>`` on an index.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from psycopg.rows import tuple_row

from sandboxer.store.migrations import refuse_newer

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE sandboxes (
            id           TEXT PRIMARY KEY,
            name         TEXT,
            profile      TEXT NOT NULL,
            extension    TEXT NOT NULL,
            target       TEXT,
            state        TEXT NOT NULL,
            reason       TEXT,
            actor        TEXT,
            labels       JSONB NOT NULL DEFAULT '{}',
            created_at   DOUBLE PRECISION NOT NULL,
            expires_at   DOUBLE PRECISION NOT NULL,
            max_expires_at DOUBLE PRECISION NOT NULL,
            updated_at   DOUBLE PRECISION NOT NULL,
            handle       JSON,
            reachability JSON,
            error        TEXT,
            version      INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX sandboxes_state_expires ON sandboxes (state, expires_at);
        CREATE INDEX sandboxes_expires ON sandboxes (expires_at);
        CREATE INDEX sandboxes_profile ON sandboxes (profile);
        CREATE INDEX sandboxes_actor ON sandboxes (actor);
        CREATE INDEX sandboxes_labels ON sandboxes USING gin (labels jsonb_path_ops);
        CREATE TABLE events (
            seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id           TEXT NOT NULL UNIQUE,
            sandbox_id   TEXT NOT NULL,
            type         TEXT NOT NULL,
            time         DOUBLE PRECISION NOT NULL,
            payload      JSON NOT NULL,
            delivered_at DOUBLE PRECISION
        );
        CREATE INDEX events_sandbox ON events (sandbox_id, seq);
        CREATE INDEX events_undelivered ON events (seq) WHERE delivered_at IS NULL
        """,
    ),
    (
        2,
        """
        CREATE TABLE targets (
            name          TEXT PRIMARY KEY,
            extension     TEXT NOT NULL,
            url           TEXT NOT NULL,
            identity_file TEXT,
            public_host   TEXT,
            capacity      INTEGER,
            kind          TEXT NOT NULL DEFAULT 'self-hosted',
            host_keys     TEXT,
            allow         TEXT NOT NULL DEFAULT '[]',
            created_at    DOUBLE PRECISION NOT NULL
        );
        ALTER TABLE sandboxes ADD COLUMN creator TEXT;
        CREATE INDEX sandboxes_target ON sandboxes (target, state)
        """,
    ),
    # 3: State Hub delivery state on the outbox and API bearer tokens (sha256 hashes only).
    (
        3,
        """
        ALTER TABLE events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE events ADD COLUMN next_attempt_at DOUBLE PRECISION;
        ALTER TABLE events ADD COLUMN last_error TEXT;
        CREATE INDEX events_time ON events (time);
        CREATE TABLE tokens (
            id           TEXT PRIMARY KEY,
            hash         TEXT NOT NULL UNIQUE,
            actor        TEXT NOT NULL,
            admin        BOOLEAN NOT NULL DEFAULT false,
            created_at   DOUBLE PRECISION NOT NULL,
            last_used_at DOUBLE PRECISION
        )
        """,
    ),
    # 4: a target is its name, its extension and that extension's own config document.
    (
        4,
        """
        CREATE TABLE targets_v4 (
            name       TEXT PRIMARY KEY,
            extension  TEXT NOT NULL,
            config     JSON NOT NULL DEFAULT '{}',
            created_at DOUBLE PRECISION NOT NULL
        );
        INSERT INTO targets_v4 (name, extension, config, created_at)
            SELECT name, extension, json_build_object(
                'url', url, 'identity_file', identity_file, 'public_host', public_host,
                'capacity', capacity, 'kind', kind,
                'host_keys', COALESCE(host_keys, '[]')::json,
                'allow', COALESCE(allow, '[]')::json), created_at
            FROM targets;
        DROP TABLE targets;
        ALTER TABLE targets_v4 RENAME TO targets;
        ALTER INDEX targets_v4_pkey RENAME TO targets_pkey;
        CREATE INDEX targets_extension ON targets (extension, name)
        """,
    ),
    # 5: when idle handling last saw a sandbox active; its profile's ttl.retain (seconds).
    (
        5,
        """
        ALTER TABLE sandboxes ADD COLUMN last_active_at DOUBLE PRECISION;
        ALTER TABLE sandboxes ADD COLUMN retain DOUBLE PRECISION
        """,
    ),
]
# 6: warm pools, as store/migrations.py's 6.
MIGRATIONS.append(
    (
        6,
        """
        ALTER TABLE sandboxes ADD COLUMN pool TEXT;
        CREATE INDEX sandboxes_pool ON sandboxes (pool, state, created_at)
        """,
    )
)
# 7: snapshots, as store/migrations.py's 7 (``artifact`` is json, like ``handle``).
MIGRATIONS.append(
    (
        7,
        """
        CREATE TABLE snapshots (
            id           TEXT PRIMARY KEY,
            name         TEXT,
            sandbox_id   TEXT NOT NULL,
            profile      TEXT NOT NULL,
            extension    TEXT NOT NULL,
            target       TEXT,
            state        TEXT NOT NULL,
            reason       TEXT,
            actor        TEXT,
            created_at   DOUBLE PRECISION NOT NULL,
            expires_at   DOUBLE PRECISION NOT NULL,
            updated_at   DOUBLE PRECISION NOT NULL,
            artifact     JSON,
            size_bytes   BIGINT,
            content_hash TEXT,
            error        TEXT,
            version      INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX snapshots_state_expires ON snapshots (state, expires_at);
        CREATE INDEX snapshots_actor ON snapshots (actor, created_at);
        CREATE INDEX snapshots_sandbox ON snapshots (sandbox_id);
        ALTER TABLE sandboxes ADD COLUMN snapshot TEXT
        """,
    )
)
MIGRATIONS.sort()
LATEST = MIGRATIONS[-1][0]

# The session advisory lock every migrating process takes (one bigint key of its own).
MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"sandboxer\0migrate").digest()[:8], "big",
                                signed=True)


def _current(cur: Any) -> int:
    if cur.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
        return 0
    return int(cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
               .fetchone()[0])


def migrate(conn: Any, where: str = "the PostgreSQL store") -> tuple[int, int]:
    """Bring the database of ``conn`` (an autocommit connection, left open and unlocked)
    to ``LATEST``; returns (the version found, the version now)."""
    cur = conn.cursor(row_factory=tuple_row)
    found = _current(cur)
    refuse_newer(found, LATEST, where)
    if found == LATEST:
        return found, found
    cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        found = _current(cur)  # another process may have migrated while we waited
        refuse_newer(found, LATEST, where)
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        for version, script in MIGRATIONS:
            if version <= found:
                continue
            with conn.transaction():
                for stmt in script.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute("INSERT INTO schema_migrations (version, applied_at) "
                            "VALUES (%s, %s)", (version, time.time()))
    finally:
        if not conn.broken:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return found, LATEST
