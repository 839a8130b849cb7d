"""The seams proved with the test-only fake extension (tests/fixtures/fake_ext), which core
never names: its own targets (add, list, check, remove), its image build and its doctor
check, through the CLI (a real `sandboxer` process), the HTTP API (a real server) and MCP
(`sandboxer mcp` driven by the `mcp` SDK's client over stdio).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from tests.api_support import ApiServer, add_token
from tests.integration.conftest import SANDBOXER

from sandboxer.config import Settings

FAKE_EXT = Path(__file__).parents[1] / "fixtures" / "fake_ext"
FAKE_PROFILE = ("id: profile.fake\ndescription: test double\nextension: ext.fake\n"
                "ttl: {default: 1h, max: 2h}\nspec: {}\n")


@dataclass
class Cli:
    env: dict[str, str]
    home: Path

    def __call__(self, *args: str, extra: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOXER, *args], env={**self.env, **(extra or {})},
                              capture_output=True, text=True, timeout=120, check=False,
                              stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        return json.loads(done.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "fake.yaml").write_text(FAKE_PROFILE)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SANDBOXER_", "FAKE_"))}
    env.update(SANDBOXER_HOME=str(tmp_path / "home"), SANDBOXER_PROFILES=str(profiles),
               HOME=str(tmp_path / "user"),
               PYTHONPATH=os.pathsep.join([str(FAKE_EXT), *sys.path]))
    return Cli(env, tmp_path / "home")


def _names(listed: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(i["name"], i["extension"], i["implicit"]) for i in listed["items"]]


# -- CLI --------------------------------------------------------------------------------


def test_cli_fake_targets_add_list_check_remove(cli: Cli) -> None:
    listed = cli.json("targets", "list")
    assert listed["schema"] == "sandboxer.targets/v1"
    assert ("fake-1", "ext.fake", True) in _names(listed)
    added = cli.json("targets", "add", "t1", "fake://anything", "--capacity", "2")
    assert added["schema"] == "sandboxer.target/v1"
    assert (added["name"], added["extension"], added["capacity"]) == ("t1", "ext.fake", 2)
    assert ("t1", "ext.fake", False) in _names(cli.json("targets", "list"))
    table = cli("targets", "list")
    assert table.returncode == 0, table.stderr
    assert "fake://anything" in table.stdout
    (check,) = cli.json("targets", "check", "t1")["items"]
    assert (check["name"], check["ok"], check["capacity"], check["used"]) == ("t1", True, 2, 0)
    again = cli("targets", "add", "t1", "fake://other")
    assert again.returncode == 8, again.stderr
    assert "a target named 't1' exists already" in again.stderr
    bad = cli("targets", "add", "t2", "gopher://x")
    assert bad.returncode == 4, bad.stderr
    assert "fake:// (ext.fake)" in bad.stderr
    implicit = cli("targets", "remove", "fake-1")
    assert implicit.returncode == 4, implicit.stderr
    removed = cli.json("targets", "remove", "t1")
    assert removed == {"schema": "sandboxer.target-removed/v1", "name": "t1"}
    assert ("t1", "ext.fake", False) not in _names(cli.json("targets", "list"))
    gone = cli("targets", "check", "t1")
    assert gone.returncode == 3, gone.stderr


def test_cli_builds_the_fake_image(cli: Cli) -> None:
    built = cli.json("images", "build", "fake-image", "--target", "t9")
    marker = cli.home / "fake-images" / "fake-image"
    assert built == {"schema": "sandboxer.image/v1", "image": "fake/fake-image:1",
                     "target": "t9", "path": str(marker), "built": True}
    assert marker.is_file()
    cached = cli("images", "build", "fake-image")
    assert cached.returncode == 0, cached.stderr
    assert f"fake/fake-image:1 is cached at {marker}" in cached.stdout
    nobody = cli("images", "build", "no-such-image")
    assert nobody.returncode == 4, nobody.stderr
    assert "fake-image" in nobody.stderr


def test_cli_doctor_runs_the_fake_check(cli: Cli) -> None:
    done = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["fake extension"]["ok"], checks
    failing = cli("doctor", "--json", extra={"FAKE_DOCTOR_FAIL": "1"})
    assert failing.returncode == 1
    doc = json.loads(failing.stdout)
    assert doc["ok"] is False
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["fake extension"] == {
        "name": "fake extension", "ok": False,
        "detail": "switched off by FAKE_DOCTOR_FAIL=1", "fix": "unset FAKE_DOCTOR_FAIL"}


# -- HTTP API ---------------------------------------------------------------------------


@dataclass
class Api:
    http: httpx.Client
    home: Path


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "fake.yaml").write_text(FAKE_PROFILE)
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SANDBOXER_PROFILES", str(profiles))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    settings = Settings.from_env()
    root = add_token(settings, "root", admin=True)
    with ApiServer(settings) as server, httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {root}"},
            timeout=60) as http:
        yield Api(http, settings.home)


def test_api_fake_targets_add_list_check_remove(api: Api) -> None:
    listed = api.http.get("/v1/targets")
    assert listed.status_code == 200, listed.text
    assert ("fake-1", "ext.fake", True) in _names(listed.json())
    added = api.http.post("/v1/targets", json={"name": "t1", "url": "fake://anything",
                                               "capacity": 2})
    assert added.status_code == 201, added.text
    assert (added.json()["name"], added.json()["extension"]) == ("t1", "ext.fake")
    assert ("t1", "ext.fake", False) in _names(api.http.get("/v1/targets").json())
    checked = api.http.get("/v1/targets/check", params={"name": "t1"})
    assert checked.status_code == 200, checked.text
    (check,) = checked.json()["items"]
    assert (check["name"], check["ok"], check["capacity"]) == ("t1", True, 2)
    implicit = api.http.delete("/v1/targets/fake-1")
    assert implicit.status_code == 422, implicit.text
    removed = api.http.delete("/v1/targets/t1")
    assert removed.status_code == 200, removed.text
    assert ("t1", "ext.fake", False) not in _names(api.http.get("/v1/targets").json())
    assert api.http.get("/v1/targets/check", params={"name": "t1"}).status_code == 404


def test_api_builds_the_fake_image(api: Api) -> None:
    built = api.http.post("/v1/images/fake-image/build", json={"target": "t9"})
    assert built.status_code == 200, built.text
    marker = api.home / "fake-images" / "fake-image"
    assert built.json() == {"schema": "sandboxer.image/v1", "image": "fake/fake-image:1",
                            "target": "t9", "path": str(marker), "built": True}
    assert marker.is_file()


def test_api_doctor_runs_the_fake_check(api: Api) -> None:
    done = api.http.get("/v1/doctor")
    assert done.status_code == 200, done.text
    doc = done.json()
    assert doc["schema"] == "sandboxer.doctor/v1"
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["fake extension"]["ok"], checks
    assert {"state store", "ssh client", "home permissions"} <= set(checks)


def test_api_doctor_is_for_admins(api: Api) -> None:
    agent = add_token(Settings.from_env(), "agt")
    refused = api.http.get("/v1/doctor", headers={"Authorization": f"Bearer {agent}"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "forbidden"


# -- MCP --------------------------------------------------------------------------------


def test_mcp_fake_targets_image_and_doctor(cli: Cli) -> None:
    token = add_token(Settings.from_env(cli.env), "root", admin=True)
    added = cli.json("targets", "add", "t1", "fake://anything", "--capacity", "3")
    assert added["extension"] == "ext.fake"
    params = StdioServerParameters(command=SANDBOXER, args=["mcp"],
                                   env={**cli.env, "SANDBOXER_TOKEN": token})
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        with (cli.home.parent / "mcp-stderr.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                tools = {t.name: t for t in (await session.list_tools()).tools}
                seen["read_only"] = {n: bool(t.annotations and t.annotations.read_only_hint)
                                     for n, t in tools.items()}
                for name, args in (("list_targets", {}),
                                   ("build_image", {"name": "fake-image", "target": "t1"}),
                                   ("doctor", {})):
                    result = await session.call_tool(name, args)
                    assert not result.is_error, result.content
                    seen[name] = result.structured_content

    anyio.run(scenario)
    assert seen["read_only"]["list_targets"]
    assert seen["read_only"]["doctor"]
    assert not seen["read_only"]["build_image"]
    rows = {(i["name"], i["extension"]) for i in seen["list_targets"]["items"]}
    assert {("fake-1", "ext.fake"), ("t1", "ext.fake")} <= rows
    assert seen["build_image"]["image"] == "fake/fake-image:1"
    assert (cli.home / "fake-images" / "fake-image").is_file()
    checks = {c["name"]: c for c in seen["doctor"]["checks"]}
    assert checks["fake extension"]["ok"], checks
