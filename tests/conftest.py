"""Shared fixtures: an isolated SANDBOXER_HOME per test, the test-only extension, a real
PostgreSQL server with a fresh database per test (tests/pg_support.py), and ``database``:
a suite that requests it runs each of its tests on both store backends."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import pg_support
from tests.pg_support import Database

from sandboxer import redaction
from sandboxer.config import Settings

# The local service each test home's CLI calls start (service/local.py) ends this soon
# after its last request, instead of five minutes: the suite makes hundreds of homes
# (environments built from scratch keep it: tests/support_env.py).
os.environ.setdefault("SANDBOXER_SERVICE_IDLE_EXIT", "5")

FAKE_EXT = Path(__file__).parent / "fixtures" / "fake_ext"
# The test-only extension is found through the entry-point group, like any plugin.
sys.path.insert(0, str(FAKE_EXT))

FAKE_PROFILE = """\
id: profile.fake
description: test double
extension: ext.fake
ttl: {default: 1h, max: 2h}
labels: {tier: test}
spec: {}
"""


@pytest.fixture(autouse=True)
def _forget_secret_values() -> Iterator[None]:
    """Values one test resolved must not mask another test's text (process-wide net)."""
    yield
    redaction.forget_all()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("SANDBOXER_HOME", str(h))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return h


@pytest.fixture
def profiles_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "fake.yaml").write_text(FAKE_PROFILE)
    monkeypatch.setenv("SANDBOXER_PROFILES", str(d))
    return d


@pytest.fixture
def settings(home: Path, profiles_dir: Path) -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg_support.PgServer]:
    """One PostgreSQL server for the session (the CI's, or a private one)."""
    why = pg_support.available()
    if why is not None:
        pytest.skip(why)
    with pg_support.server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: pg_support.PgServer) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    with pg_server.database() as url:
        yield url


BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Database:
    """Each test that asks runs twice: on SQLite in its home, and on a fresh PostgreSQL
    database; SANDBOXER_DATABASE_URL is set (or unset) for the test's process. Suites ask
    for it through their ``settings`` fixture (tests/unit/test_manager.py, tests/unit/api)
    or ``pytest.mark.usefixtures`` (tests/integration/api)."""
    if request.param == "sqlite":
        monkeypatch.delenv("SANDBOXER_DATABASE_URL", raising=False)
        return Database("sqlite", None)
    url: str = request.getfixturevalue("pg_url")
    monkeypatch.setenv("SANDBOXER_DATABASE_URL", url)
    return Database("postgres", url)


@pytest.fixture(scope="module", params=BACKENDS)
def module_database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """``database`` for a module-scoped server: the environment is left alone (pass
    ``env()`` on); the PostgreSQL database lives as long as the module's tests."""
    if request.param == "sqlite":
        yield Database("sqlite", None)
        return
    server: pg_support.PgServer = request.getfixturevalue("pg_server")
    with server.database() as url:
        yield Database("postgres", url)
