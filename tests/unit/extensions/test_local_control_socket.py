"""The ext.local control socket's client refuses a path someone else could have chosen.

Its requests carry resolved secret values (``add``), so a symlink put in a loosened run/
must get nothing, exactly like the local service's socket (tests/unit/service)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.errors import UnsafePermissions
from sandboxer.extensions.local import control


def test_a_symlink_in_a_loosened_run_dir_gets_no_request(settings: Settings,
                                                          tmp_path: Path) -> None:
    settings.ensure()
    path = control.socket_path(settings)
    got: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as decoy:
        decoy.bind(str(tmp_path / "decoy.sock"))
        decoy.listen(1)
        decoy.settimeout(1)

        def listen() -> None:  # whatever reaches the decoy, then hang up
            with contextlib.suppress(TimeoutError):
                conn, _ = decoy.accept()
                with conn:
                    conn.settimeout(5)
                    got.append(conn.recv(1 << 20))

        thread = threading.Thread(target=listen)
        thread.start()
        path.symlink_to(tmp_path / "decoy.sock")
        settings.run_dir.chmod(0o777)
        try:
            with pytest.raises(UnsafePermissions, match="symlink"):
                asyncio.run(control.request(settings, "add", secrets={"T": "canary"}))
        finally:
            thread.join()
    assert got == []  # nobody connected to the decoy
