"""Files in and out through the API's files route, the SDK (HttpClient upload, download,
cp) and the MCP tools, on the test extension: owners only, ready only, size caps."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sandboxer.client.http import HttpClient
from sandboxer.client.local import LocalClient
from sandboxer.errors import Conflict, NotFound, RequestTooLarge, SandboxNotFound, UsageError
from sandboxer.mcp.tools import build

from .conftest import Api

CAP = 200_000


@pytest.fixture(autouse=True)
def _small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXER_API_MAX_FILE", str(CAP))
    # Below the files in these tests: the files route has its own cap, not this one.
    monkeypatch.setenv("SANDBOXER_API_MAX_BODY", "100000")


def root(api: Api, sid: str) -> Path:
    return api.settings.home / "fake" / sid / "root"


def test_sdk_upload_download_and_cp_through_the_files_route(api: Api, tmp_path: Path) -> None:
    tmp_path = tmp_path / "here"
    tmp_path.mkdir()
    data = os.urandom(150_000)  # over SANDBOXER_API_MAX_BODY, under CAP
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    with HttpClient(api.url, api.alice) as sdk:
        box = sdk.create("profile.fake")
        assert sdk.upload(box.id, src, "copy.bin") == len(data)
        assert (root(api, box.id) / "copy.bin").read_bytes() == data
        out = tmp_path / "out.bin"
        assert sdk.download(box.id, "copy.bin", out) == len(data)
        assert out.read_bytes() == data
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert sdk.cp(str(src), f"{box.id}:again.bin") == len(data)
        assert sdk.cp(f"{box.id}:again.bin", str(tmp_path / "again")) == len(data)
        with pytest.raises(UsageError, match="neither names a sandbox path"):
            sdk.cp(str(src), str(tmp_path / "x"))
        with pytest.raises(RequestTooLarge):
            sdk.download(box.id, "copy.bin", tmp_path / "capped", max_bytes=1000)
        with pytest.raises(NotFound, match="no such file"):
            sdk.download(box.id, "missing", tmp_path / "m")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "in.bin", "out.bin"]
        big = tmp_path / "big"
        big.write_bytes(b"x" * (CAP + 1))
        with pytest.raises(RequestTooLarge, match="SANDBOXER_API_MAX_FILE"):
            sdk.upload(box.id, big, "big")
        assert not (root(api, box.id) / "big").exists()
        # The server's scratch files are gone.
        assert list((api.settings.home / "run" / "files").iterdir()) == []
    with HttpClient(api.url, api.bob) as other:  # not bob's: answered as unknown
        with pytest.raises(SandboxNotFound):
            other.upload(box.id, src, "x")
        with pytest.raises(SandboxNotFound):
            other.download(box.id, "copy.bin", tmp_path / "b")
    with HttpClient(api.url, api.root) as admin:  # an admin may
        assert admin.download(box.id, "copy.bin", tmp_path / "r") == len(data)
        admin.stop(box.id)
        with pytest.raises(Conflict, match="is stopped; files are copied only"):
            admin.upload(box.id, src, "x")


def test_the_route_refuses_a_body_over_the_cap_and_needs_a_token(api: Api) -> None:
    with HttpClient(api.url, api.alice) as sdk:
        sid = sdk.create("profile.fake").id
    url = f"{api.url}/v1/sandboxes/{sid}/files"
    r = httpx.put(url, params={"path": "f"}, content=b"x" * (CAP + 10),
                  headers=api.auth(api.alice))
    assert (r.status_code, r.json()["code"]) == (413, "request_too_large")
    r = httpx.put(url, params={"path": "f"}, content=b"hi", headers=api.auth(api.alice))
    assert (r.status_code, r.json()) == (200, {"schema": "sandboxer.file/v1",
                                               "sandbox_id": sid, "path": "f", "bytes": 2,
                                               "direction": "in"})
    r = httpx.get(url, params={"path": "f"}, headers=api.auth(api.alice))
    assert (r.status_code, r.content, r.headers["content-type"]) == (
        200, b"hi", "application/octet-stream")
    assert httpx.get(url, params={"path": "f"}).status_code == 401
    r = httpx.get(url, params={"path": ""}, headers=api.auth(api.alice))
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")


def call(client: Any, name: str, args: dict[str, Any]) -> tuple[bool, str, Any]:
    server = build(client)

    async def run() -> Any:
        return await server.call_tool(name, args)

    result = anyio.run(run)
    return result.is_error, "".join(c.text for c in result.content), result.structured_content


def test_mcp_upload_and_download_text_and_base64(api: Api) -> None:
    local = LocalClient(api.settings, reap_opportunistically=False)
    sid = local.create("profile.fake").id
    err, _, doc = call(local, "upload_file", {"sandbox_id": sid, "path": "notes.txt",
                                              "content": "héllo\n"})
    assert not err
    assert doc == {"schema": "sandboxer.file/v1", "sandbox_id": sid, "path": "notes.txt",
                   "bytes": 7, "direction": "in"}
    blob = bytes(range(256))
    err, _, doc = call(local, "upload_file", {"sandbox_id": sid, "path": "blob",
                                              "content": base64.b64encode(blob).decode(),
                                              "encoding": "base64"})
    assert (err, doc["bytes"]) == (False, 256)
    assert (root(api, sid) / "blob").read_bytes() == blob
    err, _, doc = call(local, "download_file", {"sandbox_id": sid, "path": "notes.txt"})
    assert (err, doc["encoding"], doc["content"]) == (False, "text", "héllo\n")
    err, _, doc = call(local, "download_file", {"sandbox_id": sid, "path": "blob"})
    assert (doc["encoding"], base64.b64decode(doc["content"])) == ("base64", blob)
    err, text, _ = call(local, "download_file", {"sandbox_id": sid, "path": "blob",
                                                 "encoding": "text"})
    assert (err, text) == (True, "invalid_input: the file is not UTF-8 text. Ask for "
                                 "encoding base64")
    err, text, _ = call(local, "upload_file", {"sandbox_id": sid, "path": "x",
                                               "content": "!!", "encoding": "base64"})
    assert err
    assert text.startswith("invalid_input: content is not valid base64")
    err, text, _ = call(local, "download_file", {"sandbox_id": sid, "path": "gone"})
    assert err
    assert text.startswith("not_found: cannot read 'gone'")
