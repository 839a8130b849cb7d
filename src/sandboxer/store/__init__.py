"""State store: the ``Store`` contract (store/base.py) and its backends — SQLite, embedded,
the default (store/sqlite/); PostgreSQL, for a shared control plane (store/postgres/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer import envvars
from sandboxer.config import Settings

if TYPE_CHECKING:
    from sandboxer.store.base import Store


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store ``SANDBOXER_DATABASE_URL`` names: unset, the SQLite file
    ``settings.db_path``; ``sqlite:///ABSOLUTE/PATH``, that SQLite file;
    ``postgresql://…`` (or ``postgres://…``), that PostgreSQL database."""
    chosen = envvars.database_url(settings.env)
    if chosen is not None and chosen[0] == "postgresql":
        from sandboxer.store.postgres import PostgresStore  # its driver only when chosen

        return PostgresStore(chosen[1], pool_size=envvars.db_pool_size(settings.env),
                             timeout=envvars.db_timeout(settings.env))
    from sandboxer.store.sqlite import SqliteStore

    return SqliteStore(settings.db_path if chosen is None else Path(chosen[1]))


def describe(settings: Settings) -> str:
    """The database the store is in, fit to show: a file, or a URL without its password."""
    return envvars.database_label(settings.env, settings.db_path)


def migrate(settings: Settings) -> dict[str, Any]:
    """Migrate the store ``open_store`` would open; a ``sandboxer.migrate/v1`` document
    (backend, the schema version found, the version now)."""
    chosen = envvars.database_url(settings.env)
    backend = "sqlite" if chosen is None else chosen[0]
    store = open_store(settings)
    try:
        return {"schema": "sandboxer.migrate/v1", "backend": backend,
                "database": describe(settings), "from": store.migrated_from,
                "to": store.schema_version()}
    finally:
        store.close()
