"""Versioned schema migrations of the SQLite store (``PRAGMA user_version`` records the
version applied), and the rule both backends keep: a database newer than the code is
refused. store/postgres/migrations.py holds the same versions for PostgreSQL; a new
migration is added to both lists with the same number.
"""

from __future__ import annotations

from sandboxer.errors import StoreSchemaTooNew


def refuse_newer(found: int, latest: int, where: str) -> None:
    """``StoreSchemaTooNew`` when a newer sand-boxer migrated the database past ``latest``."""
    if found > latest:
        raise StoreSchemaTooNew(
            f"{where} has schema version {found}, newer than this sand-boxer knows "
            f"(up to {latest}): a newer version migrated it",
            hint="upgrade sand-boxer on this machine to the version the other replicas run; "
            "nothing was changed")


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
            labels       TEXT NOT NULL DEFAULT '{}',
            created_at   REAL NOT NULL,
            expires_at   REAL NOT NULL,
            max_expires_at REAL NOT NULL,
            updated_at   REAL NOT NULL,
            handle       TEXT,
            reachability TEXT,
            error        TEXT,
            version      INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX sandboxes_state_expires ON sandboxes (state, expires_at);
        CREATE INDEX sandboxes_expires ON sandboxes (expires_at);
        CREATE INDEX sandboxes_profile ON sandboxes (profile);
        CREATE INDEX sandboxes_actor ON sandboxes (actor);
        CREATE TABLE events (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,
            id           TEXT NOT NULL UNIQUE,
            sandbox_id   TEXT NOT NULL,
            type         TEXT NOT NULL,
            time         REAL NOT NULL,
            payload      TEXT NOT NULL,
            delivered_at REAL
        );
        CREATE INDEX events_sandbox ON events (sandbox_id, seq);
        CREATE INDEX events_undelivered ON events (delivered_at, seq);
        """,
    ),
]

MIGRATIONS.append(
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
            created_at    REAL NOT NULL
        );
        ALTER TABLE sandboxes ADD COLUMN creator TEXT;
        CREATE INDEX sandboxes_target ON sandboxes (target, state)
        """,
    )
)
# 3: State Hub delivery state on the outbox (issue 8) and API bearer tokens, stored only as
# sha256 hashes mapped to an actor.
MIGRATIONS.append(
    (
        3,
        """
        ALTER TABLE events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE events ADD COLUMN next_attempt_at REAL;
        ALTER TABLE events ADD COLUMN last_error TEXT;
        CREATE INDEX events_time ON events (time);
        CREATE TABLE tokens (
            id           TEXT PRIMARY KEY,
            hash         TEXT NOT NULL UNIQUE,
            actor        TEXT NOT NULL,
            admin        INTEGER NOT NULL DEFAULT 0,
            created_at   REAL NOT NULL,
            last_used_at REAL
        )
        """,
    )
)
# 4: a target is its name, its extension and that extension's own config document; the
# compose-shaped columns of version 2 move into the document unchanged.
MIGRATIONS.append(
    (
        4,
        """
        CREATE TABLE targets_v4 (
            name       TEXT PRIMARY KEY,
            extension  TEXT NOT NULL,
            config     TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        INSERT INTO targets_v4 (name, extension, config, created_at)
            SELECT name, extension, json_object(
                'url', url, 'identity_file', identity_file, 'public_host', public_host,
                'capacity', capacity, 'kind', kind,
                'host_keys', json(COALESCE(host_keys, '[]')),
                'allow', json(COALESCE(allow, '[]'))), created_at
            FROM targets;
        DROP TABLE targets;
        ALTER TABLE targets_v4 RENAME TO targets;
        CREATE INDEX targets_extension ON targets (extension, name)
        """,
    )
)
# 5: when idle handling last saw a sandbox active (sandboxer.idling), and the ``ttl.retain``
# of its profile at creation, in seconds (NULL: destroyed when its lease ends), which the
# reaper reads without loading the catalog (sandboxer.reaping).
MIGRATIONS.append(
    (
        5,
        """
        ALTER TABLE sandboxes ADD COLUMN last_active_at REAL;
        ALTER TABLE sandboxes ADD COLUMN retain REAL
        """,
    )
)
# 6: warm pools (issue 16): ``pool`` names the profile of a sandbox provisioned ahead and
# not claimed yet; a claim sets it to NULL (5 is the last activity, added beside it).
MIGRATIONS.append(
    (
        6,
        """
        ALTER TABLE sandboxes ADD COLUMN pool TEXT;
        CREATE INDEX sandboxes_pool ON sandboxes (pool, state, created_at)
        """,
    )
)
# 7: snapshots (issue 17). ``artifact`` is the extension's SnapshotArtifact document (never
# a secret); ``sandboxes.snapshot`` names the snapshot a sandbox was created from.
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
            created_at   REAL NOT NULL,
            expires_at   REAL NOT NULL,
            updated_at   REAL NOT NULL,
            artifact     TEXT,
            size_bytes   INTEGER,
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
