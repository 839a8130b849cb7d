from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxer.errors import InvalidInput
from sandboxer.extensions.compose_ssh import override as ov
from sandboxer.extensions.compose_ssh.ready import key_tarball
from sandboxer.extensions.compose_ssh.spec import ComposeSpec

BASE: dict[str, Any] = {"services": {"main": {"image": "sandboxer/base:latest"},
                                     "db": {"image": "postgres", "networks": ["back"]}},
                        "networks": {"back": {}}}


def spec(**kw: Any) -> ComposeSpec:
    return ComposeSpec.model_validate({"compose": BASE, "service": "main", **kw})


def test_spec_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ComposeSpec.model_validate({"service": "main"})
    with pytest.raises(ValueError, match="exactly one"):
        ComposeSpec.model_validate({"service": "m", "compose": BASE, "compose_file": "x.yaml"})
    with pytest.raises(ValueError, match="memory"):
        ComposeSpec.model_validate({"service": "m", "compose": BASE,
                                    "resources": {"memory": "lots"}})


def test_load_from_file_relative_to_profile(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("services:\n  main: {image: x}\n")
    s = ComposeSpec.model_validate({"compose_file": "c.yaml", "service": "main"})
    doc = ov.load(s, tmp_path / "profile.yaml", "profile.t")
    assert doc["services"]["main"]["image"] == "x"


@pytest.mark.parametrize(
    ("text", "needle"),
    [("services: [unclosed\n", "invalid YAML"), ("version: '3'\n", "services"),
     ("services:\n  other: {image: x}\n", "no service 'main'")],
)
def test_bad_compose_files(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    s = ComposeSpec.model_validate({"compose_file": "c.yaml", "service": "main"})
    with pytest.raises(InvalidInput, match=needle):
        ov.load(s, tmp_path / "p.yaml", "profile.t")


def test_missing_compose_file(tmp_path: Path) -> None:
    s = ComposeSpec.model_validate({"compose_file": "nope.yaml", "service": "main"})
    with pytest.raises(InvalidInput, match="cannot read"):
        ov.load(s, tmp_path / "p.yaml", "profile.t")


@pytest.mark.parametrize(
    ("service", "entry"),
    [({"privileged": True}, "privileged"), ({"network_mode": "host"}, "host-network"),
     ({"pid": "host"}, "host-pid"), ({"ipc": "host"}, "host-ipc"),
     ({"devices": ["/dev/kvm"]}, "devices"), ({"cap_add": ["SYS_ADMIN"]}, "extra-capabilities"),
     ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker-socket"),
     ({"volumes": [{"type": "bind", "source": "/etc", "target": "/x"}]}, "host-paths"),
     ({"volumes": ["./data:/data"]}, "host-paths"),
     ({"security_opt": ["seccomp:unconfined"]}, "privileged"),
     ({"userns_mode": "host"}, "privileged")],
)
def test_dangerous_settings_are_refused_unless_allowed(
    service: dict[str, Any], entry: str
) -> None:
    doc = {"services": {"main": {"image": "x", **service}}}
    with pytest.raises(InvalidInput, match=f"--allow {entry}"):
        ov.check(doc, [], "profile.t", "hostA")
    ov.check(doc, [entry], "profile.t", "hostA")  # the operator's allow-list permits it


def test_named_volumes_are_fine() -> None:
    ov.check({"services": {"main": {"image": "x", "volumes": ["data:/data"]}}}, [], "p", "t")


def test_override_labels_publishes_and_locks_down() -> None:
    out = ov.build(BASE, spec(resources={"cpus": 1.5, "memory": "1g", "pids": 256}),
                   sandbox_id="sbx-abcdefghij", instance="i1", user="agent",
                   env={"FOO": "bar", "PRICE": "$HOME"}, bind="127.0.0.1", port=23456)
    for svc in out["services"].values():
        assert svc["labels"] == {"sandboxer.id": "sbx-abcdefghij", "sandboxer.instance": "i1"}
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["cap_drop"] == ["ALL"]  # every service, not just the main one
        assert (svc["mem_limit"], svc["pids_limit"]) == ("1g", 256)
    assert "cap_add" not in out["services"]["db"]
    main = out["services"]["main"]
    assert main["ports"] == [{"target": 22, "host_ip": "127.0.0.1", "published": "23456",
                              "protocol": "tcp"}]
    assert main["environment"] == {"FOO": "bar", "PRICE": "$$HOME",
                                   "SANDBOXER_ID": "sbx-abcdefghij", "SANDBOXER_USER": "agent",
                                   "SANDBOXER_KEYS_WAIT": "120"}
    assert main["cap_drop"] == ["ALL"]
    assert set(main["cap_add"]) <= set(ov.SSHD_CAPS)
    assert "SYS_ADMIN" not in main["cap_add"]
    assert (main["cpus"], main["mem_limit"], main["pids_limit"]) == (1.5, "1g", 256)
    assert not any(k in main for k in ("privileged", "network_mode", "pid", "devices"))
    assert out["networks"]["default"]["labels"]["sandboxer.id"] == "sbx-abcdefghij"
    ov.check({"services": {"m": {"image": "x"}}}, [], "p", "t")


def test_key_tarball_is_root_owned_and_private() -> None:
    import io
    import tarfile

    data = key_tarball(b"PRIVATE", "ssh-ed25519 AAAA x")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        key = members["etc/sandboxer/ssh_host_ed25519_key"]
        assert (key.mode, key.uid, key.gid) == (0o600, 0, 0)
        auth = tar.extractfile("etc/sandboxer/authorized_keys")
        assert auth is not None
        assert auth.read() == b"ssh-ed25519 AAAA x\n"


def test_every_service_is_limited_in_the_form_its_profile_uses() -> None:
    doc = {"services": {"main": {"image": "x"},
                        "side": {"image": "x", "deploy": {"resources": {"limits": {
                            "pids": -1}}}}},
           "volumes": {"data": {}, "theirs": {"external": True}}}
    out = ov.build(doc, spec(), sandbox_id="sbx-abcdefghij", instance="i1", user="agent",
                   env={}, bind="127.0.0.1", port=23456)
    assert (out["services"]["main"]["pids_limit"], out["services"]["main"]["mem_limit"]) == (
        ov.DEFAULT_PIDS, ov.DEFAULT_MEMORY)
    side = out["services"]["side"]
    assert side["deploy"]["resources"]["limits"] == {"pids": ov.DEFAULT_PIDS,
                                                     "memory": ov.DEFAULT_MEMORY}
    assert "pids_limit" not in side
    # Named volumes are labelled so owned() finds a leaked one; an external one is not ours.
    # The key volumes hold the SSH keys, out of the main container's own filesystem.
    labels = {"labels": {"sandboxer.id": "sbx-abcdefghij", "sandboxer.instance": "i1"}}
    assert out["volumes"] == {"data": labels, "sandboxer-keys": labels,
                              "sandboxer-sshd-keys": labels}
    assert {"type": "volume", "source": "sandboxer-keys", "target": "/etc/sandboxer"} in \
        out["services"]["main"]["volumes"]
    assert "volumes" not in side
    assert ov.named_volumes(doc) == ["data"]


@pytest.mark.parametrize("key", ["env_file", "build", "extends"])
def test_keys_compose_resolves_away_are_refused_as_written(key: str) -> None:
    doc = {"services": {"main": {"image": "x", key: "whatever"}}}
    with pytest.raises(InvalidInput, match=f"services.main.{key}"):
        ov.check(doc, [], "p", "t")
    ov.check(doc, [key.replace("_", "-")], "p", "t")
    with pytest.raises(InvalidInput, match="--allow include"):
        ov.check({"include": ["x.yaml"], "services": {"main": {"image": "x"}}}, [], "p", "t")


def test_the_hint_names_each_grant_as_the_cli_takes_it() -> None:
    doc = {"services": {"main": {"image": "x", "privileged": True, "env_file": ["/e"]}}}
    with pytest.raises(InvalidInput) as e:
        ov.check(doc, [], "p", "t")
    assert "--allow env-file --allow privileged" in (e.value.hint or "")


@pytest.mark.parametrize(("theirs", "kept"), [(None, "unless-stopped"),
                                              ("always", "unless-stopped"),
                                              ("no", None), ("on-failure", None)])
def test_a_stopped_sandbox_stays_stopped_after_a_dockerd_restart(theirs: str | None,
                                                                 kept: str | None) -> None:
    """`restart: always` would start a `sandboxer stop`ped container again when dockerd
    restarts, behind the store's back: the override makes it unless-stopped."""
    main: dict[str, Any] = {"image": "sandboxer/base:latest"}
    if theirs is not None:
        main["restart"] = theirs
    doc = {"services": {"main": main}}
    out = ov.build(doc, spec(), sandbox_id="sbx-abcdefghij", instance="i1", user="agent",
                   env={}, bind="127.0.0.1", port=40000)
    assert out["services"]["main"].get("restart") == kept
