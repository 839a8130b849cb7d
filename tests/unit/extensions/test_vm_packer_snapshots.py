"""ext.vm-packer's snapshots without QEMU: a stopped VM's overlay copied (modes, labels,
size, content hash, cleanup on failure), a sandbox's own overlay made from it, deletion,
leftovers; the attach variant's refusals; the config drive's forward ports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions.base import Handle, ProvisionRequest, Snapshots, Target
from sandboxer.extensions.vm_packer import qemu
from sandboxer.extensions.vm_packer.extension import VMPackerExtension
from sandboxer.models.common import utcnow
from sandboxer.models.extension import SnapshotArtifact
from sandboxer.models.profile import Profile

SID = "sbx-aaaaaaaaaa"
SNAP = "snap-aaaaaaaaaa"
ATTACH = {"kind": "attach", "host": "lab-vm.lan", "port": 22, "user": "agent",
          "host_key": "ssh-ed25519 AAAA"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0000000000000000000000000000000000000000000"


def _ext(tmp_path: Path) -> VMPackerExtension:
    return VMPackerExtension(Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home")}))


def _stopped_vm(ext: VMPackerExtension, tmp_path: Path, data: bytes) -> Handle:
    """A booted VM's directory as a stop leaves it: record, overlay, no QEMU."""
    image = tmp_path / "images" / "key"
    image.mkdir(parents=True)
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (image / name).write_bytes(b"x")
    d = ext.sandbox_dir(SID)
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps({
        "kind": "boot", "image": str(image), "user": "agent", "accel": "tcg", "cpus": 1,
        "memory_mib": 384, "stopped": True}))
    with open(d / "overlay.qcow2", "wb") as f:  # a hole, then data: kept sparse
        f.seek(1 << 20)
        f.write(data)
    return Handle(sandbox_id=SID, extension=ext.name, target="qemu",
                  data={"kind": "boot", "host": "127.0.0.1", "port": 2345, "user": "agent"})


def test_a_stopped_vms_overlay_becomes_a_snapshot_and_a_new_overlay(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    assert isinstance(ext, Snapshots)
    h = _stopped_vm(ext, tmp_path, b"the work")
    assert ext.snapshottable(h) is None
    seen: list[str] = []
    art = asyncio.run(ext.snapshot(h, SNAP, seen.append))
    overlay = (ext.sandbox_dir(SID) / "overlay.qcow2").read_bytes()
    assert (art.snapshot_id, art.extension, art.target) == (SNAP, ext.name, "qemu")
    assert art.size_bytes == len(overlay)
    assert art.content_hash == f"sha256:{hashlib.sha256(overlay).hexdigest()}"
    assert art.data["kind"] == "disk"
    assert art.data["sandbox_id"] == SID
    d = ext.snapshot_dir(SNAP)
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "disk.qcow2").stat().st_mode & 0o777 == 0o600
    assert (d / "disk.qcow2").read_bytes() == overlay
    meta = json.loads((d / "snapshot.json").read_text())
    assert meta["labels"] == {"sandboxer.snapshot": SNAP, "sandboxer.id": SID}
    assert any("copying its disk" in m for m in seen)
    assert [a.snapshot_id for a in asyncio.run(ext.owned_snapshots(Target(
        name="qemu", extension=ext.name)))] == [SNAP]

    # a new sandbox's overlay: its own copy, whole after the snapshot is deleted
    assert ext.snapshot_image(art) == Path(art.data["image"])
    mine = tmp_path / "new-overlay.qcow2"
    asyncio.run(ext.overlay_from(art, mine, None))
    asyncio.run(ext.delete_snapshot(art))
    asyncio.run(ext.delete_snapshot(art))  # idempotent
    assert not d.exists()
    assert mine.read_bytes() == overlay
    assert mine.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ProvisionFailed, match="has no disk"):
        asyncio.run(ext.overlay_from(art, tmp_path / "other.qcow2", None))
    assert asyncio.run(ext.owned_snapshots(Target(name="qemu", extension=ext.name))) == []


