"""The manager's hook with a mocked resolver: values reach provision and nothing else."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sandboxer_fake_ext as fake

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed, SecretAccessDenied, SecretRefInvalid
from sandboxer.manager import Manager
from sandboxer.secrets import boundary
from sandboxer.secrets.refs import BaoRef

CANARY_BAO = "cnry-bao-8d1e55c0b7"
CANARY_ENV = "cnry-env-41fa9c02de"


class KV:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def check(self, ref: BaoRef) -> None:
        self.calls.append(f"check {ref.text}")
        if "denied" in ref.path:
            raise SecretAccessDenied(f"{ref.text}: the token may not read it (HTTP 403)")

    def read(self, ref: BaoRef) -> str:
        self.calls.append(f"read {ref.text}")
        return CANARY_BAO


@pytest.fixture
def kv(monkeypatch: pytest.MonkeyPatch) -> KV:
    mock = KV()
    monkeypatch.setattr(boundary, "backend", lambda _s: mock)
    monkeypatch.setenv("CANARY_ENV", CANARY_ENV)
    return mock


def add(d: Path, name: str, spec: str, refs: str) -> None:
    (d / f"{name}.yaml").write_text(
        f"id: profile.{name}\nextension: ext.fake\nspec: {spec}\n"
        f"setup:\n  secret_refs: {refs}\n")


REFS = "[{name: TOKEN, ref: 'bao:kv/app/x#token'}, {name: OTHER, ref: 'env:CANARY_ENV'}]"


def everything_written(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_values_reach_provision_only(home: Path, profiles_dir: Path, kv: KV) -> None:
    add(profiles_dir, "sec", "{}", REFS)
    m = Manager(Settings.from_env())
    s = asyncio.run(m.create("profile.sec"))
    assert fake.RECEIVED[s.id] == {"TOKEN": CANARY_BAO, "OTHER": CANARY_ENV}
    assert kv.calls == ["check bao:kv/app/x#token", "read bao:kv/app/x#token"]
    events = [e.model_dump(mode="json") for e in m.store.events()]
    text = json.dumps(s.document()) + repr(s) + json.dumps(events)
    assert CANARY_BAO not in text
    assert CANARY_ENV not in text
    blob = everything_written(home)
    assert CANARY_BAO.encode() not in blob
    assert CANARY_ENV.encode() not in blob


def test_dry_run_validates_and_reads_nothing(home: Path, profiles_dir: Path, kv: KV) -> None:
    add(profiles_dir, "sec", "{}", REFS + "\n")
    add(profiles_dir, "denied", "{}",
        "[{name: A, ref: 'bao:kv/denied/x#t'}, {name: B, ref: 'env:UNSET_VAR_XYZ'}]")
    client = LocalClient(Settings.from_env())
    plan = client.plan("profile.sec")
    assert [(r["name"], r["status"]) for r in plan["secret_refs"]] == [("TOKEN", "ok"),
                                                                        ("OTHER", "ok")]
    bad = client.plan("profile.denied")["secret_refs"]
    assert [(r["status"], r["code"]) for r in bad] == [
        ("error", "secret_access_denied"), ("error", "secret_not_found")]
    assert not any(c.startswith("read") for c in kv.calls)
    assert CANARY_ENV not in json.dumps(plan)
    with pytest.raises(SecretAccessDenied, match="A: bao:kv/denied/x#t"):
        client.create("profile.denied")
    assert client.store.count() == 0  # nothing created, nothing recorded


def test_grammar_error_before_any_probe(home: Path, profiles_dir: Path, kv: KV,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    add(profiles_dir, "bad", "{}", "[{name: A, ref: 'bao:kv-no-path#x'}]")

    async def probe(self: Any, target: Any) -> Any:
        raise AssertionError("probed before the refs were parsed")

    monkeypatch.setattr(fake.FakeExtension, "probe", probe)
    with pytest.raises(SecretRefInvalid, match=r"profile profile.bad: setup.secret_refs\[0\]"):
        asyncio.run(Manager(Settings.from_env()).create("profile.bad"))
    assert kv.calls == []


def test_a_create_failing_after_resolution_leaks_nothing(
    home: Path, profiles_dir: Path, kv: KV, caplog: pytest.LogCaptureFixture
) -> None:
    add(profiles_dir, "leaky", "{fail_at: provision, leak: true}", REFS)
    m = Manager(Settings.from_env())
    with caplog.at_level(logging.DEBUG), pytest.raises(ProvisionFailed) as info:
        asyncio.run(m.create("profile.leaky"))
    (s,) = m.store.query()
    assert s.state == "failed"
    assert s.error is not None
    assert "fake provision failure *** ***" in s.error
    texts = [info.value.render(), str(info.value), s.error, caplog.text,
             json.dumps([e.model_dump(mode="json") for e in m.store.events()])]
    for text in texts:
        assert CANARY_BAO not in text
        assert CANARY_ENV not in text
    assert any("***" in r.getMessage() for r in caplog.records)
    blob = everything_written(home)
    assert CANARY_BAO.encode() not in blob
    assert CANARY_ENV.encode() not in blob
    conn = sqlite3.connect(home / "state.db")
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert CANARY_BAO not in dump
    assert CANARY_ENV not in dump
