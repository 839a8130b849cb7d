"""What the PostgreSQL store does beyond the contract: it outlives its server killing its
connections, binds a transaction's connection to its thread, and notices a lost
leadership."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sandboxer.config import Settings
from sandboxer.errors import StoreBusy, StoreUnavailable
from sandboxer.models.target import TargetRecord
from sandboxer.store import open_store
from sandboxer.store.postgres import PostgresStore


@pytest.fixture
def store(pg_url: str, tmp_path: Path) -> Iterator[PostgresStore]:
    opened = open_store(Settings.from_env({**os.environ, "SANDBOXER_HOME": str(tmp_path),
                                           "SANDBOXER_DATABASE_URL": pg_url,
                                           "SANDBOXER_DB_POOL_SIZE": "3"}))
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()


def _kill_sessions(url: str) -> int:
    """Terminate every other session on the database (as a server restart would)."""
    with psycopg.connect(url, autocommit=True) as conn:
        sql = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return len(conn.execute(sql).fetchall())


def test_reads_and_writes_survive_the_server_dropping_every_connection(
        store: PostgresStore, pg_url: str) -> None:
    store.add_target(TargetRecord(name="before", extension="ext.fake"))
    assert _kill_sessions(pg_url) >= 1
    assert [t.name for t in store.list_targets()] == ["before"]  # a read, retried
    _kill_sessions(pg_url)
    store.add_target(TargetRecord(name="after", extension="ext.fake"))  # a write, retried
    _kill_sessions(pg_url)
    with store.transaction():  # a block takes a live connection too
        store.add_target(TargetRecord(name="block", extension="ext.fake"))
    assert [t.name for t in store.list_targets()] == ["after", "before", "block"]


def test_a_transaction_is_bound_to_its_thread(store: PostgresStore) -> None:
    """Inside one thread's block, another thread's calls run on other connections: they
    neither see nor join the uncommitted writes."""
    seen: list[object] = []
    with store.transaction():
        store.add_target(TargetRecord(name="mine", extension="ext.fake"))
        other = threading.Thread(target=lambda: seen.append(store.get_target("mine")))
        other.start()
        other.join(30)
        assert store.get_target("mine") is not None
    assert seen == [None]
    assert store.get_target("mine") is not None


def test_a_deadlock_inside_a_transaction_block_is_store_busy(store: PostgresStore,
                                                             pg_url: str) -> None:
    for name in ("a", "b"):
        store.add_target(TargetRecord(name=name, extension="ext.fake"))
    with psycopg.connect(pg_url) as conn:
        # The other session waits long before it checks for a deadlock, so that ours (1 s,
        # the default) finds it and is the side PostgreSQL aborts.
        conn.execute("SET deadlock_timeout = '30s'")
        conn.execute("UPDATE targets SET created_at = 1 WHERE name = 'a'")  # holds row a
        started = threading.Event()

        def block() -> None:
            with store.transaction():
                store.remove_target("b")  # holds row b
                started.set()
                store.remove_target("a")  # waits for the other session: a cycle

        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _catch(block, errors))
        t.start()
        assert started.wait(30)
        conn.execute("UPDATE targets SET created_at = 2 WHERE name = 'b'")  # waits for us
        conn.commit()
        t.join(30)
    assert [type(e) for e in errors] == [StoreBusy], errors
    assert "lost a race with another writer (DeadlockDetected)" in errors[0].message
    assert [t.name for t in store.list_targets()] == ["a", "b"]  # our block rolled back


def _catch(fn: object, into: list[BaseException]) -> None:
    try:
        fn()  # type: ignore[operator]
    except BaseException as e:
        into.append(e)


def test_held_notices_a_lost_session_within_a_second_or_so(store: PostgresStore,
                                                           pg_url: str) -> None:
    import time

    held = store.try_lead("leader")
    assert held is not None
    assert held.held()
    _kill_sessions(pg_url)
    deadline = time.monotonic() + 10
    while held.held():
        assert time.monotonic() < deadline, "a terminated session still counts as held"
        time.sleep(0.1)
    again = store.try_lead("leader")
    assert again is not None
    again.release()


def test_held_asks_the_server_for_the_lock_and_the_session_drops_a_silent_peer(
        store: PostgresStore, pg_url: str) -> None:
    import psycopg

    held = store.try_lead("leader")
    assert held is not None
    with psycopg.connect(pg_url, autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND granted").fetchone()
        assert row == (1,)  # the role's lock, as pg_locks shows it (what held() asks)
    # The session that holds the role set the server's keepalives for itself, so a holder
    # whose machine vanishes is dropped by the server in seconds, not hours.
    conn = held._conn  # the session's own settings, asked on it
    assert conn is not None
    got = {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
           for name in ("tcp_keepalives_idle", "tcp_keepalives_count", "tcp_user_timeout")}
    assert got == {"tcp_keepalives_idle": ("5",), "tcp_keepalives_count": ("3",),
                   "tcp_user_timeout": ("10000",)}
    # Unlocking behind held()'s back (the session lives on) is noticed at the next check.
    conn.execute("SELECT pg_advisory_unlock_all()")
    held._checked = 0.0  # skip the once-a-second cache
    assert not held.held()


def _stop_fast(url: str) -> None:
    """Fast shutdown (SIGINT) of the server behind ``url``, one this test started: its
    postmaster is the parent of our backend."""
    import signal
    import time

    with psycopg.connect(url) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        # Read while the session lives: its backend exits once the connection closes.
        stat = Path(f"/proc/{pid}/stat").read_text()
    postmaster = int(stat.rsplit(")", 1)[1].split()[1])
    os.kill(postmaster, signal.SIGINT)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{postmaster}").exists() and \
            Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.05)


def test_a_server_that_goes_down_is_store_unavailable_without_the_password(
        tmp_path: Path) -> None:
    from urllib.parse import urlsplit

    from tests import pg_support

    if os.geteuid() != 0 or not (pg_support.PG_BIN / "postgres").exists():
        pytest.skip("stopping a server of its own needs root and the PostgreSQL binaries")
    with pg_support.private_server() as server:
        url = server.create_database()
        opened = open_store(Settings.from_env({
            **os.environ, "SANDBOXER_HOME": str(tmp_path), "SANDBOXER_DATABASE_URL": url,
            "SANDBOXER_DB_TIMEOUT": "1"}))
        opened.add_target(TargetRecord(name="t", extension="ext.fake"))
        _stop_fast(url)
        password = urlsplit(url).password
        assert password
        for call in (lambda: opened.get_target("t"),
                     lambda: opened.add_target(TargetRecord(name="u", extension="ext.fake")),
                     lambda: opened.try_lead("leader")):
            with pytest.raises(StoreUnavailable) as e:
                call()
            assert password not in e.value.render()
            assert ":***@127.0.0.1" in e.value.render()
        opened.close()


def test_documents_keep_the_key_order_sqlite_gives(store: PostgresStore, tmp_path: Path) -> None:
    """jsonb orders keys by length; the documents come back in SQLite's (sorted) order."""
    import json

    from tests.unit.store.test_contract import add

    lite = open_store(Settings.from_env({**os.environ, "SANDBOXER_HOME": str(tmp_path),
                                         "SANDBOXER_DATABASE_URL":
                                         f"sqlite://{tmp_path / 'o.db'}"}))
    labels = {"zz": "1", "abc": "2", "m": "3"}
    for s in (store, lite):
        made = add(s, labels=labels)
        s.set_handle(made.id, {"zz": 1, "abc": {"y": 1, "b": 2}})
    (pg_doc,), (lite_doc,) = store.query_documents(), lite.query_documents()
    assert json.dumps(pg_doc["labels"]) == json.dumps(lite_doc["labels"])
    pg_rec, lite_rec = (s.get_record(d["id"]) for s, d in ((store, pg_doc), (lite, lite_doc)))
    assert pg_rec is not None
    assert lite_rec is not None
    assert json.dumps(pg_rec.handle) == json.dumps(lite_rec.handle)
    lite.close()


