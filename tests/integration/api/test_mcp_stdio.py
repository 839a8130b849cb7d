"""An MCP client from the official SDK drives `sandboxer mcp` over stdio: create, reach with
the system OpenSSH client, destroy; errors are clear text; no secret in any result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from tests.api_support import add_token
from tests.integration.conftest import SANDBOXER, ssh
from tests.integration.test_secrets_local import canary

from sandboxer.config import Settings

pytestmark = pytest.mark.integration
TOOLS = {"list_profiles", "create_sandbox", "get_sandbox", "list_sandboxes", "extend_sandbox",
         "destroy_sandbox", "get_reachability"}


def test_mcp_create_reach_destroy(local_home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = canary("mcp")
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "sec.yaml").write_text(
        "id: profile.sec\nextends: profile.local\nsetup:\n"
        "  secret_refs: [{name: TOKEN, ref: 'env:SBX_CANARY_MCP'}]\n")
    token = add_token(local_home, "agt")
    env = {**os.environ, "SANDBOXER_TOKEN": token, "SBX_CANARY_MCP": secret}
    env.pop("SANDBOXER_URL", None)
    params = StdioServerParameters(command=SANDBOXER, args=["mcp"], env=env)
    texts: list[str] = []

    async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
        result = await session.call_tool(tool, args)
        text = "".join(getattr(c, "text", "") for c in result.content)
        texts.append(text)
        assert not result.is_error, text
        assert isinstance(result.structured_content, dict)
        return result.structured_content

    async def scenario() -> None:
        with (Path(local_home.home) / "mcp-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                assert {t.name for t in listed.tools} == TOOLS
                ids = [p["id"] for p in (await call(session, "list_profiles"))["items"]]
                assert "profile.sec" in ids
                box = await call(session, "create_sandbox", profile="profile.sec", ttl="10m")
                assert (box["state"], box["actor"]) == ("ready", "agt")
                reach = await call(session, "get_reachability", sandbox_id=box["id"])
                done = await anyio.to_thread.run_sync(
                    lambda: ssh(reach, 'test -n "$TOKEN" && echo "reached $(id -un)"'))
                assert done.returncode == 0, done.stderr
                assert done.stdout.decode().startswith("reached ")
                mine = await call(session, "list_sandboxes")
                assert [d["id"] for d in mine["items"]] == [box["id"]]
                assert (await call(session, "extend_sandbox", sandbox_id=box["id"],
                                   ttl="20m"))["state"] == "ready"
                bad = await session.call_tool("get_sandbox", {"sandbox_id": "sbx-aaaaaaaaaa"})
                assert bad.is_error
                message = "".join(getattr(c, "text", "") for c in bad.content)
                assert "sandbox_not_found: no sandbox with id 'sbx-aaaaaaaaaa'" in message
                assert "Traceback" not in message
                worse = await session.call_tool("extend_sandbox",
                                                {"sandbox_id": box["id"], "ttl": "9999d"})
                assert worse.is_error
                assert "ttl.max" in "".join(getattr(c, "text", "") for c in worse.content)
                gone = await call(session, "destroy_sandbox", sandbox_id=box["id"])
                assert gone["state"] == "destroyed"
                assert (await call(session, "get_sandbox", sandbox_id=box["id"]))[
                    "state"] == "destroyed"

    anyio.run(scenario)
    everything = "\n".join(texts) + json.dumps(texts)
    assert secret not in everything
    assert secret not in (Path(local_home.home) / "mcp-stderr.log").read_text()


def test_mcp_refuses_to_start_without_a_token(local_home: Settings) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOXER_TOKEN", "SANDBOXER_URL")}
    done = subprocess.run([SANDBOXER, "mcp"], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert done.returncode == 2
    assert "Set SANDBOXER_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
