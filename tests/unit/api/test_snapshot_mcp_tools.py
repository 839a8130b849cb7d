"""The MCP snapshot tools in process, over a LocalClient of the test-only extension acting
as one actor: results are the documents of their output schemas, errors ``CODE: message``,
annotations say what each does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from sandboxer.access import Caller
from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.mcp.tools import build


@pytest.fixture
def server(settings: Settings) -> Any:
    client = LocalClient(settings, caller=Caller(actor="agt"))
    return build(client)


def call(server: Any, tool: str, **args: Any) -> tuple[bool, str, Any]:
    async def run() -> Any:
        return await server.call_tool(tool, args)

    result = anyio.run(run)
    return result.is_error, "".join(c.text for c in result.content), result.structured_content


def ok(server: Any, tool: str, **args: Any) -> Any:
    failed, text, doc = call(server, tool, **args)
    assert not failed, text
    return doc


def test_snapshot_tools_round_trip(server: Any, home: Path) -> None:
    box = ok(server, "create_sandbox", profile="profile.fake")
    (home / "fake" / box["id"] / "notes").write_text("kept")
    snap = ok(server, "snapshot_sandbox", sandbox_id=box["id"], name="n", retain="2h")
    assert (snap["schema"], snap["state"], snap["actor"], snap["name"]) == (
        "sandboxer.snapshot/v1", "ready", "agt", "n")
    assert ok(server, "show_snapshot", snapshot_id=snap["id"]) == snap
    assert ok(server, "list_snapshots", sandbox_id=box["id"]) == {
        "schema": "sandboxer.snapshots/v1", "items": [snap]}
    made = ok(server, "create_sandbox", profile="profile.fake", from_snapshot=snap["id"])
    assert made["snapshot"] == snap["id"]
    assert (home / "fake" / made["id"] / "notes").read_text() == "kept"
    fork = ok(server, "fork_sandbox", sandbox_id=box["id"], labels={"b": "1"}, ttl="30m")
    assert (fork["state"], fork["labels"]["b"]) == ("ready", "1")
    assert ok(server, "delete_snapshot", snapshot_id=snap["id"])["state"] == "deleted"
    assert len(ok(server, "list_snapshots", all=True)["items"]) == 2
    failed, text, _ = call(server, "show_snapshot", snapshot_id="snap-aaaaaaaaaa")
    assert failed
    assert text == ("snapshot_not_found: no snapshot with id 'snap-aaaaaaaaaa'. See "
                    "`sandboxer snapshots list`")
    failed, text, _ = call(server, "snapshot_sandbox", sandbox_id=box["id"], retain="90d")
    assert failed
    assert text.startswith("invalid_input: --retain 90d exceeds profile.fake's snapshot.max")


def test_snapshot_tools_declare_schemas_and_annotations(server: Any) -> None:
    async def listed() -> Any:
        return await server.list_tools()

    tools = {t.name: t for t in anyio.run(listed)}
    assert tools["delete_snapshot"].annotations.destructive_hint is True
    assert tools["delete_snapshot"].annotations.idempotent_hint is True
    for name in ("list_snapshots", "show_snapshot"):
        assert tools[name].annotations.read_only_hint is True, name
    assert tools["fork_sandbox"].annotations.open_world_hint is True
    assert tools["snapshot_sandbox"].input_schema["required"] == ["sandbox_id"]
    assert tools["show_snapshot"].input_schema["properties"]["snapshot_id"]["pattern"] == \
        "^snap-[a-z2-7]{10}$"
    assert tools["show_snapshot"].output_schema["properties"]["schema"]["const"] == \
        "sandboxer.snapshot/v1"
    source = tools["create_sandbox"].input_schema["properties"]["from_snapshot"]["anyOf"]
    assert {"type": "null"} in source
    assert tools["list_snapshots"].output_schema["properties"]["schema"]["const"] == \
        "sandboxer.snapshots/v1"
