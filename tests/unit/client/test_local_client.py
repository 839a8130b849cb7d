from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import SecretRefInvalid
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


def test_an_extends_cycle_hides_only_the_broken_profiles(
        settings: Settings, profiles_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (profiles_dir / "a.yaml").write_text("id: profile.a\nextends: profile.b\n")
    (profiles_dir / "b.yaml").write_text("id: profile.b\nextends: profile.a\n")
    with caplog.at_level(logging.WARNING):
        ids = [p["id"] for p in LocalClient(settings).list_profiles()]
    assert "profile.fake" in ids
    assert "profile.local" in ids
    assert "profile.a" not in ids
    assert "profile.b" not in ids
    assert "extends: cycle" in caplog.text


@pytest.mark.parametrize(("ref", "production"), [
    ("nonsense", False), ("env:NOT AN IDENT", False), ("bao:kv#field", False),
    ("env:HOME_TOKEN\n", False), ("env:HOME_TOKEN", True), ("file:/etc/token", True),
])
def test_validate_checks_secret_refs_as_create_does(
        settings: Settings, profiles_dir: Path, monkeypatch: pytest.MonkeyPatch, ref: str,
        production: bool) -> None:
    if production:
        monkeypatch.setenv("SANDBOXER_ENV", "production")
        settings = Settings.from_env()
    path = profiles_dir / "refs.yaml"
    path.write_text("id: profile.refs\nextension: ext.fake\n"
                    f"setup: {{secret_refs: [{{name: TOKEN, ref: {json.dumps(ref)}}}]}}\n")
    (result,) = LocalClient(settings).validate_profiles([path])
    assert result["ok"] is False
    assert result["code"] == "secret_ref_invalid"
    with pytest.raises(SecretRefInvalid):
        asyncio.run(Manager(settings).create("profile.refs"))


def test_validate_resolves_nothing(settings: Settings, profiles_dir: Path) -> None:
    path = profiles_dir / "refs.yaml"
    path.write_text("id: profile.refs\nextension: ext.fake\n"
                    "setup: {secret_refs: [{name: TOKEN, ref: 'env:SURELY_UNSET_VAR'}]}\n")
    (result,) = LocalClient(settings).validate_profiles([path])
    assert result["ok"] is True, result
