"""ext.local lifecycle pieces that need no jail: record flags, the stopped guard of an
endpoint op, error codes over the control socket, the caller's side without a root."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config import Settings
from sandboxer.errors import Conflict, InvalidInput
from sandboxer.extensions.base import Handle
from sandboxer.extensions.local import control, lifecycle
from sandboxer.extensions.local.extension import LocalExtension


def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home"),
                              "SANDBOXER_LOCAL_ROOT": str(tmp_path / "root")})


def test_mark_sets_and_clears_flags_and_refuses_a_missing_record(tmp_path: Path) -> None:
    s = settings(tmp_path)
    (tmp_path / "root" / "sbx-1").mkdir(parents=True)
    control.write_record(s, "sbx-1", {"sandbox_id": "sbx-1", "port": 2222})
    assert lifecycle.mark(s, "sbx-1", stopped=True)["stopped"] is True
    assert control.read_record(s, "sbx-1") == {"sandbox_id": "sbx-1", "port": 2222,
                                               "stopped": True}
    lifecycle.mark(s, "sbx-1", stopped=False, paused=False)
    assert control.read_record(s, "sbx-1") == {"sandbox_id": "sbx-1", "port": 2222}
    with pytest.raises(Conflict, match="sbx-2 has no record"):
        lifecycle.mark(s, "sbx-2", stopped=True)


def test_a_stopped_record_is_not_served_by_endpoint(tmp_path: Path) -> None:
    s = settings(tmp_path)
    (tmp_path / "root" / "sbx-1").mkdir(parents=True)
    control.write_record(s, "sbx-1", {"sandbox_id": "sbx-1", "port": 2222, "user": "u",
                                      "stopped": True})
    ext = LocalExtension(s)
    h = Handle(sandbox_id="sbx-1", extension="ext.local", target="local")
    with pytest.raises(Conflict, match="is stopped") as e:
        asyncio.run(ext.endpoint(h))
    assert e.value.hint == "sandboxer start sbx-1"
    assert asyncio.run(ext.inspect(h)).live  # kept, though nothing serves it


@pytest.mark.parametrize(("code", "cls"), [("conflict", Conflict),
                                           ("invalid_input", InvalidInput)])
def test_error_codes_come_back_as_their_class(tmp_path: Path, code: str,
                                              cls: type[Exception]) -> None:
    s = settings(tmp_path)
    s.ensure()

    async def serve() -> Any:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(json.dumps({"ok": False, "error": "it is stopped", "code": code,
                                     "hint": "sandboxer start x"}).encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(answer, str(control.socket_path(s)))
        try:
            await control.request(s, "pause", sandbox_id="x")
        finally:
            server.close()

    with pytest.raises(cls, match="it is stopped"):
        asyncio.run(serve())


def test_pausable_needs_root(tmp_path: Path) -> None:
    ext = LocalExtension(settings(tmp_path))
    h = Handle(sandbox_id="sbx-1", extension="ext.local", target="local")
    reason = ext.pausable(h)
    assert (reason is None) == (os.geteuid() == 0)
    assert ext.stoppable(h) is None


def test_a_restored_sandbox_core_cannot_rebind_is_stopped_here_not_served_bare(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Host.rebind raising (its store failing) is tried again, then the sandbox is stopped
    in the endpoint: its sessions never run without their secrets (review L4)."""
    calls: list[str] = []

    class _Host:
        async def rebind(self, sid: str) -> bool:
            calls.append("rebind")
            raise OSError("database is locked")

    class _Endpoint:
        host = _Host()

        async def stop_here(self, sid: str) -> None:
            calls.append(f"stop {sid}")

    async def no_wait(_s: float) -> None:
        return None

    monkeypatch.setattr(lifecycle.asyncio, "sleep", no_wait)
    ok = asyncio.run(lifecycle.Lifecycle._rebind(_Endpoint(), "sbx-1"))  # type: ignore[arg-type]
    assert ok is True  # the next restored sandbox is asked about too
    assert calls == ["rebind"] * lifecycle.REBIND_TRIES + ["stop sbx-1"]
