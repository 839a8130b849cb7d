"""Warm pools on real ext.local sandboxes (jails reached over SSH): the pool fills to its
size with sandboxes that are ready and hold nothing of a caller's, a create claims one and
binds the request, the pool refills, replaces at max_age, takes capacity, and two
concurrent creates never get the same one. With ext.local's ``Binds``, the claimed
sandbox's new sessions see the env and the secret (a canary), the pooled ones do not, and
the canary is in no file of ours."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from tests.canary_support import leaks

from sandboxer import pools
from sandboxer.config import Settings
from sandboxer.errors import NoTarget
from sandboxer.extensions import base as extensions
from sandboxer.models.common import utcnow
from sandboxer.models.queries import ListRequest
from sandboxer.models.requests import CreateRequest
from sandboxer.service.app import Service

from .conftest import ssh

pytestmark = pytest.mark.integration


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def pooled(service: Service, profile: str = "profile.warm") -> dict[str, dict[str, object]]:
    return {d["id"]: d for d in service.store.query_documents(
        profile=profile, pooled=True, states=["provisioning", "ready"])}


def filled(service: Service, profile: str = "profile.warm",
           n: int = 2) -> dict[str, dict[str, object]]:
    """The pool's ready sandboxes once it holds ``n``: refilled here, and maybe by the
    local service beside (the keeper a create started hosts ext.local's pools too)."""
    deadline = time.monotonic() + 120
    while True:
        run(service.refill_pools())
        ready = {k: d for k, d in pooled(service, profile).items() if d["state"] == "ready"}
        if len(ready) == n:
            return ready
        assert time.monotonic() < deadline, f"the pool of {profile} never held {n}"
        time.sleep(0.05)


@pytest.fixture
def drained(local_home: Settings, tmp_path: Path) -> Iterator[Path]:
    """The profiles directory; afterwards its pools are removed (so no host of pools
    refills them) and every pooled sandbox is destroyed, before the home goes."""
    yield tmp_path / "profiles"
    for f in (tmp_path / "profiles").glob("*.yaml"):
        f.unlink()
    service = Service(Settings.from_env())
    deadline = time.monotonic() + 60
    while left := service.store.query_documents(pooled=True, states=[
            "provisioning", "ready", "unreachable", "destroying"]):
        for doc in left:
            if doc["state"] != "provisioning":
                run(service.destroy(doc["id"]))
        assert time.monotonic() < deadline, left
        time.sleep(0.1)


@pytest.fixture
def service(drained: Path) -> Service:
    (drained / "warm.yaml").write_text(
        "id: profile.warm\nextends: profile.local\nlabels: {tier: warm}\n"
        "pool: {size: 2, max_age: 30m}\n")
    return Service(Settings.from_env())


def test_a_pool_of_ext_local_sandboxes(service: Service,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = filled(service)
    for doc in first.values():  # ready: a session works; nobody's: in no list
        assert (doc["state"], doc["actor"]) == ("ready", None)
        done = ssh(doc["reachability"], "echo up")  # type: ignore[arg-type]
        assert done.stdout == b"up\n", done.stderr
    assert service.list_documents(ListRequest()) == []

    box = run(service.create(CreateRequest(profile="profile.warm", actor="agt", ttl="2h",
                                           labels={"run": "1"}, name="claimed")))
    assert box.id in first
    assert (box.state, box.actor, box.name) == ("ready", "agt", "claimed")
    assert box.labels == {"tier": "warm", "run": "1"}
    assert timedelta(hours=2) - (box.expires_at - box.created_at) < timedelta(seconds=1)
    assert box.reachability is not None
    done = ssh(box.reachability.model_dump(mode="json", by_alias=True), "echo mine")
    assert done.stdout == b"mine\n", done.stderr
    assert [e.type for e in service.store.events(sandbox_id=box.id)][-2:] == [
        "sandbox.claimed", "sandbox.ready"]
    assert [d["id"] for d in service.list_documents(ListRequest())] == [box.id]

    # Refilled after the claim; two concurrent creates take two different ones.
    before = set(filled(service))

    async def two() -> list[str]:
        got = await asyncio.gather(*(service.create(CreateRequest(profile="profile.warm"))
                                     for _ in range(2)))
        return [s.id for s in got]

    ids = run(two())
    assert len(set(ids)) == 2
    assert set(ids) == before

    # At max_age the unclaimed ones are destroyed and replaced.
    aged = set(filled(service))
    later = utcnow() + timedelta(minutes=31)
    monkeypatch.setattr(pools, "utcnow", lambda: later)
    run(service.refill_pools())
    assert set(pooled(service)).isdisjoint(aged)
    for sid in aged:
        assert service.store.get(sid).state == "destroyed"  # type: ignore[union-attr]


def test_pooled_ext_local_sandboxes_take_capacity(service: Service,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXER_LOCAL_CAPACITY", "2")
    service = Service(Settings.from_env())
    filled(service)
    with pytest.raises(NoTarget):
        run(service.create(CreateRequest(profile="profile.local")))
    assert run(service.create(CreateRequest(profile="profile.warm"))).state == "ready"


def test_a_claim_binds_env_and_secrets_to_that_sandbox_only(
        local_home: Settings, tmp_path: Path, drained: Path) -> None:
    if not issubclass(extensions.load("ext.local"), extensions.Binds):
        pytest.skip("ext.local does not implement Binds yet: a claim of a profile with "
                    "env or secrets creates cold")
    value = f"cnrypool{secrets.token_hex(12)}"
    (tmp_path / "token.txt").write_text(value + "\n")
    (tmp_path / "profiles" / "sec.yaml").write_text(
        "id: profile.sec\nextends: profile.local\npool: {size: 2, max_age: 30m}\n"
        "setup:\n  env: {MODE: claimed}\n  instructions: ['test -n \"$TOKEN\"']\n"
        f"  secret_refs: [{{name: TOKEN, ref: 'file:{tmp_path / 'token.txt'}'}}]\n")
    service = Service(Settings.from_env())
    before = filled(service, "profile.sec")
    box = run(service.create(CreateRequest(profile="profile.sec")))
    assert box.id in before
    assert box.reachability is not None
    shown = ssh(box.reachability.model_dump(mode="json", by_alias=True),
                'printf "%s|%s\\n" "$MODE" "$TOKEN"; cat /run/secrets/TOKEN')
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode().splitlines() == [f"claimed|{value}", value]
    for sid, doc in before.items():
        if sid == box.id:
            continue
        other = ssh(doc["reachability"],  # type: ignore[arg-type]
                    'printf "%s|%s\\n" "$MODE" "$TOKEN"; ls /run/secrets 2>/dev/null | wc -l')
        assert other.stdout.decode().splitlines() == ["|", "0"], other.stderr
    found = leaks([value], [local_home.home, local_home.local_root])
    assert not found, found


def test_the_local_service_keeps_ext_local_pools_filled(service: Service,
                                                        local_home: Settings) -> None:
    """Nothing here refills: the keeper that hosts the local service does it."""
    from sandboxer import keeper

    keeper.ensure(local_home, "ext.local")
    deadline = time.monotonic() + 120
    while len([d for d in pooled(service).values() if d["state"] == "ready"]) < 2:
        assert time.monotonic() < deadline, "the local service never filled the pool"
        time.sleep(0.1)
    box = run(service.create(CreateRequest(profile="profile.warm")))
    assert "sandbox.claimed" in [e.type for e in service.store.events(sandbox_id=box.id)]
    deadline = time.monotonic() + 120
    while len([d for d in pooled(service).values() if d["state"] == "ready"]) < 2:
        assert time.monotonic() < deadline, "the local service never refilled the pool"
        time.sleep(0.1)
