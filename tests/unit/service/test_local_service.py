"""The local service's wire (service/wire.py, service/local.py, client/service.py) on a
real unix socket, with the in-process test-only extension behind a real Service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxer import childenv
from sandboxer.client.service import ServiceClient, Unavailable
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProfileNotFound, UnsafePermissions
from sandboxer.service import wire
from sandboxer.service.app import Service
from sandboxer.service.local import LocalService, bind, route_progress

HOME = Path("/var/tmp/sbx-unit-home")
NAMES = st.sampled_from(["SANDBOXER_TUNNEL_VIA", "SANDBOXER_TOKEN", "SANDBOXER_PROFILES",
                         "SANDBOXER_STATE_HUB_TOKEN", "DOCKER_HOST", "http_proxy", "TERM",
                         "BAO_TOKEN", "PATH", "HOME", "LC_ALL", "FAKE_CAPACITY"])


@given(st.dictionaries(NAMES, st.text(min_size=1, max_size=8).filter(lambda v: "\0" not in v)))
def test_a_keeper_started_by_a_caller_serves_that_caller(env: dict[str, str]) -> None:
    """The keeper's environment (childenv.for_sandboxer of the caller's) has the caller's
    key, whatever else the caller's environment holds."""
    started = childenv.for_sandboxer(env, HOME)
    assert wire.settings_key(started, HOME) == wire.settings_key(env, HOME)


def test_the_key_covers_what_one_process_cannot_change_per_request() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/root", "SANDBOXER_TUNNEL_VIA": "obr-a"}
    key = wire.settings_key(base, HOME)
    same = [{**base, "TERM": "xterm", "BAO_TOKEN": "t", "SANDBOXER_TOKEN": "x",
             "SANDBOXER_SERVICE_IDLE_EXIT": "9"}]
    other = [{**base, "PATH": "/bin"}, {**base, "SANDBOXER_TUNNEL_VIA": "obr-b"},
             {**base, "PYTHONPATH": "/plugins"}, {**base, "HOME": "/home/x"},
             {**base, "DOCKER_HOST": "tcp://elsewhere:2375"},
             {**base, "https_proxy": "http://proxy:3128"}, {**base, "SSL_CERT_FILE": "/ca"}]
    assert all(wire.settings_key(e, HOME) == key for e in same)
    assert all(wire.settings_key(e, HOME) != key for e in other)
    assert wire.settings_key(base, Path("/elsewhere")) != key


@pytest.mark.parametrize("relative", [
    {"SANDBOXER_PROFILES": "/etc/sbx:profiles"}, {"PATH": "/usr/bin:bin"},
    {"PATH": "/usr/bin::/bin"}, {"PYTHONPATH": "plugins"}, {"SANDBOXER_WARDEN": "./warden"},
    {"SSL_CERT_FILE": "ca.pem"}])
