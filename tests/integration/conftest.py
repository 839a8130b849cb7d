"""Integration fixtures: a private SANDBOXER_HOME and helpers around real ext.local."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"


@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is required for integration tests (apt-get install bubblewrap)")
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path / "home"))
    # The teardown removes the local root: never one the caller's environment names.
    monkeypatch.delenv("SANDBOXER_LOCAL_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("SANDBOXER_PROFILES", str(tmp_path / "profiles"))
    (tmp_path / "profiles").mkdir()
    settings = Settings.from_env()
    yield settings
    client = LocalClient(settings)
    for doc in client.list_documents():
        client.destroy(doc["id"])
    if settings.local_root.exists():
        shutil.rmtree(settings.local_root, ignore_errors=True)


@contextlib.contextmanager
def private_local(idle_exit: str = "0.5") -> Iterator[Settings]:
    """Settings of a private home and local root (under /var/tmp, which jail uids can pass
    through); at the end every sandbox it owns is destroyed and both are removed."""
    import asyncio
    import tempfile
    import time

    from sandboxer.extensions.local import LocalExtension, control

    home = Path(tempfile.mkdtemp(prefix="sbx-home-"))
    base = Path("/var/tmp/sandboxer-test")
    base.mkdir(exist_ok=True)
    base.chmod(0o711)
    root = Path(tempfile.mkdtemp(prefix="local-", dir=base))
    root.chmod(0o711)
    s = Settings.from_env({**os.environ, "SANDBOXER_HOME": str(home),
                           "SANDBOXER_LOCAL_ROOT": str(root),
                           "SANDBOXER_LOCAL_IDLE_EXIT": idle_exit})
    try:
        yield s
    finally:
        ext = LocalExtension(s)

        async def teardown() -> None:
            for h in await ext.owned(ext.targets(s)[0]):
                await ext.destroy(h)

        asyncio.run(teardown())
        deadline = time.monotonic() + 10
        while control.daemon_pid(s) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert control.daemon_pid(s) is None, "the endpoint did not exit"
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def provision_local(ext: Any, sandbox_id: str, *, spec: Any = None,
                    env: dict[str, str] | None = None, forward: tuple[int, ...] = (),
                    snapshot: Any = None, secrets: dict[str, Any] | None = None) -> Any:
    """Provision a real ext.local sandbox straight through the extension (no store) and
    wait until SSH answers; (handle, endpoint)."""
    import asyncio
    from datetime import UTC, datetime

    from sandboxer.extensions.base import ProvisionRequest
    from sandboxer.extensions.local.spec import LocalSpec
    from sandboxer.models.profile import Profile

    req = ProvisionRequest(
        sandbox_id=sandbox_id, profile=Profile(id="profile.test", extension="ext.local"),
        spec=spec or LocalSpec(), target=ext.targets(ext.settings)[0], settings=ext.settings,
        user="dev", labels={}, env=env or {}, expires_at=datetime.now(UTC), forward=forward,
        snapshot=snapshot)

    async def go() -> Any:
        h = await ext.provision(req, secrets or {})
        await ext.wait_ready(h, timeout=20)
        return h, await ext.endpoint(h)

    return asyncio.run(go())


def raw_state(settings: Settings, sandbox_id: str) -> dict[str, Any]:
    """Read a row without going through sand-boxer (no opportunistic reap)."""
    conn = sqlite3.connect(settings.db_path)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT state, reason, handle FROM sandboxes WHERE id = ?",
                       (sandbox_id,)).fetchone()
    conn.close()
    return {"state": row["state"], "reason": row["reason"],
            "handle": json.loads(row["handle"]) if row["handle"] else None}


def ssh(
    reach: dict[str, Any], command: str, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """The system OpenSSH client, exactly as the descriptor says, host key pinned."""
    import shlex

    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "--", command]
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- secrets: a KV v2 server and a stub warden -----------------------------------------------


class KVServer:
    """A real HTTP server on 127.0.0.1 speaking the OpenBao/Vault KV v2 read subset hvac
    uses: ``GET /v1/<mount>/data/<path>`` and ``/v1/<mount>/metadata/<path>``, the token in
    ``X-Vault-Token``, 403 for a wrong token or a denied path, 404 for a missing secret."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.secrets: dict[str, dict[str, Any]] = {}  # "mount/path" -> fields
        self.denied: set[str] = set()
        self.deleted: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, token
        self.url = ""

    def put(self, location: str, **fields: Any) -> None:
        self.secrets[location] = fields

    def answer(self, method: str, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path, token))
        parts = path.split("?", 1)[0].split("/")
        # ["", "v1", mount, "data"|"metadata", *path]
        if method != "GET" or len(parts) < 5 or parts[1] != "v1" \
                or parts[3] not in ("data", "metadata"):
            return 405, {"errors": ["unsupported by this test server"]}
        location = f"{parts[2]}/{'/'.join(parts[4:])}"
        if token != self.token or location in self.denied:
            return 403, {"errors": ["permission denied"]}
        if location not in self.secrets:
            return 404, {"errors": []}
        deleted = location in self.deleted
        version = {"created_time": "2026-01-01T00:00:00Z", "version": 1, "destroyed": False,
                   "deletion_time": "2026-01-02T00:00:00Z" if deleted else ""}
        if parts[3] == "metadata":
            return 200, {"data": {"current_version": 1, "versions": {"1": version}}}
        if deleted:
            return 404, {"data": {"data": None, "metadata": version}}
        return 200, {"data": {"data": self.secrets[location], "metadata": version}}


@pytest.fixture
def kv_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[KVServer]:
    """A KV v2 server with a random token; BAO_ADDR and BAO_TOKEN point at it."""
    import secrets as random
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    kv = KVServer(token=f"tok-{random.token_hex(8)}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = kv.answer("GET", self.path, self.headers.get("X-Vault-Token"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kv.url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "SANDBOXER_WARDEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BAO_ADDR", kv.url)
    monkeypatch.setenv("BAO_TOKEN", kv.token)
    try:
        yield kv
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Warden:
    """A stub ``warden`` on PATH: routes every ref except those ``refuse``d."""

    def __init__(self, directory: Path) -> None:
        self.refused = directory / "refused"
        self.refused.write_text("")
        self.log = directory / "asked"
        self.exe = directory / "warden"
        self.exe.write_text(
            "#!/bin/sh\n"
            '[ "$1" = route ] && [ $# -eq 2 ] || { echo "usage: warden route REF" >&2; '
            "exit 2; }\n"
            f'printf "%s\\n" "$2" >> "{self.log}"\n'
            f'if grep -qxF -- "$2" "{self.refused}"; then\n'
            '    echo "warden: $2 is not routed for this actor" >&2; exit 1\nfi\n'
            'echo "routed $2"\n')
        self.exe.chmod(0o755)

    def refuse(self, ref: str) -> None:
        with self.refused.open("a") as f:
            f.write(ref + "\n")

    def asked(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def warden_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warden:
    """SANDBOXER_WARDEN=warden, found on PATH in a private bin directory."""
    d = tmp_path / "warden-bin"
    d.mkdir()
    stub = Warden(d)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("SANDBOXER_WARDEN", "warden")
    return stub
