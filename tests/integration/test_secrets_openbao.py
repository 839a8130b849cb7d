"""Resolution through real hvac against a KV v2 server on 127.0.0.1, and a stub warden."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandboxer.config import Settings
from sandboxer.errors import (
    SecretAccessDenied,
    SecretBackendUnavailable,
    SecretNotFound,
)
from sandboxer.models.profile import Profile
from sandboxer.secrets import boundary

if TYPE_CHECKING:
    from .conftest import KVServer, Warden

pytestmark = pytest.mark.integration
VALUE = "cnry-kv-5c2b7d0e19"


def profile(*refs: tuple[str, str]) -> Profile:
    return Profile.model_validate({
        "id": "profile.p", "extension": "ext.local",
        "setup": {"secret_refs": [{"name": n, "ref": r} for n, r in refs]},
    })


def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({**__import__("os").environ, "SANDBOXER_HOME": str(tmp_path)})


def test_resolves_a_field_with_the_token_header(kv_server: KVServer, tmp_path: Path) -> None:
    kv_server.put("kv/build/hackage", token=VALUE, other="x")
    out = boundary.resolve(profile(("TOKEN", "bao:kv/build/hackage#token")), settings(tmp_path))
    assert out["TOKEN"].get_secret_value() == VALUE
    assert kv_server.requests == [
        ("GET", "/v1/kv/metadata/build/hackage", kv_server.token),
        ("GET", "/v1/kv/data/build/hackage", kv_server.token),
    ]


def test_validation_reads_metadata_only(kv_server: KVServer, tmp_path: Path) -> None:
    kv_server.put("kv/a", f=VALUE)
    s = settings(tmp_path)
    checks = boundary.check(boundary.parse(profile(("A", "bao:kv/a#f")), s), s)
    assert [c.ok for c in checks] == [True]
    assert [p for _m, p, _t in kv_server.requests] == ["/v1/kv/metadata/a"]


@pytest.mark.parametrize(
    ("setup", "cls", "text"),
    [
        ("missing", SecretNotFound, "no such secret (HTTP 404)"),
        ("denied", SecretAccessDenied, "may not read it (HTTP 403)"),
        ("bad-token", SecretAccessDenied, "may not read it (HTTP 403)"),
        ("deleted", SecretNotFound, "is deleted"),
    ],
)
def test_validation_failures(kv_server: KVServer, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, setup: str,
                             cls: type[Exception], text: str) -> None:
    if setup != "missing":
        kv_server.put("kv/app/x", token=VALUE)
    if setup == "denied":
        kv_server.denied.add("kv/app/x")
    if setup == "bad-token":
        monkeypatch.setenv("BAO_TOKEN", "wrong")
    if setup == "deleted":
        kv_server.deleted.add("kv/app/x")
    with pytest.raises(cls) as info:
        boundary.resolve(profile(("TOKEN", "bao:kv/app/x#token")), settings(tmp_path))
    assert text in info.value.render()
    assert "bao:kv/app/x#token" in info.value.render()
    assert VALUE not in info.value.render()
    assert not any("/data/" in p for _m, p, _t in kv_server.requests)


def test_a_missing_field_names_the_ref_not_the_values(kv_server: KVServer,
                                                      tmp_path: Path) -> None:
    kv_server.put("kv/app/x", token=VALUE)
    with pytest.raises(SecretNotFound, match="has no field 'nope'") as info:
        boundary.resolve(profile(("T", "bao:kv/app/x#nope")), settings(tmp_path))
    assert VALUE not in info.value.render()


def test_an_unreachable_server(kv_server: KVServer, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("BAO_ADDR")
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{port}")  # the fallback
    with pytest.raises(SecretBackendUnavailable, match="cannot connect"):
        boundary.resolve(profile(("T", "bao:kv/a#b")), settings(tmp_path))


def test_warden_routes_some_and_refuses_others(kv_server: KVServer, warden_stub: Warden,
                                               tmp_path: Path) -> None:
    kv_server.put("kv/ok", f=VALUE)
    kv_server.put("kv/no", f=VALUE)
    warden_stub.refuse("bao:kv/no#f")
    s = settings(tmp_path)
    p = profile(("A", "bao:kv/ok#f"), ("B", "bao:kv/no#f"))
    checks = boundary.check(boundary.parse(p, s), s)
    assert [(c.name, c.ok, c.via) for c in checks] == [("A", True, "warden"),
                                                       ("B", False, "warden")]
    assert checks[1].reason is not None
    assert "warden: bao:kv/no#f is not routed for this actor" in checks[1].reason
    assert warden_stub.asked() == ["bao:kv/ok#f", "bao:kv/no#f"]
    assert kv_server.requests == []  # warden replaces the metadata read
    with pytest.raises(SecretAccessDenied, match="B: bao:kv/no#f: warden does not route it"):
        boundary.resolve(p, s)
    assert kv_server.requests == []  # and nothing is read when a ref does not route
    ok = boundary.resolve(profile(("A", "bao:kv/ok#f")), s)
    assert ok["A"].get_secret_value() == VALUE


def test_a_warden_that_hangs_times_out(warden_stub: Warden, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    warden_stub.exe.write_text("#!/bin/sh\nexec sleep 30\n")
    monkeypatch.setenv("SANDBOXER_WARDEN_TIMEOUT", "0.5")
    monkeypatch.setenv("E", "x")
    s = settings(tmp_path)
    (check,) = boundary.check(boundary.parse(profile(("A", "env:E")), s), s)
    assert check.code == "secret_backend_unavailable"
    assert "no answer within 0.5s" in (check.reason or "")
