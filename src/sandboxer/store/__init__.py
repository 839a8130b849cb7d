"""State store: the ``Store`` contract (store/base.py) and its backends — SQLite, embedded,
the default; PostgreSQL, for a shared control plane, comes in a later version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sandboxer import envvars
from sandboxer.config import Settings

if TYPE_CHECKING:
    from sandboxer.store.base import Store


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store ``SANDBOXER_DATABASE_URL`` names: unset, the SQLite file
    ``settings.db_path``; ``sqlite:///ABSOLUTE/PATH``, that SQLite file."""
    from sandboxer.store.sqlite import SqliteStore

    chosen = envvars.database_url(settings.env)
    return SqliteStore(settings.db_path if chosen is None else Path(chosen[1]))
