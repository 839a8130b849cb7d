"""Warm pools (sandboxer.pools) with the fake extension and a test double of ``Binds``:
filling, claiming and binding at claim, max_age, capacity, what each caller sees. Every
test that touches the store runs on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sandboxer_fake_ext as fake
from pydantic import SecretStr
from tests.pg_support import Database

from sandboxer import pools
from sandboxer.access import Caller
from sandboxer.config import Settings
from sandboxer.errors import NoTarget, NotFound
from sandboxer.extensions import base as extensions
from sandboxer.extensions.base import Binds, Handle
from sandboxer.models.common import utcnow
from sandboxer.models.profile import PoolSpec
from sandboxer.models.queries import ListRequest
from sandboxer.models.requests import CreateRequest
from sandboxer.service.app import Service

CANARY = "cnry-pool-5c1d0e77a2"
BOUND: dict[str, tuple[dict[str, str], dict[str, str]]] = {}


class BindingFake(fake.FakeExtension, Binds):
    """The fake extension with ``Binds``: records what each sandbox was bound to."""

    async def bind(self, handle: Handle, env: Mapping[str, str],
                   secrets: Mapping[str, SecretStr]) -> None:
        BOUND[handle.sandbox_id] = (dict(env), {k: v.get_secret_value()
                                                for k, v in secrets.items()})


@pytest.fixture
def binds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extensions._cache, "ext.fake", BindingFake)
    BOUND.clear()


@pytest.fixture
def settings(database: Database, home: Path, profiles_dir: Path,
             tmp_path: Path) -> Settings:
    secret = tmp_path / "token"
    secret.write_text(CANARY)
    (profiles_dir / "warm.yaml").write_text(
        "id: profile.warm\nextension: ext.fake\nttl: {default: 1h, max: 3h}\n"
        "labels: {tier: warm}\npool: {size: 2, max_age: 30m}\n"
        "setup:\n  env: {MODE: claimed}\n  instructions: ['echo step > setup-ran']\n"
        f"  secret_refs: [{{name: TOKEN, ref: 'file:{secret}'}}]\n")
    (profiles_dir / "plain.yaml").write_text(
        "id: profile.plain\nextension: ext.fake\npool: {size: 1, max_age: 30m}\n")
    return Settings.from_env()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def pooled_ids(service: Service, profile: str = "profile.warm") -> set[str]:
    return {d["id"] for d in service.store.query_documents(
        profile=profile, pooled=True, states=["provisioning", "ready"])}


# -- decisions -------------------------------------------------------------------------


def _doc(state: str, age: timedelta, now: datetime) -> dict[str, Any]:
    return {"id": f"sbx-{state}-{age.seconds}", "state": state,
            "created_at": (now - age).isoformat().replace("+00:00", "Z")}


def test_refill_decisions() -> None:
    now = utcnow()
    spec = PoolSpec(size=3, max_age=timedelta(minutes=30))
    assert pools.decide(spec, [], now) == pools.Decision(retire=[], missing=3)
    young, old = timedelta(minutes=1), timedelta(minutes=31)
    docs = [_doc("ready", young, now), _doc("provisioning", young, now),
            _doc("ready", old, now), _doc("unreachable", young, now)]
    got = pools.decide(spec, docs, now)
    assert got.retire == [docs[2]["id"]]  # aged: retired and replaced
    assert got.missing == 1  # ready + provisioning count; unreachable does not
    shrunk = PoolSpec(size=1, max_age=timedelta(minutes=30))
    assert pools.decide(shrunk, docs[:2], now) == pools.Decision(retire=[], missing=0)


# -- fill, claim, bind -----------------------------------------------------------------


def test_a_pool_fills_to_size_with_sandboxes_that_have_no_secret(
        settings: Settings, binds: None) -> None:
    service = Service(settings)
    assert run(service.refill_pools()) == 3  # warm: 2, plain: 1
    assert run(service.refill_pools()) == 0  # full
    ids = pooled_ids(service)
    assert len(ids) == 2
    for sid in ids:
        doc = service.store.get_document(sid)
        assert doc is not None
        assert (doc["state"], doc["actor"]) == ("ready", None)
        assert fake.RECEIVED[sid] == {}  # provisioned with no secret
        assert (settings.home / "fake" / sid / "env").read_text() == "[]"  # nor env
        assert not (settings.home / "fake" / sid / "setup-ran").exists()  # steps: at claim
        assert sid not in BOUND
    assert service.list_documents(ListRequest()) == []  # nobody's: not in list


def test_create_claims_a_pooled_sandbox_and_binds_the_request(
        settings: Settings, binds: None) -> None:
    service = Service(settings)
    run(service.refill_pools())
    before = pooled_ids(service)
    s = run(service.create(CreateRequest(profile="profile.warm", ttl="2h", actor="agt",
                                         labels={"run": "9"}, name="mine")))
    assert s.id in before
    assert (s.state, s.actor, s.name) == ("ready", "agt", "mine")
    assert s.labels == {"tier": "warm", "run": "9"}
    assert timedelta(hours=2) - (s.expires_at - s.created_at) < timedelta(seconds=1)
    assert BOUND[s.id] == ({"MODE": "claimed"}, {"TOKEN": CANARY})
    assert (settings.home / "fake" / s.id / "setup-ran").exists()
    assert [e.type for e in service.store.events(sandbox_id=s.id)] == [
        "sandbox.created", "sandbox.ready", "sandbox.claimed", "sandbox.ready"]
    assert pooled_ids(service) == before - {s.id}
    assert [d["id"] for d in service.list_documents(ListRequest())] == [s.id]
    for other in before - {s.id}:  # the one still pooled got nothing
        assert other not in BOUND
    run(service.refill_pools())  # refilled after the claim
    assert len(pooled_ids(service)) == 2


def test_without_a_free_one_or_without_binds_a_create_is_cold(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # An extension without the Binds capability (the fake has it: pools looks for another).
    monkeypatch.setattr(pools, "Binds", type("NoSuchCapability", (), {}))
    service = Service(settings)
    run(service.refill_pools())
    before = pooled_ids(service)
    # The extension cannot bind, and profile.warm has env and a secret: cold.
    s = run(service.create(CreateRequest(profile="profile.warm")))
    assert s.id not in before
    assert pooled_ids(service) == before
    assert fake.RECEIVED[s.id] == {"TOKEN": CANARY}
    # profile.plain binds nothing: claimed even so; then none is free.
    plain = pooled_ids(service, "profile.plain")
    assert run(service.create(CreateRequest(profile="profile.plain"))).id in plain
    assert run(service.create(CreateRequest(profile="profile.plain"))).id not in plain


def test_a_pinned_target_the_pooled_ones_are_not_on_is_a_cold_create(
        settings: Settings, binds: None) -> None:
    service = Service(settings)
    run(service.refill_pools())
    from sandboxer.models.requests import TargetAddRequest

    run(service.targets_add(TargetAddRequest(name="other", url="fake://other")))
    s = run(service.create(CreateRequest(profile="profile.warm", target="other")))
    assert (s.target, s.id in pooled_ids(service)) == ("other", False)
    assert len(pooled_ids(service)) == 2


def test_a_create_from_a_snapshot_is_never_claimed_from_the_pool(
        settings: Settings, binds: None) -> None:
    service = Service(settings)
    run(service.refill_pools())
    before = pooled_ids(service, "profile.plain")
    first = run(service.create(CreateRequest(profile="profile.plain")))  # claimed
    assert first.id in before
    run(service.refill_pools())
    free = pooled_ids(service, "profile.plain")
    from sandboxer.models.requests import SnapshotRequest

    snap = run(service.snapshot(first.id, SnapshotRequest()))
    made = run(service.create(CreateRequest(profile="profile.plain",
                                            from_snapshot=snap.id)))
    assert made.id not in free  # a pooled sandbox holds none of the snapshot's data
    assert made.snapshot == snap.id
    assert pooled_ids(service, "profile.plain") == free


def test_pooled_sandboxes_are_replaced_at_max_age(settings: Settings, binds: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service(settings)
    run(service.refill_pools())
    first = pooled_ids(service)
    later = utcnow() + timedelta(minutes=31)
    monkeypatch.setattr(pools, "utcnow", lambda: later)
    assert run(service.refill_pools()) == 3
    assert pooled_ids(service).isdisjoint(first)
    for sid in first:
        doc = service.store.get_document(sid)
        assert doc is not None
        assert (doc["state"], doc["reason"]) == ("destroyed", pools.RETIRED)
    # And one that close to max_age is not handed out.
    monkeypatch.setattr(pools, "utcnow", lambda: later + timedelta(minutes=29, seconds=55))
    s = run(service.create(CreateRequest(profile="profile.warm")))
    assert s.id not in pooled_ids(service)


def test_pooled_sandboxes_take_capacity(settings: Settings, binds: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CAPACITY", "3")
    service = Service(Settings.from_env())
    run(service.refill_pools())  # three pooled: the target is full
    with pytest.raises(NoTarget):
        run(service.create(CreateRequest(profile="profile.fake")))
    assert run(service.create(CreateRequest(profile="profile.plain"))).state == "ready"


def test_concurrent_creates_claim_different_sandboxes(settings: Settings,
                                                      binds: None) -> None:
    service = Service(settings)
    run(service.refill_pools())
    before = pooled_ids(service)

    async def two() -> list[str]:
        got = await asyncio.gather(*(service.create(CreateRequest(profile="profile.warm"))
                                     for _ in range(3)))
        return [s.id for s in got]

    ids = run(two())
    assert len(set(ids)) == 3
    assert len(before & set(ids)) == 2  # two claimed, the third created cold


def test_what_pools_show_to_an_admin_and_to_an_actor(settings: Settings,
                                                     binds: None) -> None:
    service = Service(settings)
    run(service.refill_pools())
    docs = service.list_pools()
    assert [d["profile"] for d in docs] == ["profile.plain", "profile.warm"]
    warm = service.get_pool("profile.warm")
    assert (warm["schema"], warm["size"], warm["ready"], warm["max_age"]) == (
        "sandboxer.pool/v1", 2, 2, "30m")
    assert {s["id"] for s in warm["sandboxes"]} == pooled_ids(service)
    mine = service.get_pool("profile.warm", caller=Caller(actor="agt", admin=False))
    assert mine["ready"] == 2
    assert mine["sandboxes"] is None
    with pytest.raises(NotFound, match="no pool"):
        service.get_pool("profile.fake")
    # An actor's get of a pooled id answers like an unknown one.
    from sandboxer.errors import SandboxNotFound

    with pytest.raises(SandboxNotFound):
        service.get_document(next(iter(pooled_ids(service))),
                             caller=Caller(actor="agt", admin=False))


def test_the_mcp_tools_answer_the_pool_documents(settings: Settings, binds: None) -> None:
    import anyio

    from sandboxer.client.local import LocalClient
    from sandboxer.mcp.tools import build

    service = Service(settings)
    run(service.refill_pools())
    server = build(LocalClient(service=service, caller=Caller(actor="agt", admin=False)))

    async def calls() -> list[Any]:
        return [await server.call_tool("list_pools", {}),
                await server.call_tool("show_pool", {"profile": "profile.warm"}),
                await server.call_tool("show_pool", {"profile": "profile.fake"})]

    listed, shown, missing = anyio.run(calls)
    assert not listed.is_error
    assert [p["profile"] for p in listed.structured_content["items"]] == [
        "profile.plain", "profile.warm"]
    assert (shown.structured_content["ready"], shown.structured_content["sandboxes"]) == (
        2, None)
    assert missing.is_error
    assert missing.content[0].text.startswith("not_found: profile.fake has no pool")


def test_a_rebind_gives_an_unclaimed_pooled_sandbox_nothing(settings: Settings,
                                                            binds: None) -> None:
    """A restart of the pool's host (Host.rebind) must not bind secrets into one."""
    service = Service(settings)
    run(service.refill_pools())
    for sid in pooled_ids(service):
        assert run(service.manager.rebind(sid)) is True
        assert sid not in BOUND
        assert service.store.get(sid).state == "ready"  # type: ignore[union-attr]
