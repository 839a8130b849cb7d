from __future__ import annotations

import asyncio
from datetime import timedelta

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.manager import Manager
from sandboxer.models.common import utcnow
from sandboxer.models.sandbox import SandboxStatus


def test_documents_match_the_models(settings: Settings) -> None:
    client = LocalClient(settings)
    s = client.create("profile.fake", labels={"k": "v"})
    doc = client.get_document(s.id)
    assert doc == s.document()  # the pydantic-free read path writes the same document
    assert SandboxStatus.model_validate(doc) == s
    assert client.list_documents() == [doc]


def test_every_call_reaps_expired_leases_opportunistically(settings: Settings) -> None:
    client = LocalClient(settings)
    s = client.create("profile.fake")
    Manager(settings).store.transition(s.id, from_states={"ready"}, to_state="ready",
                                       event=None, expires_at=utcnow() - timedelta(seconds=1))
    assert (settings.home / "fake" / s.id).exists()
    doc = client.get_document(s.id)  # a read-only call
    assert doc["state"] == "destroyed"
    assert doc["reason"] == "expired"
    assert not (settings.home / "fake" / s.id).exists()


def test_list_defaults_to_live_sandboxes(settings: Settings) -> None:
    client = LocalClient(settings)
    live = client.create("profile.fake")
    gone = client.create("profile.fake")
    asyncio.run(Manager(settings).destroy(gone.id))
    assert [d["id"] for d in client.list_documents()] == [live.id]
    assert {d["id"] for d in client.list_documents(all=True)} == {live.id, gone.id}
    assert [d["id"] for d in client.list_documents(states=["destroyed"])] == [gone.id]


def test_destroy_document_without_an_endpoint_runs_in_process(settings: Settings) -> None:
    client = LocalClient(settings)
    s = client.create("profile.fake")
    assert client.destroy_document(s.id)["state"] == "destroyed"
    assert client.destroy_document(s.id)["state"] == "destroyed"  # idempotent
