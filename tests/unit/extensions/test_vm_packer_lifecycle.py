"""ext.vm-packer's lifecycle capabilities without QEMU: the attach variant's refusals, the
binding's wire format and guest script (run here with the real sh and GNU head against a
directory standing in for the tmpfs), the activity script's output."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions.base import Binds, Handle, Pauses, ReportsActivity, StopsAndStarts
from sandboxer.extensions.vm_packer import remote
from sandboxer.extensions.vm_packer.extension import VMPackerExtension

ATTACH = {"kind": "attach", "host": "lab-vm.lan", "port": 22, "user": "agent",
          "host_key": "ssh-ed25519 AAAA"}


def _ext(tmp_path: Path) -> VMPackerExtension:
    return VMPackerExtension(Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home")}))


def test_the_capabilities_are_there(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    for cap in (StopsAndStarts, Pauses, ReportsActivity, Binds):
        assert isinstance(ext, cap)


def test_the_attach_variant_refuses_stop_and_pause(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    h = Handle(sandbox_id="sbx-aaaaaaaaaa", extension=ext.name, target="qemu", data=ATTACH)
    for why in (ext.stoppable(h), ext.pausable(h)):
        assert why is not None
        assert "attached VM (agent@lab-vm.lan:22)" in why
    with pytest.raises(InvalidInput, match=r"cannot stop sbx-aaaaaaaaaa: .* attached VM"):
        asyncio.run(ext.stop(h))
    with pytest.raises(InvalidInput, match=r"cannot pause sbx-aaaaaaaaaa: .* attached VM"):
        asyncio.run(ext.pause(h))
    with pytest.raises(InvalidInput, match="not sand-boxer's to hold values"):
        asyncio.run(ext.bind(h, {}, {"T": SecretStr("v")}))
    asyncio.run(ext.bind(h, {}, {}))  # nothing to bind: fine


def test_a_vm_without_a_boot_record_is_not_stoppable(tmp_path: Path) -> None:
    ext = _ext(tmp_path)
    h = Handle(sandbox_id="sbx-aaaaaaaaaa", extension=ext.name, data={"kind": "boot"})
    why = ext.stoppable(h)
    assert why is not None
    assert "older sand-boxer" in why


def _bind_here(tmp: Path, env: dict[str, str], secrets: dict[str, Any]) -> None:
    script = remote._BIND.replace("d=/run/secrets", f"d={tmp}")
    done = subprocess.run(["sh", "-c", script], input=remote.bind_stream(env, secrets),
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def test_binding_replaces_the_last_one(tmp_path: Path) -> None:
    tmp = tmp_path / "secrets"
    tmp.mkdir(mode=0o700)
    odd = "line one\nline two\x00 with a NUL and \u00e9 "
    _bind_here(tmp, {"GREETING": "hello there"},
               {"API_TOKEN": SecretStr(odd), "EMPTY": SecretStr("")})
    assert (tmp / "API_TOKEN").read_text() == odd
    assert (tmp / "EMPTY").read_bytes() == b""
    assert (tmp / ".env" / "GREETING").read_text() == "hello there"
    assert (tmp / ".bound").exists()
    assert oct((tmp / "API_TOKEN").stat().st_mode & 0o777) == oct(0o400)
    _bind_here(tmp, {}, {"NEW": SecretStr("n")})
    assert sorted(p.name for p in tmp.iterdir()) == [".bound", ".env", "NEW"]
    assert list((tmp / ".env").iterdir()) == []


def test_the_stream_refuses_what_is_no_name() -> None:
    with pytest.raises(ProvisionFailed, match="not a variable name"):
        remote.bind_stream({"A B": "x"}, {})
    # Lengths are of the encoded value: a multi-byte value is framed in bytes.
    assert remote.bind_stream({}, {"T": SecretStr("\u00e9")}) == b"s T 2\n\xc3\xa9"


def test_the_activity_script_reports_one_line() -> None:
    done = subprocess.run(["sh", "-c", remote._ACTIVITY], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[0] == "activity"
    assert int(words[1]) >= -1  # no SSH session of ours here (remote.activity clamps)
    assert float(words[2]) >= 0
    assert words[3] in ("bound", "unbound")


def test_the_manager_refuses_stop_and_pause_of_an_attached_vm(home: Path) -> None:
    """Through core (Manager.stop/pause): InvalidInput, exit 4, naming the extension and
    its reason; the sandbox stays ready."""
    from datetime import timedelta

    from sandboxer.manager import Manager
    from sandboxer.models.common import utcnow
    from sandboxer.models.sandbox import SandboxStatus

    m = Manager(Settings.from_env())
    now, sid = utcnow(), "sbx-aaaaaaaaaa"
    m.store.insert(SandboxStatus(id=sid, profile="profile.vm-lab", extension="ext.vm-packer",
                                 target="qemu", state="provisioning", actor="agt",
                                 created_at=now, expires_at=now + timedelta(hours=1)),
                   max_expires_at=now + timedelta(hours=2))
    m.store.set_handle(sid, Handle(sandbox_id=sid, extension="ext.vm-packer", target="qemu",
                                   data=ATTACH).model_dump(mode="json"))
    m.store.transition(sid, from_states={"provisioning"}, to_state="ready",
                       event="sandbox.ready")
    for verb in ("stop", "pause"):
        with pytest.raises(InvalidInput) as refused:
            asyncio.run(getattr(m, verb)(sid))
        assert refused.value.exit_code == 4
        assert refused.value.message.startswith(
            f"cannot {verb} sandbox {sid}: ext.vm-packer says: {sid} is an attached VM "
            f"(agent@lab-vm.lan:22): it is not sand-boxer's to {verb}")
    got = m.store.get(sid)
    assert got is not None
    assert got.state == "ready"
