"""stop, start, pause and resume proved with the test-only fake extension's doubles
(tests/fixtures/fake_ext), which core never names: through the CLI (a real `sandboxer`
process, in its own process and through the local service), the HTTP API (a real server)
and MCP (`sandboxer mcp` over stdio)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from tests.api_support import add_token
from tests.integration import test_fake_capabilities as capabilities
from tests.integration.conftest import SANDBOXER
from tests.integration.test_fake_capabilities import Api, Cli

from sandboxer.config import Settings

cli = capabilities.cli  # the same fixtures: a home with the fake profile, a real server
api = capabilities.api
REFUSING = ("id: profile.stubborn\nextension: ext.fake\nttl: {default: 1h, max: 2h}\n"
            "spec: {refuse: pause}\n")


def _state(home: Path, sid: str) -> str:
    return (home / "fake" / sid / "state").read_text()


def _types(cli: Cli, sid: str) -> list[str]:
    return [e["type"] for e in cli.json("events", "--sandbox", sid)["items"]]


@pytest.mark.parametrize("local_service", ["0", "1"])
def test_cli_stop_start_pause_resume(cli: Cli, tmp_path: Path, local_service: str) -> None:
    cli.env["SANDBOXER_LOCAL_SERVICE"] = local_service
    (tmp_path / "profiles" / "stubborn.yaml").write_text(REFUSING)
    sid = cli.json("create", "profile.fake", "-q")["id"]
    stopped = cli.json("stop", sid)
    assert (stopped["schema"], stopped["state"], stopped["reason"]) == (
        "sandboxer.sandbox/v1", "stopped", "stopped")
    assert _state(cli.home, sid) == "stopped"
    again = cli("stop", sid)  # where it leads already: unchanged, exit 0, a table
    assert again.returncode == 0, again.stderr
    assert "stopped" in again.stdout
    for args in (("reachability", "show", sid), ("ssh", sid, "--", "true")):
        refused = cli(*args)
        assert refused.returncode == 8, (args, refused.stderr)
        assert f"sandboxer start {sid}" in refused.stderr, refused.stderr
    longer = cli.json("extend", sid, "--ttl", "90m")
    assert longer["state"] == "stopped"
    wrong = cli("resume", sid, "--json")
    assert wrong.returncode == 8
    assert json.loads(wrong.stdout)["code"] == "conflict"
    started = cli("start", sid, "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["state"] == "ready"
    assert "starting" in started.stderr  # progress on stderr, the document on stdout
    assert cli.json("reachability", "show", sid)["port"] == 2222
    assert cli.json("pause", sid)["state"] == "paused"
    assert _state(cli.home, sid) == "paused"
    paused = cli("start", sid)
    assert paused.returncode == 8
    assert f"sandboxer resume {sid}" in paused.stderr
    assert cli.json("resume", sid)["state"] == "ready"
    assert cli.json("pause", sid)["state"] == "paused"
    assert cli.json("destroy", sid)["items"][0]["state"] == "destroyed"
    assert not (cli.home / "fake" / sid).exists()
    assert _types(cli, sid) == [
        "sandbox.created", "sandbox.ready", "sandbox.stopped", "sandbox.extended",
        "sandbox.started", "sandbox.paused", "sandbox.resumed", "sandbox.paused",
        "sandbox.destroyed"]
    other = cli.json("create", "profile.stubborn", "-q")["id"]
    cannot = cli("pause", other)
    assert cannot.returncode == 4, cannot.stderr
    assert "ext.fake says: this fake sandbox refuses to pause" in cannot.stderr
    assert cli("stop", "sbx-aaaaaaaaaa").returncode == 3


def test_api_lifecycle_routes(api: Api) -> None:
    agent = add_token(Settings.from_env(), "agt")
    mine = {"Authorization": f"Bearer {agent}"}
    made = api.http.post("/v1/sandboxes", json={"profile": "profile.fake"}, headers=mine)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    eve = {"Authorization": f"Bearer {add_token(Settings.from_env(), 'eve')}"}
    for op in ("stop", "start", "pause", "resume"):
        hidden = api.http.post(f"/v1/sandboxes/{sid}/{op}", headers=eve)
        assert (hidden.status_code, hidden.json()["code"]) == (404, "sandbox_not_found"), op
    steps = [("stop", 200, "stopped"), ("stop", 200, "stopped"), ("pause", 409, None),
             ("resume", 409, None), ("start", 200, "ready"), ("pause", 200, "paused"),
             ("start", 409, None), ("resume", 200, "ready"), ("start", 200, "ready")]
    for op, status, state in steps:
        r = api.http.post(f"/v1/sandboxes/{sid}/{op}", headers=mine)
        assert r.status_code == status, (op, r.text)
        if state is None:
            assert r.json()["code"] == "conflict", op
        else:
            assert (r.json()["schema"], r.json()["state"]) == ("sandboxer.sandbox/v1", state)
    stopped = api.http.post(f"/v1/sandboxes/{sid}/stop", headers=mine)
    reach = api.http.get(f"/v1/sandboxes/{sid}/reachability", headers=mine)
    assert (stopped.status_code, reach.status_code) == (200, 409)
    assert "sandboxer start" in reach.json()["message"]
    gone = api.http.delete(f"/v1/sandboxes/{sid}", headers=mine)
    assert gone.json()["state"] == "destroyed"
    after = api.http.post(f"/v1/sandboxes/{sid}/start", headers=mine)
    assert after.status_code == 409, after.text


def test_mcp_lifecycle_tools(cli: Cli) -> None:
    token = add_token(Settings.from_env(cli.env), "agt")
    params = StdioServerParameters(command=SANDBOXER, args=["mcp"],
                                   env={**cli.env, "SANDBOXER_TOKEN": token})
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        with (cli.home.parent / "mcp-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                made = await session.call_tool("create_sandbox", {"profile": "profile.fake"})
                assert not made.is_error, made.content
                assert made.structured_content is not None
                sid = made.structured_content["id"]
                for tool in ("stop_sandbox", "start_sandbox", "pause_sandbox",
                             "resume_sandbox", "resume_sandbox", "stop_sandbox"):
                    done = await session.call_tool(tool, {"sandbox_id": sid})
                    assert not done.is_error, (tool, done.content)
                    assert done.structured_content is not None
                    seen.setdefault("states", []).append(done.structured_content["state"])
                wrong = await session.call_tool("pause_sandbox", {"sandbox_id": sid})
                seen["wrong"] = (wrong.is_error, "".join(
                    getattr(c, "text", "") for c in wrong.content))

    anyio.run(scenario)
    assert seen["states"] == ["stopped", "ready", "paused", "ready", "ready", "stopped"]
    is_error, text = seen["wrong"]
    assert is_error
    assert text.startswith("conflict: cannot pause sandbox"), text
    assert "\n" not in text
