"""open_store picks the backend from SANDBOXER_DATABASE_URL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, StoreSchemaTooNew, StoreUnavailable
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


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_a_postgres_url_opens_the_postgres_store(tmp_path: Path, pg_url: str,
                                                 scheme: str) -> None:
    from sandboxer.store.postgres import PostgresStore
    from sandboxer.store.postgres.migrations import LATEST

    url = scheme + pg_url[pg_url.index("://"):]
    store = open_store(_settings(tmp_path / "home", url))
    assert isinstance(store, PostgresStore)
    assert (store.migrated_from, store.schema_version()) == (0, LATEST)
    store.close()
    assert not (tmp_path / "home" / "state.db").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when we return: nothing listens


def test_an_unreachable_server_is_store_unavailable_without_the_password(
        tmp_path: Path) -> None:
    url = f"postgresql://admin:hunter2@127.0.0.1:{_closed_port()}/sandboxer"
    env = {**os.environ, "SANDBOXER_HOME": str(tmp_path / "home"),
           "SANDBOXER_DATABASE_URL": url, "SANDBOXER_DB_TIMEOUT": "2"}
    with pytest.raises(StoreUnavailable) as e:
        open_store(Settings.from_env(env))
    text = e.value.render()
    assert "hunter2" not in text
    assert url not in text
    assert "postgresql://admin:***@127.0.0.1" in text
    assert "unavailable" in text
    assert (e.value.code, e.value.exit_code, e.value.http_status) == (
        "store_unavailable", 1, 503)


def test_a_wrong_password_is_store_unavailable_without_it(tmp_path: Path, pg_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    url = pg_url.replace(f":{parts.password}@", ":wrong-hunter2@")
    with pytest.raises(StoreUnavailable) as e:
        open_store(_settings(tmp_path / "home", url))
    assert "wrong-hunter2" not in e.value.render()
    assert "password authentication failed" in e.value.render()


@pytest.mark.parametrize("tail", ["?nosuchparameter=1", "?sslmode=sometimes"])
def test_a_url_libpq_refuses_is_named_without_the_password(
        tmp_path: Path, tail: str) -> None:
    url = f"postgresql://admin:hunter2@127.0.0.1:{_closed_port()}/sandboxer{tail}"
    with pytest.raises((InvalidInput, StoreUnavailable)) as e:
        open_store(_settings(tmp_path / "home", url))
    assert "hunter2" not in e.value.render()
    assert "SANDBOXER_DATABASE_URL" in e.value.render()


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path, pg_url: str) -> None:
    import sqlite3

    import psycopg

    store = open_store(_settings(tmp_path / "home", pg_url))
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    with pytest.raises(StoreSchemaTooNew, match="schema version 99, newer than"):
        open_store(_settings(tmp_path / "home", pg_url))

    db = tmp_path / "s.db"
    open_store(_settings(tmp_path / "home", f"sqlite://{db}")).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreSchemaTooNew, match="schema version 99, newer than") as e:
        open_store(_settings(tmp_path / "home", f"sqlite://{db}"))
    assert e.value.exit_code == 1


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
        assert "postgresql://" in text


def test_doctor_shows_the_database_without_its_password(tmp_path: Path, pg_url: str) -> None:
    from urllib.parse import urlsplit

    from sandboxer.client.local import LocalClient

    password = urlsplit(pg_url).password
    assert password
    checks = LocalClient(_settings(tmp_path / "home", pg_url)).doctor()
    (store,) = [c for c in checks if c.name == "state store"]
    assert store.ok, store
    assert ":***@127.0.0.1" in store.detail
    assert "(schema " in store.detail
    assert all(password not in f"{c.detail} {c.fix}" for c in checks)
