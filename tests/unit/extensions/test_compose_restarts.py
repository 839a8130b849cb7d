"""ext.compose-ssh restart watch: a new StartedAt of a running container means rebind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sandboxer.config import Settings
from sandboxer.extensions.base import Handle
from sandboxer.extensions.compose_ssh import restarts

SID = "sbx-aaaaaaaaaa"


class Runner:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def inspect(self, container: str) -> dict[str, Any]:
        return {"State": self.state}


class Ext:
    def __init__(self, settings: Settings, state: dict[str, Any]) -> None:
        self.settings, self.state = settings, state

    async def runner(self, target: str) -> Runner:
        return Runner(self.state)

    async def main_container(self, r: Runner, handle: Handle) -> str:
        return "main"


class Host:
    def __init__(self, answer: bool) -> None:
        self.answer, self.calls = answer, 0

    async def rebind(self, sandbox_id: str) -> bool:
        self.calls += 1
        return self.answer


def test_a_new_start_time_rebinds_once_and_a_refusal_forgets(tmp_path: Path) -> None:
    settings = Settings.from_env({"SANDBOXER_HOME": str(tmp_path)})
    state = {"Running": True, "StartedAt": "t1"}
    ext, host = Ext(settings, state), Host(True)
    handle = Handle(sandbox_id=SID, extension="ext.compose-ssh", target="local")

    def check() -> list[str]:
        return asyncio.run(restarts.check(ext, host, [handle]))  # type: ignore[arg-type]

    assert check() == []  # no record yet (an older sandbox): recorded from now on
    assert restarts.recorded(settings, SID) == "t1"
    state["StartedAt"] = "t2"
    state["Paused"] = True
    assert check() == []  # paused: nothing to bind now
    state["Paused"] = False
    assert check() == [SID]
    assert check() == []
    assert host.calls == 1
    assert restarts.recorded(settings, SID) == "t2"
    state["StartedAt"], host.answer = "t3", False
    assert check() == []  # core stopped it: no record until it is bound again
    assert restarts.recorded(settings, SID) is None
    restarts.forget(settings, SID)  # missing is fine