def test_the_event_loops_read_is_the_pools_read_byte_for_byte(store: PostgresStore,
                                                              pg_url: str) -> None:
    """GET one sandbox on an event loop goes through libpq directly (fastread.py): the same
    document as the pool's read, for every kind of value; a dropped connection is
    replaced; an unknown id is None; inside a transaction block the pool is used."""
    import asyncio
    import json
    from datetime import timedelta

    from sandboxer.models.common import utcnow
    from sandboxer.models.sandbox import SandboxStatus

    now = utcnow()
    made = SandboxStatus(id="sbx-00000000000000aa", name="ünï ✓", profile="profile.x",
                         extension="ext.fake", target="t", state="ready", reason="a\\nb",
                         actor="agt", labels={"z": "1", "a": "é", "m": ""},
                         created_at=now, expires_at=now + timedelta(seconds=1234.567891))
    store.insert(made, max_expires_at=made.expires_at)
    store.transition(made.id, from_states={"ready"}, to_state="ready", event=None,
                     error="bad\ttab \u2603")
    pooled = store.get_document(made.id)
    plain = SandboxStatus(id="sbx-00000000000000bb", profile="profile.x", extension="ext.fake",
                          state="provisioning", created_at=now, expires_at=now)
    store.insert(plain, max_expires_at=plain.expires_at)

    async def on_the_loop() -> list[object]:
        got: list[object] = [store.get_document(made.id), store.get_document(plain.id),
                             store.get_document("sbx-ffffffffffffffff")]
        with psycopg.connect(pg_url, autocommit=True) as admin:  # drop the loop's reader
            dropped = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE application_name = 'sandboxer-read'").fetchall()
            assert dropped == [(True,)]  # the reads above went through the loop's reader
            got.append(store.get_document(made.id))
            again = admin.execute("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE application_name = 'sandboxer-read'").fetchone()
            assert again == (1,)  # and a new one replaced it
        with store.transaction():
            got.append(store.get_document(made.id))
        return got

    fast, fast_plain, missing, after_drop, in_block = asyncio.run(on_the_loop())
    assert json.dumps(fast) == json.dumps(pooled)
    assert fast_plain == store.get_document(plain.id)
    assert missing is None
    assert after_drop == pooled
    assert in_block == pooled