def test_a_failed_snapshot_leaves_nothing(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    h = _stopped_vm(ext, tmp_path, b"x")
    (ext.sandbox_dir(SID) / "overlay.qcow2").unlink()
    with pytest.raises(ProvisionFailed, match="no disk overlay"):
        asyncio.run(ext.snapshot(h, SNAP, lambda _m: None))
    assert not ext.snapshot_dir(SNAP).exists()
    with pytest.raises(InvalidInput, match="not a snapshot id"):
        ext.snapshot_dir("../etc")


def test_a_snapshot_needs_its_image(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    gone = SnapshotArtifact(snapshot_id=SNAP, extension=ext.name, target="qemu",
                            data={"kind": "disk", "image": str(tmp_path / "nowhere")})
    with pytest.raises(ProvisionFailed, match="is gone from the image cache"):
        ext.snapshot_image(gone)
    other = SnapshotArtifact(snapshot_id=SNAP, extension="ext.local", data={})
    with pytest.raises(InvalidInput, match=r"not a disk of ext\.vm-packer"):
        ext.snapshot_image(other)


def test_the_attach_variant_refuses_snapshots_and_forwarding(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    h = Handle(sandbox_id=SID, extension=ext.name, target="qemu", data=ATTACH)
    why = ext.snapshottable(h)
    assert why is not None
    assert "attached VM (agent@lab-vm.lan:22): its disk is not sand-boxer's to copy" in why
    with pytest.raises(InvalidInput, match=f"cannot snapshot {SID}: .* attached VM"):
        asyncio.run(ext.snapshot(h, SNAP, lambda _m: None))
    assert not ext.snapshot_dir(SNAP).exists()
    assert ext.snapshottable(Handle(sandbox_id=SID, extension=ext.name,
                                    data={"kind": "boot"})) is not None  # no record

    ident = tmp_path / "ident"
    ident.write_text("k")
    doc = {"id": "profile.lab", "extension": ext.name,
           "spec": {"attach": {"host": "h", "user": "u", "host_key": KEY,
                               "identity": str(ident)}},
           "reachability": {"user": "u", "forward": [8080]}}
    profile = Profile.model_validate(doc)
    spec = ext.parse_spec(profile)
    target = Target(name="qemu", extension=ext.name)
    with pytest.raises(InvalidInput, match=r"reachability\.forward is not supported by "
                       "the attach variant"):
        ext.check(profile, spec, target, None)
    art = SnapshotArtifact(snapshot_id=SNAP, extension=ext.name, data={"kind": "disk"})
    for extra, match in (({"forward": (8080,)}, "cannot allow reachability.forward"),
                         ({"snapshot": art}, f"cannot start from snapshot {SNAP}")):
        req = ProvisionRequest(sandbox_id=SID, profile=profile, spec=spec, target=target,
                               settings=ext.settings, user="u", labels={}, env={},
                               expires_at=utcnow() + timedelta(hours=1), **extra)
        with pytest.raises(InvalidInput, match=match):
            asyncio.run(ext.provision(req, {}))
        assert not ext.sandbox_dir(SID).exists()


def _drive_file(img: Path, name: str) -> str:
    done = subprocess.run(["/usr/sbin/debugfs", "-R", f"cat /{name}", str(img)],
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_the_config_drive_lists_the_forward_ports(tmp_path: Path) -> None:
    args = {"user": "agent", "authorized_keys": "k\n", "host_key": b"h", "hostname": SID,
            "secrets": False}
    qemu.make_config_drive(tmp_path / "a.img", **args, forward=(8080, 9000))
    assert _drive_file(tmp_path / "a.img", "forward") == "8080 9000\n"
    qemu.make_config_drive(tmp_path / "b.img", **args)
    assert _drive_file(tmp_path / "b.img", "forward") == ""  # none: no file
    with pytest.raises(ProvisionFailed, match="forward ports must be 1 to 65535"):
        qemu.make_config_drive(tmp_path / "c.img", **args, forward=(0,))
