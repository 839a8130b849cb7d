"""A create whose target concurrent creates filled (the insert's capacity check refuses it)
is placed again with the new counts; one that named its target is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxer.config import Settings
from sandboxer.errors import NoTarget, TargetTaken
from sandboxer.models.requests import CreateRequest, TargetAddRequest
from sandboxer.service.app import Service


def _two_targets(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("FAKE_UNHEALTHY", "1")  # the implicit target is out of the way
    fresh = Settings.from_env()
    service = Service(fresh)
    for name in ("a", "b"):
        asyncio.run(service.targets_add(TargetAddRequest(
            name=name, url=f"fake://{name}", extension="ext.fake", capacity=1)))
    service.close()
    return fresh


def _racing(service: Service, rival: Service) -> list[str]:
    """Before the first plan of ``service`` reaches its insert, ``rival`` really creates a
    sandbox on the target that plan chose (a concurrent create on another replica)."""
    planned: list[str] = []
    real = service.manager.plan

    async def plan(*args: Any, **kwargs: Any) -> Any:
        found = await real(*args, **kwargs)
        planned.append(found[0].target.name)
        if len(planned) == 1:
            await rival.create(CreateRequest(profile="profile.fake",
                                             target=found[0].target.name))
        return found

    service.manager.plan = plan  # type: ignore[method-assign]
    return planned


def test_a_create_that_lost_its_target_is_placed_again(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    fresh = _two_targets(monkeypatch, settings)
    service, rival = Service(fresh), Service(fresh)
    planned = _racing(service, rival)
    made = asyncio.run(service.create(CreateRequest(profile="profile.fake")))
    assert made.state == "ready"
    assert len(planned) == 2
    assert made.target != planned[0]  # the other target, with room
    live = {d["target"] for d in service.store.query_documents(states=["ready"])}
    assert live == {"a", "b"}  # one each: no target over its capacity of 1
    service.close()
    rival.close()


def test_a_create_that_named_its_target_is_not_moved(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    fresh = _two_targets(monkeypatch, settings)
    service, rival = Service(fresh), Service(fresh)
    planned = _racing(service, rival)
    with pytest.raises(TargetTaken, match="another create took the last slot") as e:
        asyncio.run(service.create(CreateRequest(profile="profile.fake", target="a")))
    assert isinstance(e.value, NoTarget)
    assert e.value.code == "no_target"
    assert planned == ["a"]
    assert service.store.query_documents(states=["failed", "provisioning"]) == []
    service.close()
    rival.close()
