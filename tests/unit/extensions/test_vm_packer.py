"""ext.vm-packer without QEMU: spec parsing, cache keys, argument arrays, key lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput
from sandboxer.extensions.base import BuildsImages
from sandboxer.extensions.vm_packer import images, qemu, remote
from sandboxer.extensions.vm_packer.spec import VMSpec, size_bytes

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0000000000000000000000000000000000000000000"


def test_spec_packer_with_defaults() -> None:
    spec = VMSpec.model_validate({"packer": {"template": "base.json", "vars": {"a": "1"}}})
    assert spec.attach is None
    assert (spec.vm.cpus, spec.vm.memory_mib, spec.vm.accel) == (1, 512, "auto")


def test_spec_attach() -> None:
    spec = VMSpec.model_validate({"attach": {"host": "10.0.0.5", "user": "ops",
                                             "host_key": KEY + " comment",
                                             "identity": "/etc/ops/key"}})
    assert spec.attach is not None
    assert spec.attach.port == 22
    assert spec.attach.host_key == KEY  # the comment is dropped


@pytest.mark.parametrize("doc", [
    {},
    {"packer": {"template": "t.json"}, "attach": {"host": "h", "user": "u", "host_key": KEY,
                                                  "identity": "/k"}},
    {"packer": {"template": "t.json"}, "vm": {"accel": "xen"}},
    {"packer": {"template": "t.json"}, "vm": {"memory": "lots"}},
    {"packer": {"template": "t.json", "vars": {"bad name": "x"}}},
    {"packer": {"template": "t.json"}, "surprise": 1},
    {"attach": {"host": "h; rm -rf /", "user": "u", "host_key": KEY, "identity": "/k"}},
    {"attach": {"host": "h", "user": "u", "host_key": "not a key", "identity": "/k"}},
])
def test_spec_refuses(doc: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VMSpec.model_validate(doc)


@pytest.mark.parametrize("vm", [
    {"memory": "0"}, {"memory": "0M"}, {"memory": "0G"}, {"memory": "63M"},
    {"memory": "1K"}, {"memory": "2T"}, {"memory": "-1"}, {"memory": "1.5G"},
    {"memory": ""}, {"disk": "0"}, {"disk": "0G"}, {"disk": "100T"},
])
def test_nonsense_sizes_are_refused(vm: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match=r"vm\.(memory|disk)|expected a size"):
        VMSpec.model_validate({"packer": {"template": "t.json"}, "vm": vm})


def test_memory_is_what_was_asked() -> None:
    for text, mib in (("64M", 64), ("384M", 384), ("2G", 2048), ("1024", 1024)):
        spec = VMSpec.model_validate({"packer": {"template": "t.json"}, "vm": {"memory": text}})
        assert spec.vm.memory_mib == mib


def test_network_is_off_unless_the_profile_asks(tmp_path: Path) -> None:
    spec = VMSpec.model_validate({"packer": {"template": "t.json"}})
    assert spec.network is False
    assert qemu.netdev(_boot(tmp_path)) == (
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2345-:22")
    on = qemu.Boot(**{**_boot(tmp_path).__dict__, "network": True})
    assert qemu.netdev(on) == "user,id=net0,restrict=off,hostfwd=tcp:127.0.0.1:2345-:22"
    with pytest.raises(ValidationError, match="network applies to VMs booted"):
        VMSpec.model_validate({"network": True, "attach": {
            "host": "h", "user": "u", "host_key": KEY, "identity": "/k"}})


@pytest.mark.parametrize(("rc", "out", "nothing"), [
    (0, "", False),
    (255, "ops@127.0.0.1: Permission denied (publickey).", True),
    (255, "ssh: connect to host h port 22: Connection refused", True),
    (1, "mkdir: cannot create directory", True),
    (255, "timed out after 30s", False),
    (255, "Connection to h closed by remote host.", False),
])
def test_a_failed_admin_command_that_changed_nothing(rc: int, out: str, nothing: bool) -> None:
    assert remote.nothing_ran(rc, out) is nothing


def test_sizes() -> None:
    assert size_bytes("512M") == 512 << 20
    assert size_bytes("2g") == 2 << 30
    assert size_bytes("1024") == 1 << 30  # plain numbers are MiB


def _template(tmp_path: Path, **extra: str) -> images.Template:
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "base" / "seed.sh").write_text("echo seed\n")
    doc = {"_sandboxer_seed": "base/seed.sh", "_sandboxer_inputs": "base",
           "variables": {"memory": "512", "extra": ""}, **extra}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    return images.Template.load(path)


def test_cache_key_follows_template_vars_and_inputs(tmp_path: Path) -> None:
    t = _template(tmp_path)
    key = images.cache_key(t, {"memory": "512"})
    assert key == images.cache_key(t, {"memory": "512"})
    assert key != images.cache_key(t, {"memory": "1024"})
    (tmp_path / "base" / "guest.conf").write_text("x\n")
    assert images.cache_key(t, {"memory": "512"}) != key
    key2 = images.cache_key(t, {"memory": "512"})
    (tmp_path / "base" / "seed.sh").chmod(0o755)
    assert images.cache_key(t, {"memory": "512"}) != key2


def test_unknown_vars_are_refused(tmp_path: Path) -> None:
    t = _template(tmp_path)
    with pytest.raises(InvalidInput, match="declares no variable nope"):
        t.check_vars({"nope": "1"})


def test_template_resolution(tmp_path: Path) -> None:
    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "h"),
                           "SANDBOXER_PACKER_DIR": str(tmp_path / "packer")})
    (tmp_path / "packer").mkdir()
    (tmp_path / "packer" / "base.json").write_text("{}")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.json").write_text("{}")
    src = tmp_path / "profiles" / "p.yaml"
    assert images.resolve_template(s, "mine.json", src) == tmp_path / "profiles" / "mine.json"
    assert images.resolve_template(s, "base.json", src) == tmp_path / "packer" / "base.json"
    with pytest.raises(InvalidInput, match="not found"):
        images.resolve_template(s, "nope.json", src)


def test_a_half_built_entry_is_not_an_entry(tmp_path: Path) -> None:
    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path), "SANDBOXER_VM_IMAGES":
                           str(tmp_path / "img")})
    d = tmp_path / "img" / "k"
    d.mkdir(parents=True)
    (d / "disk.qcow2").write_bytes(b"")
    assert images.entry(s, "k") is None
    for f in ("vmlinuz", "initrd.img"):
        (d / f).write_bytes(b"")
    assert images.entry(s, "k") == d


def _boot(tmp_path: Path, accel: str = "tcg", cpus: int = 1) -> qemu.Boot:
    return qemu.Boot(sandbox_id="sbx-aaaaaaaaaa", image=tmp_path / "img",
                     overlay=tmp_path / "o.qcow2", config_drive=tmp_path / "c.img",
                     pidfile=tmp_path / "qemu.pid", console=tmp_path / "console.log",
                     port=2345, cpus=cpus, memory_mib=384, accel=accel)


def test_qemu_argv(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(_boot(tmp_path))
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-name") + 1] == "guest=sandboxer.id=sbx-aaaaaaaaaa"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "384"
    assert "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2345-:22" in argv
    assert f"file={tmp_path / 'c.img'},if=virtio,format=raw,readonly=on" in argv
    assert argv[argv.index("-pidfile") + 1] == str(tmp_path / "qemu.pid")
    assert "-daemonize" in argv
    append = argv[argv.index("-append") + 1]
    assert "root=/dev/vda" in append
    assert "ssh-" not in " ".join(argv), "no key may reach the command line"


def test_qemu_argv_kvm_and_smp(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(_boot(tmp_path, accel="kvm", cpus=2))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert qemu.qemu_argv(_boot(tmp_path, cpus=2))[argv.index("-accel") + 1] \
        == "tcg,thread=multi"


def test_overlay_argv(tmp_path: Path) -> None:
    assert qemu.overlay_argv(Path("/b.qcow2"), Path("/o.qcow2"), 3 << 30) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "/b.qcow2", "-F", "qcow2",
        "/o.qcow2", str(3 << 30)]


def test_accel_tcg_never_probes(tmp_path: Path) -> None:
    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path)})
    assert qemu.choose_accel(s, "tcg", qemu="/nonexistent") == ("tcg", "asked for")


def test_kvm_probe_is_cached(tmp_path: Path) -> None:
    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path)})
    s.run_dir.mkdir(parents=True)
    import time

    (s.run_dir / "kvm-probe.json").write_text(json.dumps(
        {"ok": False, "reason": "hangs", "at": time.time()}))
    assert qemu.choose_accel(s, "auto", qemu="/nonexistent") == ("tcg", "KVM unusable (hangs)")


def test_key_lines_and_revocation() -> None:
    line = remote.key_line(KEY + " sbx-aaaaaaaaaa", "sbx-aaaaaaaaaa")
    assert line == f"{KEY} sandboxer.id=sbx-aaaaaaaaaa"
    assert "sandboxer.id=sbx-aaaaaaaaaa$" in remote.revoke_command("sbx-aaaaaaaaaa")


def test_images_build_dispatch(home: Path) -> None:
    """ext.vm-packer claims Packer template paths; profiles are core's to route."""
    from sandboxer.manager import Manager

    ext = Manager(Settings.from_env()).extension("ext.vm-packer")
    assert isinstance(ext, BuildsImages)
    assert ext.claims_image("packer/base.json")
    assert ext.claims_image("base.json")
    assert not ext.claims_image("base")
    assert not ext.claims_image("profile.vm-dev")
