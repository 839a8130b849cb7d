"""A real uvicorn API server over the test-only ext.fake, with three actors' tokens; every
test that uses ``settings`` runs on both store backends (the ``database`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.api_support import ApiServer, add_token
from tests.pg_support import Database

from sandboxer.config import Settings


@dataclass
class Api:
    url: str
    alice: str
    bob: str
    root: str
    settings: Settings

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(database: Database, home: object, profiles_dir: object) -> Settings:
    return Settings.from_env()


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    tokens = {name: add_token(settings, name, admin=name == "root")
              for name in ("alice", "bob", "root")}
    with ApiServer(settings) as server:
        yield Api(url=server.url, settings=settings, **tokens)
