"""State store: SQLite (embedded default) now, PostgreSQL for a shared control plane later."""

from __future__ import annotations

from sandboxer.config import Settings
from sandboxer.store.sqlite import SqliteStore

Store = SqliteStore


def open_store(settings: Settings) -> SqliteStore:
    """Open (and migrate) the store named by ``settings``."""
    return SqliteStore(settings.db_path)
