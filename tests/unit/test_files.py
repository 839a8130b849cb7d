"""Files in and out through the manager (sandboxer.files) on the fake extension, and the
profile's forwarded ports reaching the descriptor and the extension's ProvisionRequest."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from sandboxer.access import Caller
from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RequestTooLarge,
    SandboxNotFound,
)
from sandboxer.manager import Manager


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_forward_ports_reach_the_descriptor_and_the_extension(
        settings: Settings, profiles_dir: Path) -> None:
    (profiles_dir / "fwd.yaml").write_text(
        "id: profile.fwd\nextension: ext.fake\nreachability: {forward: [8080, 3000]}\n")
    m = Manager(settings)
    s = run(m.create("profile.fwd"))
    assert s.reachability is not None
    assert s.reachability.forward == [3000, 8080]  # sorted by the profile model
    assert json.loads((settings.home / "fake" / s.id / "forward").read_text()) == [3000, 8080]
    plain = run(m.create("profile.fake"))
    assert plain.reachability is not None
    assert plain.reachability.forward == []
    assert json.loads((settings.home / "fake" / plain.id / "forward").read_text()) == []


def test_put_and_get_a_file(settings: Settings, tmp_path: Path) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake", actor="agt"))
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x00hello\xff" * 1000)
    assert run(m.put_file(s.id, src, "copy.bin")) == 7000
    assert (settings.home / "fake" / s.id / "root" / "copy.bin").read_bytes() == \
        src.read_bytes()
    out = tmp_path / "out.bin"
    assert run(m.get_file(s.id, "copy.bin", out, caller=Caller("agt"))) == 7000
    assert out.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with pytest.raises(RequestTooLarge):
        run(m.get_file(s.id, "copy.bin", tmp_path / "big", max_bytes=10))
    with pytest.raises(NotFound, match="no such file"):
        run(m.get_file(s.id, "missing", tmp_path / "x"))


def test_another_actor_gets_not_found_and_wrong_states_conflict(
        settings: Settings, tmp_path: Path) -> None:
    m = Manager(settings)
    s = run(m.create("profile.fake", actor="agt"))
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(SandboxNotFound):
        run(m.put_file(s.id, src, "f", caller=Caller("other")))
    with pytest.raises(SandboxNotFound):
        run(m.get_file("sbx-aaaaaaaaaa", "f", tmp_path / "o"))
    run(m.stop(s.id))
    with pytest.raises(Conflict, match="is stopped; files are copied only") as e:
        run(m.put_file(s.id, src, "f"))
    assert "sandboxer start" in e.value.render()
    run(m.start(s.id))
    with pytest.raises(InvalidInput, match="NUL or newline"):
        run(m.put_file(s.id, src, "a\nb"))
    with pytest.raises(InvalidInput, match="expected a path"):
        run(m.get_file(s.id, "", tmp_path / "o"))


def test_an_extension_without_the_capability_is_refused(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxer import files

    m = Manager(settings)
    s = run(m.create("profile.fake"))
    monkeypatch.setattr(files, "CopiesFiles", type("Nothing", (), {}))
    with pytest.raises(InvalidInput, match=r"ext\.fake cannot copy files"):
        run(m.get_file(s.id, "f", tmp_path / "o"))
