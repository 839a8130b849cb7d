"""The pre-provision hook with a mocked resolver: order, outcomes and error mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hvac.exceptions as hx
import pytest
import requests

from sandboxer.config import Settings
from sandboxer.errors import (
    SecretAccessDenied,
    SecretBackendUnavailable,
    SecretError,
    SecretNotFound,
    SecretRefInvalid,
)
from sandboxer.models.profile import Profile
from sandboxer.secrets import boundary, openbao, warden
from sandboxer.secrets.refs import BaoRef


class FakeKV:
    """A mocked KV store that records every call, in order."""

    def __init__(self, values: dict[str, str], errors: dict[str, SecretError] | None = None
                 ) -> None:
        self.values = values
        self.errors = errors or {}
        self.calls: list[tuple[str, str]] = []

    def check(self, ref: BaoRef) -> None:
        self.calls.append(("check", ref.text))
        if ref.text in self.errors:
            raise self.errors[ref.text]
        if ref.text not in self.values:
            raise SecretNotFound(f"{ref.text}: no such secret")

    def read(self, ref: BaoRef) -> str:
        self.calls.append(("read", ref.text))
        return self.values[ref.text]


def profile(*refs: tuple[str, str], env: dict[str, str] | None = None) -> Profile:
    return Profile.model_validate({
        "id": "profile.p", "extension": "ext.fake",
        "setup": {"env": env or {}, "secret_refs": [{"name": n, "ref": r} for n, r in refs]},
    })


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings(home=tmp_path, env=dict(env))


def test_resolve_checks_every_ref_before_reading_any(tmp_path: Path) -> None:
    kv = FakeKV({"bao:kv/a#x": "va", "bao:kv/b#y": "vb"})
    out = boundary.resolve(profile(("A", "bao:kv/a#x"), ("B", "bao:kv/b#y"), ("C", "env:E")),
                           settings(tmp_path, E="ve"), kv=kv)
    assert {k: v.get_secret_value() for k, v in out.items()} == {"A": "va", "B": "vb",
                                                                "C": "ve"}
    assert kv.calls == [("check", "bao:kv/a#x"), ("check", "bao:kv/b#y"),
                        ("read", "bao:kv/a#x"), ("read", "bao:kv/b#y")]
    assert "va" not in repr(out)


def test_one_failed_check_reads_nothing_and_names_every_failure(tmp_path: Path) -> None:
    kv = FakeKV({"bao:kv/a#x": "va"}, errors={
        "bao:kv/c#z": SecretAccessDenied("bao:kv/c#z: the token may not read it (HTTP 403)")})
    p = profile(("A", "bao:kv/a#x"), ("B", "bao:kv/b#y"), ("C", "bao:kv/c#z"))
    with pytest.raises(SecretNotFound) as info:  # the class of the first failure
        boundary.resolve(p, settings(tmp_path), kv=kv)
    assert [c for c, _ in kv.calls] == ["check", "check", "check"]
    text = info.value.render()
    assert "2 of 3 secret ref(s) did not validate" in text
    assert "B: bao:kv/b#y: no such secret" in text
    assert "C: bao:kv/c#z: the token may not read it (HTTP 403)" in text
    assert "--dry-run" in text
    assert info.value.exit_code == 7


def test_grammar_errors_come_before_any_backend(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_backend(_s: Settings) -> Any:
        raise AssertionError("the backend must not be built")

    monkeypatch.setattr(boundary, "backend", no_backend)
    with pytest.raises(SecretRefInvalid):
        boundary.resolve(profile(("A", "bao:kv/a#x"), ("B", "bao:kv")), settings(tmp_path))


def test_env_and_file_refs_never_build_the_backend(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boundary, "backend", lambda _s: pytest.fail("backend built"))
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    out = boundary.resolve(profile(("A", "env:E"), ("B", f"file:{f}")),
                           settings(tmp_path, E="from-env"))
    assert out["A"].get_secret_value() == "from-env"
    assert out["B"].get_secret_value() == "from-file"  # one trailing newline dropped


def test_check_reports_each_ref_and_reads_no_value(tmp_path: Path) -> None:
    kv = FakeKV({"bao:kv/a#x": "va"})
    p = profile(("A", "bao:kv/a#x"), ("B", "bao:kv/b#y"), ("C", "env:UNSET"),
                ("D", "file:/nonexistent/x"))
    checks = boundary.check(boundary.parse(p, settings(tmp_path)), settings(tmp_path), kv=kv)
    assert [(c.name, c.ok, c.via, c.code) for c in checks] == [
        ("A", True, "openbao", None), ("B", False, "openbao", "secret_not_found"),
        ("C", False, "env", "secret_not_found"), ("D", False, "file", "secret_not_found")]
    assert all(call == "check" for call, _ in kv.calls)
    assert checks[0].document() == {"name": "A", "ref": "bao:kv/a#x", "status": "ok",
                                    "checked_by": "openbao", "code": None, "reason": None}


def test_warden_replaces_the_metadata_read(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def route(exe: str, ref: str, *, env: Any, seconds: float) -> None:
        asked.append(ref)
        if "deny" in ref:
            raise SecretAccessDenied(f"{ref}: warden does not route it (exit 1: no)")

    monkeypatch.setattr(warden, "route", route)
    monkeypatch.setattr(warden, "binary", lambda env: "/usr/bin/warden")
    kv = FakeKV({"bao:kv/a#x": "va", "bao:kv/deny#x": "vd"})
    s = settings(tmp_path, E="ve")
    p = profile(("A", "bao:kv/a#x"), ("B", "bao:kv/deny#x"), ("C", "env:E"))
    checks = boundary.check(boundary.parse(p, s), s, kv=kv)
    assert asked == ["bao:kv/a#x", "bao:kv/deny#x", "env:E"]
    assert kv.calls == []  # warden is the validation; no metadata read
    assert [(c.ok, c.via) for c in checks] == [(True, "warden"), (False, "warden"),
                                               (True, "warden")]
    with pytest.raises(SecretAccessDenied, match="warden does not route"):
        boundary.resolve(p, s, kv=kv)
    assert [c for c, _ in kv.calls] == []


def test_a_missing_warden_fails_every_ref(tmp_path: Path) -> None:
    s = settings(tmp_path, SANDBOXER_WARDEN="/nonexistent/warden")
    checks = boundary.check(boundary.parse(profile(("A", "env:X"), ("B", "env:Y")), s), s)
    assert [c.code for c in checks] == ["secret_backend_unavailable"] * 2


@pytest.mark.parametrize(
    ("raw", "message"), [("a\0b", "NUL byte"), ("x" * (32 * 1024 + 1), "larger than 32 KiB")])
def test_values_that_cannot_be_injected(tmp_path: Path, raw: str, message: str) -> None:
    with pytest.raises(SecretRefInvalid, match=message) as info:
        boundary.resolve(profile(("A", "env:E")), settings(tmp_path, E=raw))
    assert raw not in info.value.render()


# -- openbao: hvac errors mapped in one place ------------------------------------------


class _Raising:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        def call(**_kw: Any) -> Any:
            raise self.exc
        return call


class _HvacStub:
    def __init__(self, v2: Any) -> None:
        self.secrets = type("S", (), {"kv": type("K", (), {"v2": v2})()})()


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (hx.InvalidPath("nope"), SecretNotFound, "no such secret (HTTP 404)"),
        (hx.Forbidden("permission denied"), SecretAccessDenied, "HTTP 403"),
        (hx.Unauthorized("bad token"), SecretAccessDenied, "HTTP 401"),
        (hx.InvalidRequest("bad"), SecretRefInvalid, "HTTP 400"),
        (hx.VaultDown("sealed"), SecretBackendUnavailable, "HTTP 503"),
        (hx.InternalServerError("x"), SecretBackendUnavailable, "HTTP 500"),
        (requests.exceptions.ConnectionError("refused"), SecretBackendUnavailable,
         "cannot connect"),
        (requests.exceptions.ReadTimeout("slow"), SecretBackendUnavailable, "no answer within"),
        (requests.exceptions.SSLError("cert"), SecretBackendUnavailable, "TLS verification"),
    ],
)
@pytest.mark.parametrize("op", ["check", "read"])
def test_openbao_error_mapping(exc: BaseException, cls: type[SecretError], text: str,
                               op: str) -> None:
    bao = openbao.OpenBao("http://127.0.0.1:1", "tok-secret")
    bao._client = _HvacStub(_Raising(exc))
    ref = BaoRef(name="A", text="bao:kv/app/x#f", mount="kv", path="app/x", field="f")
    with pytest.raises(cls) as info:
        getattr(bao, op)(ref)
    assert type(info.value) is cls
    assert "bao:kv/app/x#f" in info.value.message
    assert text in info.value.message
    assert "tok-secret" not in info.value.render() + repr(bao)


def test_openbao_read_picks_the_field(tmp_path: Path) -> None:
    class V2:
        def read_secret_version(self, **_kw: Any) -> Any:
            return {"data": {"data": {"f": "value", "n": 3}, "metadata": {}}}

        def read_secret_metadata(self, **_kw: Any) -> Any:
            return {"data": {"current_version": 2,
                             "versions": {"2": {"deletion_time": "2026-01-01T00:00:00Z",
                                                "destroyed": False}}}}

    bao = openbao.OpenBao("http://127.0.0.1:1", "t")
    bao._client = _HvacStub(V2())
    mk = BaoRef
    assert bao.read(mk("A", "bao:kv/x#f", "kv", "x", "f")) == "value"
    assert bao.read(mk("A", "bao:kv/x#n", "kv", "x", "n")) == "3"
    with pytest.raises(SecretNotFound, match=r"no field 'g' \(its fields: f, n\)") as info:
        bao.read(mk("A", "bao:kv/x#g", "kv", "x", "g"))
    assert "value" not in info.value.render()
    with pytest.raises(SecretNotFound, match=r"current version \(2\) of kv/x is deleted"):
        bao.check(mk("A", "bao:kv/x#f", "kv", "x", "f"))


@pytest.mark.parametrize(
    ("env", "text"),
    [({}, "BAO_ADDR is not set"), ({"BAO_ADDR": "https://b"}, "BAO_TOKEN is not set"),
     ({"BAO_ADDR": "https://b", "BAO_TOKEN": "t", "BAO_SKIP_VERIFY": "true",
       "SANDBOXER_ENV": "production"}, "cannot be switched off")])
def test_openbao_configuration_errors(env: dict[str, str], text: str) -> None:
    with pytest.raises(SecretBackendUnavailable, match=text):
        openbao.OpenBao.from_env(env)


def test_openbao_configuration() -> None:
    bao = openbao.OpenBao.from_env({"VAULT_ADDR": "https://v/", "VAULT_TOKEN": "t",
                                    "BAO_CACERT": "/ca.pem", "SANDBOXER_BAO_TIMEOUT": "3"})
    assert (bao.addr, bao.verify, bao.timeout) == ("https://v", "/ca.pem", 3.0)
    assert openbao.OpenBao.from_env({"BAO_ADDR": "https://b", "BAO_TOKEN": "t"}).verify is True
