"""Versioned migrations on both backends: the same versions and tables, applied once under a
lock however many processes open a fresh database together, a newer database refused, and
`sandboxer db migrate` saying what it did."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config import Settings
from sandboxer.store import migrate, open_store
from sandboxer.store import migrations as sqlite_migrations
from sandboxer.store.postgres import migrations as pg_migrations


def _settings(home: Path, url: str) -> Settings:
    return Settings.from_env({**os.environ, "SANDBOXER_HOME": str(home),
                              "SANDBOXER_DATABASE_URL": url})


def test_both_backends_have_the_same_versions() -> None:
    assert [v for v, _ in pg_migrations.MIGRATIONS] == [
        v for v, _ in sqlite_migrations.MIGRATIONS]
    assert pg_migrations.LATEST == sqlite_migrations.LATEST


def test_both_backends_have_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    import psycopg

    db = tmp_path / "s.db"
    open_store(_settings(tmp_path, f"sqlite://{db}")).close()
    open_store(_settings(tmp_path, pg_url)).close()
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        lite = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                            "WHERE table_schema = 'public'").fetchall()
    pg: dict[str, set[str]] = {}
    for table, column in rows:
        pg.setdefault(table, set()).add(column)
    assert pg.pop("schema_migrations") == {"version", "applied_at"}
    assert pg == lite


def _open(url: str, home: str, start: Any, out: Any) -> None:
    start.wait()
    try:
        store = open_store(_settings(Path(home), url))
        out.put((store.migrated_from, store.schema_version()))
        store.close()
    except Exception as e:  # reported to the test, which fails on it
        out.put(repr(e))


def _open_together(url: str, home: Path, n: int = 4) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, str(home), start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    return got


def test_replicas_opening_a_fresh_postgres_database_together_migrate_it_once(
        tmp_path: Path, pg_url: str) -> None:
    import psycopg

    got = _open_together(pg_url, tmp_path)
    latest = pg_migrations.LATEST
    assert all(g[1] == latest for g in got), got
    assert sorted(g[0] for g in got) == [0] + [latest] * (len(got) - 1)  # one migrated
    with psycopg.connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _ in pg_migrations.MIGRATIONS]


def test_processes_opening_a_fresh_sqlite_database_together_migrate_it_once(
        tmp_path: Path) -> None:
    got = _open_together(f"sqlite://{tmp_path / 'fresh.db'}", tmp_path)
    latest = sqlite_migrations.LATEST
    assert all(g[1] == latest for g in got), got
    assert sorted(g[0] for g in got) == [0] + [latest] * (len(got) - 1)


def _pg_at(conn: Any, version: int) -> None:
    """Bring an empty PostgreSQL database to schema ``version`` exactly, as an older
    sand-boxer left it."""
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                 "applied_at DOUBLE PRECISION NOT NULL)")
    for number, script in pg_migrations.MIGRATIONS[:version]:
        for stmt in script.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (number,))


def test_postgres_migration_4_moves_target_columns_into_the_config_document(
        tmp_path: Path, pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        _pg_at(conn, 3)
        conn.execute("INSERT INTO targets (name, extension, url, capacity, host_keys, allow, "
                     "created_at) VALUES ('h1', 'ext.compose-ssh', 'ssh://u@h', 3, "
                     "'[\"ssh-ed25519 AAAA\"]', '[\"devices\"]', 1e9)")
    store = open_store(_settings(tmp_path, pg_url))
    assert (store.migrated_from, store.schema_version()) == (3, pg_migrations.LATEST)
    got = store.get_target("h1")
    assert got is not None
    assert got.config == {"url": "ssh://u@h", "identity_file": None, "public_host": None,
                          "capacity": 3, "kind": "self-hosted",
                          "host_keys": ["ssh-ed25519 AAAA"], "allow": ["devices"]}
    assert got.created_at is not None
    assert got.created_at.timestamp() == 1e9
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_db_migrate_says_what_it_did(tmp_path: Path, request: pytest.FixtureRequest,
                                     backend: str) -> None:
    url = (f"sqlite://{tmp_path / 'm.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    first = migrate(_settings(tmp_path / "home", url))
    assert first == {"schema": "sandboxer.migrate/v1",
                     "backend": "sqlite" if backend == "sqlite" else "postgresql",
                     "database": first["database"], "from": 0,
                     "to": sqlite_migrations.LATEST}
    assert "@" not in first["database"] or ":***@" in first["database"]
    env = {**os.environ, "SANDBOXER_HOME": str(tmp_path / "home"),
           "SANDBOXER_DATABASE_URL": url}
    run = subprocess.run([sys.executable, "-m", "sandboxer.cli.main", "db", "migrate",
                          "--json"], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stderr
    again = json.loads(run.stdout)
    assert (again["from"], again["to"]) == (sqlite_migrations.LATEST,) * 2
    text = subprocess.run([sys.executable, "-m", "sandboxer.cli.main", "db", "migrate"],
                          env=env, capture_output=True, text=True, timeout=60, check=True)
    assert f"already at schema {sqlite_migrations.LATEST}" in text.stdout
    if backend == "postgres":
        from urllib.parse import urlsplit

        password = urlsplit(url).password
        assert password
        assert password not in run.stdout + run.stderr + text.stdout + text.stderr


_V4_SANDBOX = ("INSERT INTO sandboxes (id, profile, extension, target, state, labels, "
               "created_at, expires_at, max_expires_at, updated_at) VALUES ('sbx-aaaaaaaaaa', "
               "'profile.x', 'ext.fake', 't', 'ready', '{}', 1e9, 2e9, 2e9, 1e9)")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migration_5_keeps_sandboxes_with_no_activity_seen_and_no_retain(
        tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    if backend == "sqlite":
        url = f"sqlite://{tmp_path / 'v4.db'}"
        conn = sqlite3.connect(tmp_path / "v4.db")
        for _version, script in sqlite_migrations.MIGRATIONS[:4]:
            conn.executescript(script)
        conn.execute(_V4_SANDBOX)
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
        conn.close()
    else:
        import psycopg

        url = request.getfixturevalue("pg_url")
        with psycopg.connect(url, autocommit=True) as pg:
            _pg_at(pg, 4)
            pg.execute(_V4_SANDBOX)  # type: ignore[arg-type]  # a constant
    store = open_store(_settings(tmp_path / "home", url))
    try:
        assert store.migrated_from == 4
        assert store.schema_version() >= 5
        rec = store.get_record("sbx-aaaaaaaaaa")
        assert rec is not None
        assert (rec.status.last_active_at, rec.retain) == (None, None)
        doc = store.get_document("sbx-aaaaaaaaaa")
        assert doc is not None
        assert doc["last_active_at"] is None
    finally:
        store.close()
