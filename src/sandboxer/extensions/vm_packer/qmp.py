"""QEMU's machine protocol (QMP) on the VM's control socket ``qmp.sock`` (0600, in the
sandbox's 0700 directory): pause (``stop``), resume (``cont``), a clean shutdown
(``system_powerdown``) and the run state.

QEMU binds the socket by its relative name in the sandbox's directory (its working
directory while it starts): a Unix socket path is at most 107 bytes and a deep
``SANDBOXER_HOME`` would not fit. We connect the same way, through ``/proc/self/fd/N`` of
the directory opened here, never by changing our own working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from sandboxer.errors import ProvisionFailed

SOCKET = "qmp.sock"
TIMEOUT = 10.0


def argv() -> list[str]:
    """QEMU's options for the control socket (relative: QEMU starts in the sandbox dir)."""
    return ["-qmp", f"unix:{SOCKET},server=on,wait=off"]


def has_socket(directory: Path) -> bool:
    return (directory / SOCKET).is_socket()


async def command(directory: Path, name: str, arguments: dict[str, Any] | None = None,
                  *, timeout: float = TIMEOUT) -> Any:
    """Run one QMP command on the VM of ``directory``; its ``return`` value.

    ProvisionFailed when there is no socket, QEMU does not answer within ``timeout`` or
    answers with an error (its class and description, which never hold a secret)."""
    path = directory / SOCKET
    if not path.is_socket():
        raise ProvisionFailed(f"the VM in {directory} has no control socket ({SOCKET})",
                              hint="it was booted by an older sand-boxer: stop and start "
                              "it (or recreate it) to get one")
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}/{SOCKET}")
            await _reply(reader, None)  # the greeting
            await _send(writer, "qmp_capabilities", None)
            await _reply(reader, name)
            await _send(writer, name, arguments)
            return await _reply(reader, name)
    except TimeoutError as e:
        raise ProvisionFailed(f"QEMU did not answer {name} within {timeout:.0f}s on "
                              f"{path}") from e
    except OSError as e:
        raise ProvisionFailed(f"QEMU's control socket {path} refused {name}: {e}") from e
    finally:
        os.close(fd)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _send(writer: asyncio.StreamWriter, name: str, arguments: dict[str, Any] | None
                ) -> None:
    msg: dict[str, Any] = {"execute": name}
    if arguments:
        msg["arguments"] = arguments
    writer.write(json.dumps(msg).encode() + b"\n")
    await writer.drain()


async def _reply(reader: asyncio.StreamReader, name: str | None) -> Any:
    """The next message that is not an event: the greeting (``name`` None) or a reply."""
    while True:
        line = await reader.readline()
        if not line:
            raise ProvisionFailed(f"QEMU closed its control socket before answering {name}")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "event" in msg:
            continue
        if name is None:
            return msg.get("QMP")
        if "error" in msg:
            err = msg["error"]
            raise ProvisionFailed(f"QEMU refused {name}: {err.get('class')}: "
                                  f"{err.get('desc')}")
        return msg.get("return")


async def status(directory: Path) -> str:
    """QEMU's run state: ``running``, ``paused`` (after ``stop``), ``shutdown``, …"""
    answer = await command(directory, "query-status")
    return str(answer.get("status", "")) if isinstance(answer, dict) else ""
