"""VMBase: what every part of ext.vm-packer shares about one sandbox's VM — its directory
and record, its QEMU process, its endpoint, and starting QEMU over its disk."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from typing_extensions import override

from sandboxer import childenv, envvars
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed
from sandboxer.extensions import _keys
from sandboxer.extensions._ssh import SSHExtension, ssh_probe
from sandboxer.extensions.base import Endpoint, Handle, Host, key_paths
from sandboxer.extensions.vm_packer import qemu, qmp

TARGET = "qemu"
PORT_TRIES = 5
QEMU_WATCH = 0.5  # seconds between checks that a booting VM's QEMU still runs
_PORT_CLASH = ("Could not set up host forwarding rule", "Address already in use")


class VMBase(SSHExtension):
    """The sandbox directory ``$SANDBOXER_HOME/vm/<id>/`` (0700): ``record.json`` (no
    secret), ``overlay.qcow2``, ``config.img``, ``qemu.pid``, ``qmp.sock``,
    ``console.log``."""

    def __init__(self, settings: Settings, host: Host | None = None) -> None:
        super().__init__(settings, host)
        self._answered: set[str] = set()  # booted here, SSH already answered

    @override
    def keeper_interval(self) -> float:
        return envvars.vm_keeper_interval(self.settings.env)

    def vm_root(self) -> Path:
        return self.settings.home / "vm"

    def sandbox_dir(self, sid: str) -> Path:
        return self.vm_root() / sid

    def _record(self, sid: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.sandbox_dir(sid) / "record.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _write_record(self, sid: str, record: dict[str, Any]) -> None:
        path = self.sandbox_dir(sid) / "record.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    @contextlib.asynccontextmanager
    async def _locked(self, sid: str) -> AsyncIterator[dict[str, Any]]:
        """This sandbox's lock (stop, start, snapshot and the keeper's revival exclude each
        other, across processes); yields its record as it is then."""
        fd = os.open(self.sandbox_dir(sid) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield self._record(sid)
        finally:
            os.close(fd)

    def _pid(self, sid: str) -> int | None:
        try:
            pid = int((self.sandbox_dir(sid) / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if qemu.is_our_vm(pid, sid) else None

    def _endpoint(self, sid: str, data: dict[str, Any], host_public: str) -> Endpoint:
        paths = key_paths(self.settings, sid)
        return Endpoint(host=data["host"], port=data["port"], user=data["user"],
                        host_key=" ".join(host_public.split()[:2]),
                        identity_file=str(paths["identity"]),
                        known_hosts_file=str(paths["known_hosts"]))

    @override
    async def endpoint(self, handle: Handle) -> Endpoint:
        data = handle.data
        if data.get("kind") == "attach":
            return self._endpoint(handle.sandbox_id, data, data["host_key"])
        host_key = key_paths(self.settings, handle.sandbox_id)["host_key"]
        return self._endpoint(handle.sandbox_id, data, _keys.public_of(host_key))

    async def _probe_while_running(self, ep: Endpoint, sid: str, timeout: float) -> None:
        """Wait for SSH, but stop within QEMU_WATCH seconds once QEMU is gone: killed by a
        destroy of the booting sandbox (the manager reports that as a conflict) or dead."""
        probe = asyncio.ensure_future(ssh_probe(ep, timeout=timeout))
        try:
            while not probe.done():
                await asyncio.wait({probe}, timeout=QEMU_WATCH)
                if not probe.done() and self._pid(sid) is None:
                    raise ProvisionFailed(f"QEMU of {sid} exited while the VM was booting")
            probe.result()
        finally:
            if not probe.done():
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)

    async def _await_boot(self, ep: Endpoint, sid: str, timeout: float) -> None:
        """``_probe_while_running``; a failure quotes the last console lines."""
        try:
            await self._probe_while_running(ep, sid, timeout)
        except ProvisionFailed as e:
            console = tail(self.sandbox_dir(sid) / "console.log", 8)
            raise ProvisionFailed(f"{e.message}" + (f"\nlast console lines:\n{console}"
                                                    if console else "")) from e

    def _qemu_bin(self) -> str:
        found = shutil.which(qemu.QEMU, path=self.settings.env.get("PATH"))
        if found is None:
            raise ProvisionFailed(f"{qemu.QEMU} is not installed",
                                  hint="apt-get install qemu-system-x86 qemu-utils")
        return found

    async def _start(self, qemu_bin: str, sid: str, image: Path, *, cpus: int,
                     memory_mib: int, accel: str, network: bool,
                     port: int | None = None) -> int:
        """Start QEMU detached over the sandbox's overlay and config drive on ``port`` (a
        stopped VM's old port, so its descriptor stays the same) or a free one; a port
        taken meanwhile means another try."""
        d = self.sandbox_dir(sid)
        (d / qmp.SOCKET).unlink(missing_ok=True)
        last = ""
        for i in range(PORT_TRIES):
            boot = qemu.Boot(sandbox_id=sid, image=image, overlay=d / "overlay.qcow2",
                             config_drive=d / "config.img", pidfile=d / "qemu.pid",
                             console=d / "console.log",
                             port=port if (i == 0 and port) else qemu.free_port(),
                             cpus=cpus, memory_mib=memory_mib, accel=accel, network=network)
            # QEMU daemonizes and lives as long as the VM: never a copy of our environment.
            # It starts in the sandbox's directory, where it binds qmp.sock by that name.
            proc = await asyncio.create_subprocess_exec(
                *qemu.qemu_argv(boot, qemu_bin), *qmp.argv(), cwd=d,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=childenv.allowed({**os.environ, **self.settings.env}))
            out, _ = await proc.communicate()
            if proc.returncode == 0:
                with contextlib.suppress(OSError):
                    os.chmod(d / qmp.SOCKET, 0o600)
                return boot.port
            last = out.decode(errors="replace").strip()
            if not any(s in last for s in _PORT_CLASH):
                break
        raise ProvisionFailed(f"QEMU did not start: {last[-500:]}")

    async def _check(self, argv: list[str], what: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except FileNotFoundError as e:
            raise ProvisionFailed(f"{argv[0]} is not installed",
                                  hint="apt-get install qemu-utils") from e
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise ProvisionFailed(f"{what} failed: {out.decode(errors='replace').strip()}")


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in text[-lines:] if line.strip())