def test_a_relative_path_keys_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: dict[str, str]) -> None:
    """The service resolves a relative path from its starter's directory: a caller in
    another one is not served by it."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    env = {"PATH": "/usr/bin", "HOME": "/root", "SANDBOXER_WARDEN": "warden",
           "SANDBOXER_PROFILES": "/etc/sbx"}
    keys = {}
    for d in ("a", "b"):
        monkeypatch.chdir(tmp_path / d)
        keys[d] = (wire.settings_key(env, HOME), wire.settings_key({**env, **relative}, HOME))
    assert keys["a"][0] == keys["b"][0]  # absolute paths only: any directory
    assert keys["a"][1] != keys["b"][1]
    monkeypatch.chdir(tmp_path / "a")
    assert wire.settings_key({**env, **relative}, HOME) == keys["a"][1]


@pytest.fixture(autouse=True)
def _service_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the service itself (unit tests elsewhere turn it off)."""
    monkeypatch.setenv("SANDBOXER_LOCAL_SERVICE", "1")


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[LocalService, Service]]:
    """A LocalService on a real socket, its loop in a thread, hosting a real Service."""
    service = Service(settings, upkeep=False, progress=route_progress)
    settings.ensure()
    loop = asyncio.new_event_loop()
    local = LocalService(service)
    ready = threading.Event()

    async def main() -> None:
        await local.start(bind(settings))
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(10)
    assert ready.is_set()
    yield local, service
    asyncio.run_coroutine_threadsafe(local.close(5), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    service.close()


def raw(settings: Settings, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(wire.socket_path(settings)))
        s.sendall(line)
        reply: dict[str, object] = json.loads(s.makefile("rb").readline())
    return reply


def test_create_and_destroy_through_the_service(
        settings: Settings, served: tuple[LocalService, Service]) -> None:
    local, _service = served
    assert oct(wire.socket_path(settings).stat().st_mode & 0o777) == "0o600"
    seen: list[str] = []
    client = ServiceClient(settings, dict(os.environ), seen.append)
    assert client.key == local.key
    doc = client.create("profile.fake", ttl="5m", labels={"run": "unit"})
    assert (doc["state"], doc["labels"]) == ("ready", {"tier": "test", "run": "unit"})
    assert any("provisioning profile.fake" in m for m in seen)  # progress came back
    assert client.get_document(doc["id"])["id"] == doc["id"]
    assert client.destroy_document(doc["id"])["state"] == "destroyed"
    deadline = time.monotonic() + 10  # the reply is written before the request ends
    while local.inflight:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert local.busy()  # for idle_exit seconds after the last request


def test_snapshot_fork_and_create_from_a_snapshot_through_the_service(
        settings: Settings, served: tuple[LocalService, Service]) -> None:
    seen: list[str] = []
    client = ServiceClient(settings, dict(os.environ), seen.append)
    box = client.create("profile.fake")
    snap = client.snapshot(box["id"], name="s", retain="1h")
    assert (snap["schema"], snap["state"], snap["name"]) == ("sandboxer.snapshot/v1",
                                                             "ready", "s")
    assert any("recording a snapshot" in m for m in seen)
    made = client.create("profile.fake", from_snapshot=snap["id"])
    assert made["snapshot"] == snap["id"]
    fork = client.fork(box["id"], labels={"b": "1"}, name="f")
    assert (fork["state"], fork["name"], fork["labels"]["b"]) == ("ready", "f", "1")
    with pytest.raises(InvalidInput, match=r"snapshot\.max"):
        client.snapshot(box["id"], retain="90d")


def test_errors_keep_their_class_and_other_settings_fall_back(
        settings: Settings, served: tuple[LocalService, Service]) -> None:
    client = ServiceClient(settings, dict(os.environ))
    with pytest.raises(ProfileNotFound, match=r"profile\.nope"):
        client.create("profile.nope")
    with pytest.raises(InvalidInput):
        client.create("profile.fake", ttl="forever")
    other = ServiceClient(settings, {**os.environ, "SANDBOXER_TUNNEL_VIA": "obr-x"})
    with pytest.raises(Unavailable, match="other settings"):
        other.create("profile.fake")
    # An environment too large for one request line is worked with in-process, not
    # refused by the service as a usage error.
    huge = ServiceClient(settings, {**os.environ, "BIG": "\x01" * (wire.MAX_LINE // 5)})
    with pytest.raises(Unavailable, match="over"):
        huge.create("profile.fake")


@pytest.mark.parametrize("line", [b"not json\n", b'{"v": "1", "op": "create"}\n',
                                  b'{"v": 1, "op": "rm -rf"}\n',
                                  b'{"v": 1, "op": "create", "env": {"A": 1}}\n'])
def test_a_bad_request_is_refused_as_usage(
        settings: Settings, served: tuple[LocalService, Service], line: bytes) -> None:
    reply = raw(settings, line)
    assert reply["ok"] is False
    assert isinstance(reply["error"], dict)
    assert reply["error"]["code"] == "usage"


@pytest.mark.parametrize("owner", [None, 65534])
def test_a_symlink_in_a_loosened_run_dir_gets_no_request(
        settings: Settings, served: tuple[LocalService, Service], tmp_path: Path,
        owner: int | None) -> None:
    """Another user who can write run/ swaps service.sock for a symlink to a socket of our
    own uid (the uid check passes there): the client refuses before it sends a byte."""
    path = wire.socket_path(settings)
    got: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as decoy:
        decoy.bind(str(tmp_path / "decoy.sock"))
        decoy.listen(1)
        decoy.settimeout(1)  # the client has long refused (or connected) by then

        def listen() -> None:  # whatever reaches the decoy, then hang up
            with contextlib.suppress(TimeoutError):
                conn, _ = decoy.accept()
                with conn:
                    conn.settimeout(5)
                    got.append(conn.recv(1 << 20))

        thread = threading.Thread(target=listen)
        thread.start()
        path.unlink()
        path.symlink_to(tmp_path / "decoy.sock")
        if owner is not None:
            os.lchown(path, owner, owner)
        settings.run_dir.chmod(0o777)
        client = ServiceClient(settings, {**os.environ, "BAO_TOKEN": "s.canary"})
        try:
            with pytest.raises(UnsafePermissions):
                client.extend("sbx-aaaaaaaaaa", "1m")
        finally:
            thread.join()
    assert got == []  # nobody connected to the decoy
    if owner is None:  # ours but loose: repaired on the way
        assert settings.run_dir.stat().st_mode & 0o777 == 0o700


def test_another_protocol_and_a_stopping_service_are_done_by_the_caller(
        settings: Settings, served: tuple[LocalService, Service]) -> None:
    local, service = served
    assert raw(settings, b'{"v": 9, "op": "create"}\n') == {
        "ok": False, "fallback": "another protocol"}
    local.alive = lambda: False  # what the keeper says once its endpoints are stopping
    client = ServiceClient(settings, dict(os.environ))
    with pytest.raises(Unavailable, match="stopping"):
        client.create("profile.fake")
    assert service.store.query_documents() == []  # it ran nothing


def test_a_connection_the_service_never_took_is_done_by_the_caller(
        settings: Settings) -> None:
    """The keeper stops (idle) while a client waits in its socket's backlog: the client
    is reset before anything was taken, so it does the work itself, not an error."""
    import select

    settings.ensure()
    listening = bind(settings)  # nobody accepts
    failed: list[BaseException] = []

    def call() -> None:
        try:
            ServiceClient(settings, dict(os.environ)).extend("sbx-aaaaaaaaaa", "1m")
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        assert select.select([listening], [], [], 10)[0]  # the client is in the backlog
    finally:
        listening.close()  # as the keeper does when it stops
        thread.join(10)
    assert len(failed) == 1
    assert isinstance(failed[0], Unavailable), repr(failed[0])


def test_a_client_that_never_finishes_its_line_is_hung_up_on(
        settings: Settings, served: tuple[LocalService, Service]) -> None:
    local, _service = served
    local.line_timeout = 0.2
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(wire.socket_path(settings)))
        s.sendall(b'{"v": 1, "op": "cre')  # and nothing more
        s.settimeout(30)
        assert s.recv(100) == b""  # the service hung up
    # An oversized line is refused as usage, not a stuck connection.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(wire.socket_path(settings)))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b'{"v": 1, "op": "create", "env": {"A": "' + b"x" * wire.MAX_LINE)
        s.settimeout(30)
        reply = json.loads(s.makefile("rb").readline())
    assert reply["error"]["code"] == "usage"


def test_bytes_after_the_request_line_do_not_cancel_it(
        settings: Settings, served: tuple[LocalService, Service]) -> None:
    line = wire.encode({"v": wire.PROTOCOL, "op": "create", "env": dict(os.environ),
                        "key": wire.settings_key(os.environ, settings.home),
                        "args": {"profile": "profile.fake", "ttl": "5m"}})
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(wire.socket_path(settings)))
        s.sendall(line + b"\n")  # a stray newline, as `echo` adds one
        s.settimeout(30)
        replies = [json.loads(raw) for raw in s.makefile("rb")]
    assert replies[0] == {"taken": True}
    assert replies[-1]["ok"] is True, replies
    assert replies[-1]["result"]["state"] == "ready"
