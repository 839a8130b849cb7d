"""The MCP tools in process: schemas, annotations, and errors as ``CODE: message``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sandboxer import checks
from sandboxer.errors import InvalidInput, SandboxNotFound
from sandboxer.mcp.tools import build
from sandboxer.values import parse_duration


class FakeClient:
    """Just enough of a Client: errors the way the service raises them."""

    def list_documents(self, **filters: Any) -> list[dict[str, Any]]:
        checks.states(filters.get("states"))  # as the service refuses an unknown state
        return []

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}",
                              hint="see `sandboxer list --all`")

    def create(self, profile: str, **options: Any) -> Any:
        try:
            parse_duration(options["ttl"])
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        raise AssertionError("not reached")

    def list_profiles(self) -> list[dict[str, Any]]:
        return [{"id": "profile.x", "description": "", "extension": "ext.fake",
                 "source": "/x.yaml", "surprise": True}]  # not what the model says


def call(name: str, args: dict[str, Any]) -> tuple[bool, str, Any]:
    server = build(FakeClient())  # type: ignore[arg-type]

    async def run() -> Any:
        return await server.call_tool(name, args)

    result = anyio.run(run)
    return result.is_error, "".join(c.text for c in result.content), result.structured_content


@pytest.mark.parametrize(("name", "args", "text"), [
    ("list_sandboxes", {"state": ["bogus"]},
     "invalid_input: state 'bogus' is not a sandbox state. Expected one of provisioning, "
     "ready, unreachable, stopped, paused, destroying, destroyed, failed"),
    ("get_sandbox", {"sandbox_id": "sbx-aaaaaaaaaa"},
     "sandbox_not_found: no sandbox with id 'sbx-aaaaaaaaaa'. See `sandboxer list --all`"),
    ("create_sandbox", {"profile": "profile.x", "ttl": "bogus"},
     "invalid_input: expected a duration like 90s, 15m, 8h or 7d, got 'bogus'"),
    ("create_sandbox", {}, "usage: the following arguments are required: profile"),
    ("list_sandboxes", {"all": "maybe"},
     "invalid_input: all: Input should be a valid boolean, unable to interpret input"),
    ("no_such_tool", {}, "usage: unknown tool: no_such_tool"),
    ("list_profiles", {}, "unexpected: unexpected error (ValidationError); see the server log"),
])
def test_tool_errors_read_code_colon_message(name: str, args: dict[str, Any],
                                              text: str) -> None:
    is_error, got, _ = call(name, args)
    assert is_error
    assert got == text


def test_results_are_the_documents_of_the_output_schema() -> None:
    is_error, _text, structured = call("list_sandboxes", {"state": ["ready"], "all": True})
    assert not is_error
    assert structured == {"schema": "sandboxer.sandboxes/v1", "items": []}


def test_tools_declare_schemas_and_annotations() -> None:
    server = build(FakeClient())  # type: ignore[arg-type]

    async def listed() -> Any:
        return await server.list_tools()

    tools = {t.name: t for t in anyio.run(listed)}
    assert tools["destroy_sandbox"].annotations.destructive_hint is True
    assert tools["create_sandbox"].annotations.idempotent_hint is False
    assert tools["stop_sandbox"].annotations.destructive_hint is True
    for name in ("stop_sandbox", "start_sandbox", "pause_sandbox", "resume_sandbox"):
        assert tools[name].annotations.idempotent_hint is True, name
        assert tools[name].output_schema["properties"]["state"], name
        assert tools[name].input_schema["required"] == ["sandbox_id"], name
    assert tools["get_reachability"].annotations.read_only_hint is True
    labels = tools["create_sandbox"].input_schema["properties"]["labels"]["anyOf"][0]
    assert labels["propertyNames"]["pattern"].startswith("^[a-z0-9]")
    assert tools["list_profiles"].output_schema["properties"]["schema"]["const"] == \
        "sandboxer.profiles/v1"
