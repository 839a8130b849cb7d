"""One file into or out of a ready sandbox: the service's cp (SDK, MCP, the API's files route).

The extension copies it (``CopiesFiles``: sftp over the sandbox's pinned SSH endpoint for
every SSH extension), so the caller needs no key of the sandbox; this module decides who
may and when: an actor only into and out of its own sandboxes (another's answers not
found, as for every read), only while the sandbox is ``ready``, and only through an
extension that offers the capability (InvalidInput naming it otherwise). The CLI's
``sandboxer cp`` runs OpenSSH's scp with the descriptor instead (``cli/files.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxer.access import Caller, not_found
from sandboxer.errors import Conflict, InvalidInput
from sandboxer.extensions.base import CopiesFiles
from sandboxer.models.extension import Handle
from sandboxer.values import not_reachable_hint, validate_remote_path

if TYPE_CHECKING:
    from sandboxer.manager import Manager

log = logging.getLogger(__name__)


def remote_path(path: str) -> str:
    """A sandbox path as cp takes it, checked (InvalidInput)."""
    try:
        return validate_remote_path(path)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def copier(manager: Manager, sandbox_id: str,
           caller: Caller | None) -> tuple[CopiesFiles, Handle]:
    """The extension and handle of a sandbox ``caller`` may copy into and out of now."""
    rec = manager.store.get_record(sandbox_id)
    if rec is None or (caller is not None and not caller.may_see(rec.status.actor)):
        raise not_found(sandbox_id)
    state = rec.status.state
    if state != "ready" or rec.handle is None:
        why = f" ({rec.status.reason})" if state == "unreachable" and rec.status.reason else ""
        raise Conflict(f"sandbox {sandbox_id} is {state}{why}; files are copied only into "
                       "and out of a ready sandbox",
                       hint=not_reachable_hint(sandbox_id, state))
    ext = manager.extension(rec.status.extension)
    if not isinstance(ext, CopiesFiles):
        raise InvalidInput(f"{ext.name} cannot copy files into or out of its sandboxes",
                           hint=f"use `sandboxer ssh {sandbox_id}` (e.g. `-- cat FILE`)")
    return ext, Handle.model_validate(rec.handle)


async def put_file(manager: Manager, sandbox_id: str, local: Path, remote: str, *,
                   caller: Caller | None = None) -> int:
    """Copy the regular file ``local`` (of this process's machine) to ``remote`` in the
    sandbox, as its user (relative: from its login directory); bytes written."""
    remote = remote_path(remote)
    ext, handle = copier(manager, sandbox_id, caller)
    written = await ext.put_file(handle, local, remote)
    log.info("%s: copied %d bytes in to %r", sandbox_id, written, remote)
    return written


async def get_file(manager: Manager, sandbox_id: str, remote: str, local: Path, *,
                   caller: Caller | None = None, max_bytes: int | None = None) -> int:
    """Copy the sandbox's regular file ``remote`` to ``local`` (0600); bytes read.
    NotFound when it does not exist, RequestTooLarge over ``max_bytes``."""
    remote = remote_path(remote)
    ext, handle = copier(manager, sandbox_id, caller)
    read = await ext.get_file(handle, remote, local, max_bytes=max_bytes)
    log.info("%s: copied %d bytes out of %r", sandbox_id, read, remote)
    return read
