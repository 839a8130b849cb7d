"""A fork its create would refuse (another actor, a ttl over the max) is refused before
the snapshot: nothing is frozen, copied or left behind for the retention."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.pg_support import Database

from sandboxer.access import Caller
from sandboxer.config import Settings
from sandboxer.errors import SandboxerError
from sandboxer.manager import Manager


@pytest.fixture
def settings(database: Database, home: Path, profiles_dir: Path) -> Settings:
    return Settings.from_env()


@pytest.mark.parametrize("kw", [{"actor": "bob"}, {"ttl": "99h"}])
def test_a_refused_fork_takes_no_snapshot(settings: Settings, kw: dict[str, str]) -> None:
    m = Manager(settings)
    alice = Caller(actor="alice", admin=False)
    s = asyncio.run(m.create("profile.fake", caller=alice))
    with pytest.raises(SandboxerError):
        asyncio.run(m.fork(s.id, caller=alice, **kw))
    assert m.list_snapshots(caller=alice) == [], "the refused fork left a snapshot"
