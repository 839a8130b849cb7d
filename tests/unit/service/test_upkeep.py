"""sandboxer.service.upkeep: serving again what should be served, and fast destroys, over
the light FastPaths an extension registers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer import entrypoints
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed, SandboxNotFound
from sandboxer.extensions import base
from sandboxer.extensions.local.wire import FAST_PATHS
from sandboxer.service import upkeep


def _doc(sid: str, port: int | None = 2222, state: str = "ready",
         extension: str = "ext.fake") -> dict[str, Any]:
    return {"id": sid, "state": state, "extension": extension,
            "reachability": {"port": port}}


class Paths:
    def __init__(self, unserved: list[str], reply: dict[str, Any] | None = None) -> None:
        self._unserved = unserved
        self.reply = reply
        self.asked: list[list[str]] = []

    def unserved(self, settings: Settings, documents: list[dict[str, Any]]) -> list[str]:
        self.asked.append([d["id"] for d in documents])
        return self._unserved

    def destroy(self, settings: Settings, sandbox_id: str) -> dict[str, Any] | None:
        return self.reply


class Manager:
    def __init__(self, moved: list[str] | Exception) -> None:
        from sandboxer.extensions.base import ServesEndpoints

        self.refreshed: list[str] = []
        outer = self

        class Ext(ServesEndpoints):
            async def serve_again(self, documents: list[dict[str, Any]]) -> list[str]:
                outer.served = [d["id"] for d in documents]
                if isinstance(moved, Exception):
                    raise moved
                return moved

        self.ext = Ext()

    def extension(self, name: str) -> Any:
        return self.ext

    async def refresh_reachability(self, sandbox_id: str) -> None:
        self.refreshed.append(sandbox_id)


def _never() -> Any:
    raise AssertionError("the manager was built although nothing needed serving")


def test_the_group_is_the_one_extensions_register_under() -> None:
    assert upkeep.GROUP == base.FAST_PATH_GROUP


def test_entry_points_are_read_like_importlib_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import entry_points

    for name, text in (("a-1.dist-info", "[sandboxer.fast_paths]\next.a = mod_a:X\n"
                        "[other]\next.b = nope:Y\n"),
                       ("b-1.egg-info", "[console_scripts]\nx = y:z\n\n"
                        "[sandboxer.fast_paths]\n# a comment\next.b = mod_b:Y.z [extra]\n"),
                       ("c-1.dist-info", "[sandboxer.fast_paths]\next.a = shadowed:Z\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "entry_points.txt").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = entrypoints.registered("sandboxer.fast_paths")
    assert found["ext.a"] == "mod_a:X"
    assert found["ext.b"] == "mod_b:Y.z [extra]"
    # Everything importlib.metadata finds, found the same way (the first one wins).
    for ep in entry_points(group="sandboxer.extensions"):
        assert entrypoints.registered("sandboxer.extensions")[ep.name] == ep.value


def test_a_fast_path_loads_its_object_and_a_broken_one_is_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x-1.dist-info").mkdir()
    (tmp_path / "x-1.dist-info" / "entry_points.txt").write_text(
        "[sandboxer.fast_paths]\next.local = sandboxer.extensions.local.wire:FAST_PATHS\n"
        "ext.broken = no_such_module_here:FAST_PATHS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert upkeep._fast_paths("ext.local") is FAST_PATHS
    assert upkeep._fast_paths("ext.broken") is None
    assert upkeep._fast_paths("ext.unregistered") is None


def test_nothing_is_done_when_everything_ready_is_served(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(unserved=[])
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: paths)
    docs = [_doc("sbx-a"), _doc("sbx-b", state="destroyed"), _doc("sbx-c", state="failed")]
    assert upkeep.ensure_served(settings, docs, _never) is False
    assert paths.asked == [["sbx-a"]]  # only ready documents are asked about
    assert upkeep.ensure_served(settings, [], _never) is False
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: None)
    assert upkeep.ensure_served(settings, [_doc("sbx-a")], _never) is False


def test_unserved_sandboxes_are_served_again_and_moved_ones_refreshed(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: Paths(unserved=["sbx-a"]))
    manager = Manager(moved=["sbx-b"])
    docs = [_doc("sbx-a"), _doc("sbx-b")]
    assert upkeep.ensure_served(settings, docs, lambda: manager) is True
    assert manager.served == ["sbx-a", "sbx-b"]
    assert manager.refreshed == ["sbx-b"]
    assert all("reason" not in d for d in docs)


def test_what_cannot_be_served_again_says_so(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: Paths(unserved=["sbx-a"]))
    manager = Manager(moved=ProvisionFailed("the ext.local endpoint did not start"))
    docs = [_doc("sbx-a"), _doc("sbx-b")]
    assert upkeep.ensure_served(settings, docs, lambda: manager) is False
    assert [d["reason"] for d in docs] == ["unserved: the ext.local endpoint did not start"] * 2


def test_fast_destroy_answers_only_through_a_running_process(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _doc("sbx-a")
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: None)
    assert upkeep.fast_destroy(settings, doc) is None
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: Paths([], reply=None))
    assert upkeep.fast_destroy(settings, doc) is None
    final = {**doc, "state": "destroyed"}
    monkeypatch.setattr(upkeep, "_fast_paths",
                        lambda name: Paths([], reply={"ok": True, "document": final}))
    assert upkeep.fast_destroy(settings, doc) == final
    refused = {"ok": False, "code": SandboxNotFound.code, "error": "no sandbox sbx-a"}
    monkeypatch.setattr(upkeep, "_fast_paths", lambda name: Paths([], reply=refused))
    with pytest.raises(SandboxNotFound, match="no sandbox sbx-a"):
        upkeep.fast_destroy(settings, doc)


@pytest.fixture
def endpoint(settings: Settings) -> Iterator[list[dict[str, Any]]]:
    """A stand-in endpoint on the control socket that answers ``list`` with these."""
    settings.ensure()
    served: list[dict[str, Any]] = []
    path = settings.run_dir / "local-endpoint.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as f:
                req = json.loads(f.readline())
                reply = ({"ok": True, "sandboxes": served} if req["op"] == "list"
                         else {"ok": True, "document": {"id": req["sandbox_id"]}})
                conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield served
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    path.unlink()


def test_ext_local_fast_paths_without_an_endpoint(settings: Settings) -> None:
    settings.ensure()
    docs = [_doc("sbx-a", extension="ext.local"), _doc("sbx-b", extension="ext.local",
                                                       state="provisioning"),
            _doc("sbx-c", extension="ext.fake")]
    assert FAST_PATHS.unserved(settings, docs) == ["sbx-a"]
    assert FAST_PATHS.destroy(settings, "sbx-a") is None


def test_ext_local_fast_paths_through_an_endpoint(
        settings: Settings, endpoint: list[dict[str, Any]]) -> None:
    endpoint.extend([{"sandbox_id": "sbx-a", "port": 2222},
                     {"sandbox_id": "sbx-b", "port": 4444}])
    docs = [_doc("sbx-a", extension="ext.local"), _doc("sbx-b", extension="ext.local"),
            _doc("sbx-c", extension="ext.local")]
    assert FAST_PATHS.unserved(settings, docs) == ["sbx-b", "sbx-c"]
    assert FAST_PATHS.destroy(settings, "sbx-a") == {"ok": True, "document": {"id": "sbx-a"}}


CHEAP = r"""
import sys
from sandboxer.config import Settings
from sandboxer.service import upkeep
settings = Settings.from_env()
docs = [{"id": "sbx-a", "state": "ready", "extension": "ext.local",
         "reachability": {"port": 1}}, {"id": "sbx-b", "state": "ready",
         "extension": "ext.bench"}]
def manager():
    raise SystemExit("built a manager")
print(upkeep.ensure_served(settings, docs[1:], manager), upkeep.fast_destroy(settings, docs[0]),
      sorted(m for m in ("pydantic", "asyncio", "importlib.metadata") if m in sys.modules))
"""


def test_reads_stay_cheap(settings: Settings, tmp_path: Path) -> None:
    """No pydantic, asyncio or importlib.metadata on the way when nothing must be done."""
    settings.ensure()
    ep = tmp_path / "ep" / "t-0.dist-info"
    ep.mkdir(parents=True)
    (ep / "entry_points.txt").write_text(
        "[sandboxer.fast_paths]\next.local = sandboxer.extensions.local.wire:FAST_PATHS\n")
    src = str(Path(upkeep.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((src, str(ep.parent)))}
    done = subprocess.run([sys.executable, "-c", CHEAP], env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "None", "[]"]
