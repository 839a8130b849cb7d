"""ext.compose-ssh's fast paths: the engine's API on its unix socket (with the docker CLI
behind it), the compose plugin called directly, sshd's banner awaited in-process."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from sandboxer.errors import ProvisionFailed
from sandboxer.extensions.compose_ssh import engine, ready, tool
from sandboxer.extensions.compose_ssh.remote import LocalRunner

# -- which socket ------------------------------------------------------------------------


def test_only_a_plain_unix_socket_is_talked_to_directly(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert engine.socket_path({"DOCKER_HOST": "unix:///run/x.sock"}) == "/run/x.sock"
    for host in ("tcp://127.0.0.1:2375", "ssh://me@host", "unix://relative.sock"):
        assert engine.socket_path({"DOCKER_HOST": host}) is None
    assert engine.socket_path(home) == engine.DEFAULT_SOCKET
    assert engine.socket_path({**home, "DOCKER_CONTEXT": "remote"}) is None
    assert engine.socket_path({**home, "DOCKER_CONTEXT": "default"}) == engine.DEFAULT_SOCKET
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text('{"currentContext": "remote"}')
    assert engine.socket_path(home) is None
    (tmp_path / ".docker" / "config.json").write_text("not json")
    assert engine.socket_path(home) == engine.DEFAULT_SOCKET
    # No socket file: the CLI (and its message) for everything.
    assert engine.local_engine({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}) is None


# -- a fake engine on a unix socket ------------------------------------------------------


class _Unix(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "localhost", 0


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    seen: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append(("GET", self.path, b""))
            if self.path == "/version":
                self._answer(200, {"Version": "99.1"})
            elif self.path.startswith("/containers/json"):
                self._answer(200, [{"Id": "c1"}, {"Id": "c2"}])
            elif self.path.startswith("/networks"):
                self._answer(200, [{"Id": "n1"}])
            else:
                self._answer(200, {"Volumes": None})

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(("PUT", self.path, body))
            if "gone" in self.path:
                self._answer(404, {"message": "No such container: gone"})
            else:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    path = str(tmp_path / "e.sock")
    server = _Unix(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield path, seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_engine_api_answers_what_the_cli_would(
        fake_engine: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    path, seen = fake_engine
    r = LocalRunner("/nonexistent", {"DOCKER_HOST": f"unix://{path}", "PATH": "/usr/bin"})

    async def go() -> None:
        assert (await r.docker_version()).out == "99.1"
        assert await r.labelled("containers", "sandboxer.id=sbx-a") == ["c1", "c2"]
        assert await r.labelled("networks", "sandboxer.id=sbx-a") == ["n1"]
        assert await r.labelled("volumes", "sandboxer.id=sbx-a") == []
        await r.copy_in("sbx-a-main-1", b"tar bytes", "installing keys")
        with pytest.raises(ProvisionFailed, match=r"installing keys failed on target local: "
                           r".*404: No such container: gone"):
            await r.copy_in("gone", b"x", "installing keys")

    asyncio.run(go())
    assert ("PUT", "/containers/sbx-a-main-1/archive?path=%2F", b"tar bytes") in seen
    containers = next(p for m, p, _ in seen if p.startswith("/containers/json"))
    assert "all=1" in containers
    assert "sandboxer.id%3Dsbx-a" in containers


def test_a_socket_nobody_answers_falls_back_to_the_docker_cli(tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()  # the file stays; connecting is refused
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho \"cli: $*\"\n")
    (bin_dir / "docker").chmod(0o755)
    r = LocalRunner(str(tmp_path), {"DOCKER_HOST": f"unix://{dead}", "PATH": str(bin_dir)})
    assert r.engine is not None
    done = asyncio.run(r.docker_version())
    assert done.out.strip() == "cli: version --format {{.Server.Version}}"
    found = asyncio.run(r.labelled("volumes", "k=v"))
    assert found == ["cli:", "volume", "ls", "-q", "--filter", "label=k=v"]


# -- which compose -----------------------------------------------------------------------


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, LocalRunner]:
    """A PATH with a `docker` whose `compose version --short` says 2.30.0, no plugins."""
    bin_dir = tmp_path / "bin"
    _script(bin_dir / "docker", '[ "$1 $2 $3" = "compose version --short" ] && '
            'echo 2.30.0 && exit 0; exit 1')
    monkeypatch.setattr(tool, "PLUGIN_DIRS", (str(tmp_path / "sys1"), str(tmp_path / "sys2")))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "user"),
           "DOCKER_CONFIG": str(tmp_path / "cfg")}
    return tmp_path, LocalRunner(str(tmp_path), env)


def test_the_plugin_the_cli_would_run_is_called_directly(
        tools: tuple[Path, LocalRunner]) -> None:
    tmp, r = tools
    found = asyncio.run(tool.find(r))
    assert (found.argv, found.facts()) == (
        tool.V2, {"compose": "docker compose", "compose_version": "2.30.0"})
    _script(tmp / "sys2" / "docker-compose", "echo 2.30.0")
    assert asyncio.run(tool.find(r)).argv == [str(tmp / "sys2" / "docker-compose")]
    # The first directory in the CLI's order wins, and only when it is the same compose.
    _script(tmp / "cfg" / "cli-plugins" / "docker-compose", "echo 2.1.0")
    assert asyncio.run(tool.find(r)).argv == tool.V2
    _script(tmp / "cfg" / "cli-plugins" / "docker-compose", "echo 2.30.0")
    found = asyncio.run(tool.find(r))
    assert found.argv == [str(tmp / "cfg" / "cli-plugins" / "docker-compose")]
    assert found.v2
    assert tool.is_v2(found.argv)
    # Extra plugin directories in the docker config: the CLI decides, so it runs compose.
    (tmp / "cfg" / "config.json").write_text('{"cliPluginsExtraDirs": ["/opt/p"]}')
    assert asyncio.run(tool.find(r)).argv == tool.V2


def test_containers_are_named_as_each_compose_names_them() -> None:
    doc = {"services": {"main": {}, "pinned": {"container_name": "mine"}}}
    assert tool.container_name(doc, "main", "sbx-a", ["/p/docker-compose"]) == "sbx-a-main-1"
    assert tool.container_name(doc, "main", "sbx-a", tool.V1) == "sbx-a_main_1"
    assert tool.container_name(doc, "pinned", "sbx-a", tool.V2) == "mine"


def test_without_v2_compose_v1_or_a_clear_error(tools: tuple[Path, LocalRunner]) -> None:
    tmp, r = tools
    _script(tmp / "bin" / "docker", "exit 1")
    _script(tmp / "sys1" / "docker-compose", "echo 2.30.0")  # not what the CLI runs
    with pytest.raises(ProvisionFailed, match=r"neither `docker compose` \(v2\) nor"):
        asyncio.run(tool.find(r))
    _script(tmp / "bin" / "docker-compose", "echo 1.29.2")
    found = asyncio.run(tool.find(r))
    assert (found.argv, found.v2, found.version) == (tool.V1, False, "1.29.2")
    assert not tool.is_v2(found.argv)


def test_what_a_host_runs_compose_with_is_asked_once_until_something_fails(
        tools: tuple[Path, LocalRunner]) -> None:
    tmp, r = tools
    first = asyncio.run(tool.of(r))
    _script(tmp / "sys1" / "docker-compose", "echo 2.30.0")
    same_host = LocalRunner(str(tmp), dict(r.env))
    assert asyncio.run(tool.of(same_host)) is first  # another request, the same host
    tool.forget(same_host)
    assert asyncio.run(tool.of(r)).argv == [str(tmp / "sys1" / "docker-compose")]
    tool.forget(r)


# -- sshd's banner -----------------------------------------------------------------------


def test_the_banner_is_awaited_through_refusals_and_closed_connections() -> None:
    async def go() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Nothing listens yet (refused), then a proxy that closes at once, then sshd.
        answer = {"banner": False}

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if answer["banner"]:
                writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
                await writer.drain()
            writer.close()

        async def later() -> asyncio.Server:
            await asyncio.sleep(0.05)
            server = await asyncio.start_server(serve, "127.0.0.1", port)
            await asyncio.sleep(0.05)
            answer["banner"] = True
            return server

        task = asyncio.create_task(later())
        assert await ready.banner("127.0.0.1", port, time.monotonic() + 30)
        (await task).close()

    asyncio.run(go())


def test_no_banner_by_the_deadline_is_false() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not asyncio.run(ready.banner("127.0.0.1", port, time.monotonic() + 0.1))
