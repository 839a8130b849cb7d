"""capabilities.py over a real Manager and a temporary home: targets, image builds and
doctor checks of every extension that offers them, the test-only fake included."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sandboxer import capabilities
from sandboxer.config import Settings
from sandboxer.errors import Conflict, InvalidInput, NotFound, SandboxerError
from sandboxer.extensions.base import BuildsImages, DoctorChecks, ManagesTargets
from sandboxer.extensions.compose_ssh.config import TargetConfig, target_record
from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension
from sandboxer.manager import Manager


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def manager(settings: Settings) -> Manager:
    return Manager(settings)


def add(m: Manager, name: str, url: str, **options: Any) -> dict[str, Any]:
    found: dict[str, Any] = run(capabilities.add_target(
        m, name=name, url=url, extension=options.pop("extension", None), options=options,
        confirm=None))
    return found


# -- offering ---------------------------------------------------------------------------


def test_offering_finds_each_capability_by_isinstance(manager: Manager) -> None:
    names = {cap: sorted(e.name for e in capabilities.offering(manager, cap))  # type: ignore[attr-defined]
             for cap in (ManagesTargets, BuildsImages, DoctorChecks)}
    assert names[ManagesTargets] == ["ext.compose-ssh", "ext.fake"]
    assert names[BuildsImages] == ["ext.compose-ssh", "ext.fake", "ext.vm-packer"]
    assert names[DoctorChecks] == ["ext.fake", "ext.local"]
    # Each is the manager's own instance, with its host.
    (fake,) = [e for e in capabilities.offering(manager, DoctorChecks)
               if e.name == "ext.fake"]  # type: ignore[attr-defined]
    assert fake is manager.extension("ext.fake")
    assert fake.host.extension == "ext.fake"  # type: ignore[attr-defined]


def test_an_extension_that_fails_to_load_is_skipped_with_a_warning(
        manager: Manager, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(capabilities, "available", lambda: ["ext.broken", "ext.fake"])
    with caplog.at_level(logging.WARNING, logger="sandboxer.capabilities"):
        found = capabilities.offering(manager, ManagesTargets)
    assert [e.name for e in found] == ["ext.fake"]  # type: ignore[attr-defined]
    assert "skipped extension ext.broken" in caplog.text


# -- targets ----------------------------------------------------------------------------


def test_targets_list_has_every_extensions_targets_implicit_ones_too(
        manager: Manager) -> None:
    rows = capabilities.target_summaries(manager)
    assert [(r["name"], r["extension"], r["implicit"]) for r in rows] == [
        ("local", "ext.compose-ssh", True), ("fake-1", "ext.fake", True)]
    for r in rows:
        assert {"name", "extension", "kind", "capacity", "implicit"} <= set(r)


def test_a_fake_target_is_added_listed_checked_placed_on_and_removed(
        manager: Manager) -> None:
    added = add(manager, "t1", "fake://anything", capacity=2, identity=None, kind="self-hosted")
    assert (added["name"], added["extension"], added["capacity"]) == ("t1", "ext.fake", 2)
    rec = manager.store.get_target("t1")
    assert rec is not None
    assert (rec.extension, rec.config) == ("ext.fake", {"url": "fake://anything",
                                                        "capacity": 2})
    assert [r["name"] for r in capabilities.target_summaries(manager)] == [
        "local", "fake-1", "t1"]
    (check,) = run(capabilities.check_targets(manager, "t1"))
    assert (check["name"], check["ok"], check["capacity"], check["used"]) == ("t1", True, 2, 0)
    # The extension sees its record through its host, and placement may pin it.
    created = run(manager.create("profile.fake", target="t1"))
    assert created.target == "t1"
    (check,) = run(capabilities.check_targets(manager, "t1"))
    assert check["used"] == 1
    with pytest.raises(Conflict, match="live sandbox"):
        capabilities.remove_target(manager, "t1")
    run(manager.destroy(created.id))
    capabilities.remove_target(manager, "t1")
    assert manager.store.get_target("t1") is None
    with pytest.raises(NotFound, match="no target named 't1'"):
        capabilities.remove_target(manager, "t1")


def test_the_url_scheme_picks_the_extension(manager: Manager) -> None:
    with pytest.raises(InvalidInput, match="no extension takes the URL 'http://u@h'") as e:
        add(manager, "t1", "http://u@h")
    assert "ssh:// (ext.compose-ssh)" in (e.value.hint or "")
    assert "fake:// (ext.fake)" in (e.value.hint or "")
    with pytest.raises(InvalidInput, match="no extension takes"):
        add(manager, "t1", "no scheme at all")
    # Named explicitly, the extension validates the URL itself.
    with pytest.raises(InvalidInput, match=r"targets add t1: .*expected fake://"):
        add(manager, "t1", "ssh://u@h", extension="ext.fake")
    with pytest.raises(InvalidInput, match=r"ext\.local has no targets to add"):
        add(manager, "t1", "fake://x", extension="ext.local")
    assert manager.store.list_targets() == []


def test_core_checks_the_name_and_refuses_a_duplicate_before_first_contact(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput, match="target name 'Bad Name': expected 1-63"):
        add(manager, "Bad Name", "fake://x")
    add(manager, "t1", "fake://x")
    contacted: list[str] = []

    async def first_contact(*args: Any, **kwargs: Any) -> Any:
        contacted.append("yes")
        raise AssertionError("no contact for a duplicate")

    monkeypatch.setattr("sandboxer.extensions.compose_ssh.remote.first_contact", first_contact)
    with pytest.raises(Conflict, match="a target named 't1' exists already") as e:
        add(manager, "t1", "ssh://u@127.0.0.1")
    assert e.value.exit_code == 8
    assert contacted == []


@pytest.mark.parametrize(("url", "options", "words"), [
    ("ssh://u@h:0", {}, "port 1-65535"),
    ("ssh://u@h\n:22", {}, "control characters"),
    ("ssh://u@h", {"allow": ["everything"]}, "unknown allow-list entries"),
    ("ssh://u@h", {"identity": "/nonexistent/key"}, "--identity /nonexistent/key: no such"),
    ("ssh://u@h", {"colour": "blue"}, "ext.compose-ssh takes no colour"),
])
def test_compose_refuses_bad_targets_before_first_contact(
        manager: Manager, url: str, options: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as e:
        add(manager, "t1", url, **options)
    assert e.value.exit_code == 4
    assert manager.store.list_targets() == []


def test_compose_refuses_local_as_a_name(manager: Manager) -> None:
    with pytest.raises(InvalidInput, match="not 'local'"):
        add(manager, "local", "ssh://u@h")


def test_compose_first_contact_pins_the_key_in_the_record(
        manager: Manager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def first_contact(cfg: TargetConfig) -> tuple[str, str]:
        return f"[{cfg.host}]:{cfg.port} ssh-ed25519 AAAA", "SHA256:seen"

    monkeypatch.setattr("sandboxer.extensions.compose_ssh.remote.first_contact", first_contact)
    key = tmp_path / "key"
    key.write_text("k")
    key.chmod(0o600)
    with pytest.raises(InvalidInput, match="presented host key SHA256:seen, not SHA256:x"):
        add(manager, "h1", "ssh://u@h:2200", identity=str(key), fingerprint="SHA256:x")
    refused: list[str] = []
    with pytest.raises(InvalidInput, match="was not accepted"):
        run(capabilities.add_target(manager, name="h1", url="ssh://u@h:2200", extension=None,
                                    options={"identity": str(key)},
                                    confirm=lambda fp: bool(refused.append(fp))))
    assert refused == ["SHA256:seen"]
    added = add(manager, "h1", "ssh://u@h:2200", identity=str(key), capacity=3,
                allow=["devices"], public_host=None)
    assert added["fingerprint"] == "SHA256:seen"
    assert (added["url"], added["capacity"], added["implicit"]) == ("ssh://u@h:2200", 3, False)
    rec = manager.store.get_target("h1")
    assert rec is not None
    assert rec.extension == "ext.compose-ssh"
    assert rec.config["host_keys"] == ["[h]:2200 ssh-ed25519 AAAA"]
    assert rec.config["identity_file"] == str(key)
    ext = manager.extension("ext.compose-ssh")
    assert [(t.name, t.capacity, t.used) for t in ext.targets(manager.settings)] == [
        ("local", 16, 0), ("h1", 3, 0)]


def test_a_compose_record_that_breaks_a_newer_rule_says_how_out(manager: Manager) -> None:
    rec = target_record(TargetConfig(name="old", url="ssh://u@h"))
    manager.store.add_target(rec.model_copy(update={
        "config": {**rec.config, "public_host": "-oProxyCommand=id"}}))
    with pytest.raises(InvalidInput, match="targets remove old"):
        capabilities.target_summaries(manager)
    capabilities.remove_target(manager, "old")
    assert manager.store.list_targets() == []


def test_implicit_targets_cannot_be_removed(manager: Manager) -> None:
    with pytest.raises(InvalidInput, match="local target is implicit"):
        capabilities.remove_target(manager, "local")
    with pytest.raises(InvalidInput, match="fake-1 is the fake's implicit target"):
        capabilities.remove_target(manager, "fake-1")
    with pytest.raises(NotFound, match="no target named 'nowhere'"):
        capabilities.remove_target(manager, "nowhere")


def test_check_of_an_unknown_target_is_not_found(manager: Manager) -> None:
    with pytest.raises(NotFound, match="no target named 'nowhere'") as e:
        run(capabilities.check_targets(manager, "nowhere"))
    assert e.value.exit_code == 3


def test_check_of_every_target_asks_every_extension(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    async def compose_check(self: Any, name: str | None = None) -> list[dict[str, Any]]:
        return [{"name": "local", "ok": False, "error": "no engine here"}]

    monkeypatch.setattr(ComposeSSHExtension, "check_targets", compose_check)
    monkeypatch.setenv("FAKE_UNHEALTHY", "1")
    m = Manager(Settings.from_env())
    rows = run(capabilities.check_targets(m))
    assert [(r["name"], r["ok"]) for r in rows] == [("local", False), ("fake-1", False)]
    assert rows[1]["error"] == "switched off by FAKE_UNHEALTHY"


# -- images -----------------------------------------------------------------------------


def test_the_fake_image_is_built_by_the_one_extension_that_claims_it(
        manager: Manager) -> None:
    seen: list[str] = []
    built = run(capabilities.build_image(manager, "fake-image", target="t9",
                                         variables={"a": "1"}, force=False,
                                         progress=seen.append))
    marker = manager.settings.home / "fake-images" / "fake-image"
    assert built == {"image": "fake/fake-image:1", "target": "t9", "path": str(marker),
                     "built": True}
    assert json.loads(marker.read_text()) == {"target": "t9", "variables": {"a": "1"}}
    assert seen == ["fake: building fake-image for t9"]
    again = run(capabilities.build_image(manager, "fake-image", target="t9", variables={},
                                         force=False, progress=seen.append))
    assert again["built"] is False
    forced = run(capabilities.build_image(manager, "fake-image", target="t9", variables={},
                                          force=True, progress=seen.append))
    assert forced["built"] is True


def test_a_profile_id_goes_to_its_extension(manager: Manager) -> None:
    with pytest.raises(InvalidInput, match=r"profile.fake \(ext.fake\) needs no image"):
        run(capabilities.build_image(manager, "profile.fake", target="local", variables={},
                                     force=False, progress=lambda _m: None))
    with pytest.raises(InvalidInput,
                       match=r"profile.local \(ext.local\) needs no image to be built"):
        run(capabilities.build_image(manager, "profile.local", target="local", variables={},
                                     force=False, progress=lambda _m: None))
    with pytest.raises(SandboxerError) as e:
        run(capabilities.build_image(manager, "profile.nope", target="local", variables={},
                                     force=False, progress=lambda _m: None))
    assert e.value.exit_code == 3


def test_a_name_nobody_claims_lists_what_can_be_built(manager: Manager) -> None:
    with pytest.raises(InvalidInput, match="nothing builds an image named 'nope'") as e:
        run(capabilities.build_image(manager, "nope", target="local", variables={},
                                     force=False, progress=lambda _m: None))
    hint = e.value.hint or ""
    assert "fake-image" in hint
    assert "Packer template" in hint
    assert "a recipe in" in hint


def test_a_name_two_extensions_claim_asks_for_a_profile(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ComposeSSHExtension, "claims_image", lambda self, name: True)
    with pytest.raises(InvalidInput, match=r"names an image of ext\.compose-ssh and of ext\.fake"):
        run(capabilities.build_image(manager, "fake-image", target="local", variables={},
                                     force=False, progress=lambda _m: None))


def test_a_compose_recipe_is_built_by_compose_with_its_host(
        manager: Manager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sandboxer.extensions.compose_ssh import images

    root = tmp_path / "images"
    (root / "sandbox-base").mkdir(parents=True)
    (root / "sandbox-base" / "build.sh").write_text("exit 0\n")
    monkeypatch.setenv("SANDBOXER_IMAGES", str(root))
    m = Manager(Settings.from_env())
    ext = m.extension("ext.compose-ssh")
    assert isinstance(ext, BuildsImages)
    assert ext.claims_image("base")
    assert ext.claims_image("sandbox-base")
    assert not ext.claims_image("../images/sandbox-base")
    assert not ext.claims_image("..")
    calls: list[tuple[object, str, str]] = []

    async def build_recipe(e: Any, name: str, target: str, progress: Any) -> dict[str, Any]:
        calls.append((e, name, target))
        return {"image": f"sandboxer/{name}:1", "target": target}

    monkeypatch.setattr(images, "build_recipe", build_recipe)
    built = run(capabilities.build_image(m, "base", target="t1", variables={}, force=False,
                                         progress=lambda _m: None))
    assert built == {"image": "sandboxer/base:1", "target": "t1"}
    assert calls == [(ext, "base", "t1")]


# -- doctor -----------------------------------------------------------------------------


def test_doctor_has_every_extensions_checks(manager: Manager) -> None:
    checks = {c.name: c for c in capabilities.doctor_checks(manager)}
    assert checks["fake extension"].ok
    assert "bubblewrap" in checks  # ext.local's, moved out of the CLI
    assert "local seccomp filter" in checks


def test_a_failing_fake_check_says_how_to_fix_it(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DOCTOR_FAIL", "1")
    (check,) = [c for c in capabilities.doctor_checks(Manager(Settings.from_env()))
                if c.name == "fake extension"]
    assert not check.ok
    assert check.document()["fix"] == "unset FAKE_DOCTOR_FAIL"


def test_a_raising_doctor_check_is_a_failed_check_not_a_crash(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandboxer_fake_ext

    def boom(self: Any) -> list[Any]:
        raise RuntimeError("the probe exploded")

    monkeypatch.setattr(sandboxer_fake_ext.FakeExtension, "doctor_checks", boom)
    checks = {c.name: c for c in capabilities.doctor_checks(manager)}
    assert not checks["ext.fake"].ok
    assert "the probe exploded" in checks["ext.fake"].detail
    assert "bubblewrap" in checks  # the others still ran
