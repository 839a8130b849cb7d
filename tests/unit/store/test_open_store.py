"""open_store picks the backend from SANDBOXER_DATABASE_URL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput
from sandboxer.store import open_store
from sandboxer.store.sqlite import SqliteStore


def _settings(home: Path, url: str | None) -> Settings:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOXER_DATABASE_URL"}
    env["SANDBOXER_HOME"] = str(home)
    if url is not None:
        env["SANDBOXER_DATABASE_URL"] = url
    return Settings.from_env(env)


@pytest.mark.parametrize("url", [None, "", "  "])
def test_unset_is_sqlite_in_the_home(tmp_path: Path, url: str | None) -> None:
    settings = _settings(tmp_path / "home", url)
    store = open_store(settings)
    assert isinstance(store, SqliteStore)
    assert store.path == settings.db_path
    store.close()


def test_a_sqlite_url_names_the_file(tmp_path: Path) -> None:
    db = tmp_path / "else where" / "s.db"
    store = open_store(_settings(tmp_path / "home",
                                 f"sqlite://{tmp_path}/else%20where/s.db"))
    assert isinstance(store, SqliteStore)
    assert store.path == db
    assert db.is_file()
    assert not (tmp_path / "home" / "state.db").exists()
    store.close()


@pytest.mark.parametrize("url", [
    "postgresql://admin:hunter2@db.example:5432/sandboxer",
    "postgres://admin:hunter2@db.example/sandboxer",
    "PostgreSQL://admin:hunter2@db.example/sandboxer",
])
def test_postgres_is_not_in_this_version_and_the_password_is_never_shown(
        tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInput) as e:
        _settings(tmp_path / "home", url)  # settings are checked when they are read
    text = e.value.render()
    assert "SANDBOXER_DATABASE_URL" in text
    assert "PostgreSQL backend is not in this version" in text
    assert "hunter2" not in text
    assert "admin" not in text
    assert e.value.exit_code == 4


@pytest.mark.parametrize("url", [
    "mysql://root:hunter2@db/x", "hunter2", "sqlite:relative.db", "sqlite://relative.db",
    "sqlite://user:hunter2@host/x.db", "sqlite:///x.db?mode=ro", "sqlite:///x.db#f",
    "sqlite:///%00x",
])
def test_anything_else_names_the_accepted_schemes(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInput) as e:
        _settings(tmp_path / "home", url)
    text = e.value.render()
    assert "SANDBOXER_DATABASE_URL" in text
    assert "sqlite:///ABSOLUTE/PATH" in text
    assert "hunter2" not in text
    if url.startswith("mysql"):
        assert "'mysql'" in text
        assert "postgresql" in text
