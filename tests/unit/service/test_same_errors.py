"""One input, one error: the same code and message through the in-process client (the
CLI), the HTTP API through HttpClient (the remote CLI, SANDBOXER_URL) and MCP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from tests.api_support import ApiServer, add_token

from sandboxer.access import Caller
from sandboxer.client import Client
from sandboxer.client.http import HttpClient
from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import SandboxerError

Call = Callable[[Client], Any]

# (what is asked, the MCP tool and its arguments or None when MCP has no such input)
CASES: dict[str, tuple[Call, tuple[str, dict[str, Any]] | None]] = {
    "unknown target": (lambda c: c.create("profile.fake", target="nope"), None),
    "unknown target (plan)": (lambda c: c.plan("profile.fake", target="nope"), None),
    "bad ttl": (lambda c: c.create("profile.fake", ttl="soon"),
                ("create_sandbox", {"profile": "profile.fake", "ttl": "soon"})),
    "bad ttl (plan)": (lambda c: c.plan("profile.fake", ttl="5 weeks"), None),
    "bad actor": (lambda c: c.create("profile.fake", actor="not an actor!"), None),
    "bad name": (lambda c: c.create("profile.fake", name="two\nlines"),
                 ("create_sandbox", {"profile": "profile.fake", "name": "two\nlines"})),
    "unknown state": (lambda c: c.list_documents(states=["bogus"]),
                      ("list_sandboxes", {"state": ["bogus"]})),
    "bad actor filter": (lambda c: c.list_documents(actor="not an actor!"), None),
    "bad extend ttl": (lambda c: c.extend("sbx-aaaaaaaaaa", "forever"),
                       ("extend_sandbox", {"sandbox_id": "sbx-aaaaaaaaaa", "ttl": "forever"})),
    "stop unknown": (lambda c: c.stop("sbx-aaaaaaaaaa"),
                     ("stop_sandbox", {"sandbox_id": "sbx-aaaaaaaaaa"})),
    "resume unknown": (lambda c: c.resume("sbx-aaaaaaaaaa"),
                       ("resume_sandbox", {"sandbox_id": "sbx-aaaaaaaaaa"})),
}


@pytest.fixture
def transports(settings: Settings) -> Iterator[dict[str, Client]]:
    token = add_token(settings, "root", admin=True)
    with ApiServer(settings, background=False) as server, \
            HttpClient(server.url, token, settings=settings) as http:
        yield {"local": LocalClient(settings),
               "local as actor": LocalClient(settings, caller=Caller("root", admin=True)),
               "http": http}


def _error(fn: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(SandboxerError) as e:
        fn()
    return e.value.code, e.value.render()


def _mcp_error(client: Client, tool: str, args: dict[str, Any]) -> tuple[str, str]:
    from sandboxer.mcp.server import build

    async def call() -> Any:
        return await build(client).call_tool(tool, args)

    try:
        result = anyio.run(call)
    except Exception as e:  # the ToolError the tool raised: "code: message"
        text = str(e)
    else:
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert result.is_error, text
    # The SDK's own "Error executing tool NAME: " wrapper is not ours; what follows is
    # the tool's documented "CODE: message".
    prefix = f"Error executing tool {tool}: "
    code, _, message = text.removeprefix(prefix).partition(": ")
    return code, message


@pytest.mark.parametrize("case", CASES)
def test_the_same_input_gets_the_same_error_everywhere(
        transports: dict[str, Client], case: str) -> None:
    call, tool = CASES[case]
    seen = {name: _error(lambda c=client: call(c)) for name, client in transports.items()}
    if tool is not None:
        seen["mcp"] = _mcp_error(transports["local"], *tool)
    assert len(set(seen.values())) == 1, seen
    code, _message = seen["local"]
    assert code in ("not_found", "invalid_input", "sandbox_not_found"), seen


def test_an_unknown_target_names_the_known_ones(transports: dict[str, Client]) -> None:
    code, message = _error(lambda: transports["http"].create("profile.fake", target="nope"))
    assert code == "not_found"
    assert "no target 'nope' for ext.fake" in message
    assert "fake-1" in message


ARGV: dict[str, list[str]] = {
    "unknown target": ["create", "profile.fake", "--target", "nope"],
    "bad ttl": ["create", "profile.fake", "--ttl", "soon"],
    "bad actor": ["create", "profile.fake", "--actor", "not an actor!"],
    "unknown state": ["list", "--state", "bogus"],
    "bad extend ttl": ["extend", "sbx-aaaaaaaaaa", "--ttl", "forever"],
}


@pytest.mark.parametrize("case", ARGV)
# The CLI leaves its HttpClient to process exit; here that is a socket left to the GC.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_cli_and_the_remote_cli_agree(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], case: str) -> None:
    import gc
    import json

    from sandboxer.cli.main import main

    token = add_token(settings, "root", admin=True)
    documents = []
    with ApiServer(settings, background=False) as server:
        for url in (None, server.url):
            if url is None:
                monkeypatch.delenv("SANDBOXER_URL", raising=False)
            else:
                monkeypatch.setenv("SANDBOXER_URL", url)
                monkeypatch.setenv("SANDBOXER_TOKEN", token)
            exit_code = main([*ARGV[case], "--json", "-q"] if ARGV[case][0] == "create"
                             else [*ARGV[case], "--json"])
            doc = json.loads(capsys.readouterr().out)
            documents.append((exit_code, doc["code"], doc["message"]))
        gc.collect()
    local, remote = documents
    assert local == remote
    call, _tool = CASES[case]
    assert local[1:] == _error(lambda: call(LocalClient(settings)))
