"""An MCP client from the official SDK drives `sandboxer mcp` over stdio: create, reach with
the system OpenSSH client, destroy; errors are clear text; no secret in any result. Over
ext.fake: the tools' schemas and annotations, and the errors of bad arguments are the CLI's
(``CODE: message``); the MCP Inspector's CLI lists the same tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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

from .conftest import serve_env

pytestmark = pytest.mark.integration
TOOLS = {"list_profiles", "create_sandbox", "get_sandbox", "list_sandboxes", "extend_sandbox",
         "stop_sandbox", "start_sandbox", "pause_sandbox", "resume_sandbox",
         "destroy_sandbox", "get_reachability", "list_pools", "show_pool", "list_targets",
         "build_image", "doctor", "snapshot_sandbox", "list_snapshots", "show_snapshot",
         "delete_snapshot", "fork_sandbox"}


@pytest.mark.usefixtures("database")
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


def _fake_env(tmp_path: Path) -> dict[str, str]:
    env = serve_env(tmp_path / "home")
    env["SANDBOXER_TOKEN"] = add_token(Settings.from_env(env), "agt")
    return env


def _cli_error(env: dict[str, str], *argv: str) -> tuple[int, str]:
    """The CLI's exit code and the last line of its error for ``argv``."""
    done = subprocess.run([SANDBOXER, *argv], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert done.returncode != 0, done.stdout
    return done.returncode, done.stderr.strip().splitlines()[-1]


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.usefixtures("database")
def test_mcp_schemas_annotations_and_errors_match_the_cli(tmp_path: Path) -> None:
    from sandboxer.errors import EXIT_CODES, InvalidInput, ProfileNotFound

    env = _fake_env(tmp_path)
    params = StdioServerParameters(command=SANDBOXER, args=["mcp"], env=env)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        with (tmp_path / "mcp-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                seen["tools"] = {t.name: t for t in (await session.list_tools()).tools}
                for name, args in {
                        "ttl": ("create_sandbox", {"profile": "profile.fake", "ttl": "bogus"}),
                        "profile": ("create_sandbox", {"profile": "profile.nope"}),
                        "state": ("list_sandboxes", {"state": ["bogus"]}),
                        "missing": ("create_sandbox", {}),
                        "extend": ("extend_sandbox", {"sandbox_id": "sbx-aaaaaaaaaa",
                                                      "ttl": "soon"})}.items():
                    result = await session.call_tool(args[0], args[1])
                    assert result.is_error, (name, _text(result))
                    seen[name] = _text(result)
                box = await session.call_tool("create_sandbox",
                                              {"profile": "profile.fake", "ttl": "10m",
                                               "labels": {"team": "mcp"}})
                assert not box.is_error, _text(box)
                assert isinstance(box.structured_content, dict)
                sandbox_id = box.structured_content["id"]
                listed = await session.call_tool("list_sandboxes", {"state": ["ready"]})
                assert listed.structured_content is not None
                assert [d["id"] for d in listed.structured_content["items"]] == [sandbox_id]
                gone = await session.call_tool("destroy_sandbox", {"sandbox_id": sandbox_id})
                assert gone.structured_content is not None
                assert gone.structured_content["state"] == "destroyed"

    anyio.run(scenario)
    tools = seen["tools"]
    assert set(tools) == TOOLS
    for tool in tools.values():  # typed results, described parameters
        assert tool.output_schema, tool.name
        assert tool.output_schema["type"] == "object", tool.name
        assert tool.annotations is not None, tool.name
        assert tool.annotations.title, tool.name
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), (tool.name, name)
    create = tools["create_sandbox"]
    assert create.input_schema["required"] == ["profile"]
    ttl = create.input_schema["properties"]["ttl"]["anyOf"][0]
    assert ttl["pattern"] == "^[0-9]{1,9}[smhd]$"
    assert tools["get_sandbox"].input_schema["properties"]["sandbox_id"]["pattern"] == \
        "^sbx-[a-z2-7]{10}$"
    states = tools["list_sandboxes"].input_schema["properties"]["state"]["anyOf"][0]
    assert states["items"]["enum"] == ["provisioning", "ready", "unreachable", "stopped",
                                       "paused", "destroying", "destroyed", "failed"]
    assert "state" in tools["get_sandbox"].output_schema["properties"]
    hints = {n: t.annotations for n, t in tools.items()}
    assert hints["destroy_sandbox"].destructive_hint is True
    assert hints["destroy_sandbox"].idempotent_hint is True
    assert hints["create_sandbox"].idempotent_hint is False
    assert hints["create_sandbox"].read_only_hint is False
    assert hints["stop_sandbox"].destructive_hint is True
    for name in ("stop_sandbox", "start_sandbox", "pause_sandbox", "resume_sandbox"):
        assert hints[name].idempotent_hint is True, name
        assert hints[name].read_only_hint is False, name
    for name in ("get_sandbox", "list_sandboxes", "get_reachability", "list_profiles",
                 "list_pools", "show_pool"):
        assert hints[name].read_only_hint is True, name
        assert hints[name].destructive_hint is False, name

    # The same input, the same error as the CLI: CODE: message, one line, no SDK prefix.
    for text in (seen[k] for k in ("ttl", "profile", "state", "missing", "extend")):
        assert "\n" not in text, text
        assert "Error executing tool" not in text, text
        assert "pydantic" not in text, text
        assert "Traceback" not in text, text
    rc, cli = _cli_error(env, "create", "profile.fake", "--ttl", "bogus")
    assert (rc, EXIT_CODES[rc]) == (InvalidInput.exit_code, "invalid input or profile")
    assert seen["ttl"] == f"invalid_input: {cli.removeprefix('sandboxer: ')}"
    assert seen["ttl"] == "invalid_input: expected a duration like 90s, 15m, 8h or 7d, " \
        "got 'bogus'"
    rc, cli = _cli_error(env, "create", "profile.nope")
    assert rc == ProfileNotFound.exit_code
    assert seen["profile"] == f"profile_not_found: {cli.removeprefix('sandboxer: ')}"
    rc, cli = _cli_error(env, "list", "--state", "bogus")
    assert rc == InvalidInput.exit_code
    assert seen["state"] == f"invalid_input: {cli.removeprefix('sandboxer: ')}"
    assert seen["state"].startswith("invalid_input: state 'bogus' is not a sandbox state")
    assert seen["missing"] == "usage: the following arguments are required: profile"
    rc, cli = _cli_error(env, "extend", "sbx-aaaaaaaaaa", "--ttl", "soon")
    assert seen["extend"] == f"invalid_input: {cli.removeprefix('sandboxer: ')}"


NPX = shutil.which("npx")


@pytest.mark.skipif(NPX is None, reason="the MCP Inspector runs on node: npx is not installed")
def test_the_mcp_inspector_cli_lists_and_calls_the_tools(tmp_path: Path) -> None:
    env = _fake_env(tmp_path)
    inspector = [str(NPX), "-y", "@modelcontextprotocol/inspector", "--cli"]
    passed = [a for k in ("SANDBOXER_HOME", "SANDBOXER_PROFILES", "SANDBOXER_TOKEN",
                          "PYTHONPATH") for a in ("-e", f"{k}={env[k]}")]

    def inspect(*method: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*inspector, *passed, SANDBOXER, "mcp", "--", *method],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300, check=False,
                              cwd=tmp_path)

    listed = inspect("--method", "tools/list")
    if listed.returncode != 0 and "npm" in listed.stderr and "ERR" in listed.stderr:
        pytest.skip(f"npx could not fetch the MCP Inspector: {listed.stderr[-500:]}")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    tools = {t["name"]: t for t in json.loads(listed.stdout)["tools"]}
    assert set(tools) == TOOLS
    assert tools["destroy_sandbox"]["annotations"]["destructiveHint"] is True
    assert tools["get_sandbox"]["annotations"]["readOnlyHint"] is True
    assert "outputSchema" in tools["create_sandbox"]
    bad = inspect("--method", "tools/call", "--tool-name", "create_sandbox",
                  "--tool-arg", "profile=profile.fake", "--tool-arg", "ttl=bogus")
    assert "invalid_input: expected a duration like 90s, 15m, 8h or 7d, got 'bogus'" in \
        bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert "Error executing tool" not in bad.stdout + bad.stderr
