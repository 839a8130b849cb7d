"""Files in and out of a ready sandbox, as one caller asks: the service's side of cp.

``put_file``/``get_file`` copy between a path of this process's machine and the sandbox
(the in-process client's ``upload``/``download``/``cp``; the MCP tools through it);
the API's files route holds the data in ``scratch``, a private temporary file of the
home (0600 in a 0700 directory) removed afterwards. The manager decides who may and when
(``sandboxer.files``): an actor only its own sandbox, only while it is ready, only
through an extension that copies files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandboxer.access import Caller
from sandboxer.service.core import ServiceCore

FILE_SCHEMA = "sandboxer.file/v1"


def copied(sandbox_id: str, path: str, size: int, direction: str) -> dict[str, Any]:
    """The ``sandboxer.file/v1`` document of one copy (``direction``: in or out)."""
    return {"schema": FILE_SCHEMA, "sandbox_id": sandbox_id, "path": path, "bytes": size,
            "direction": direction}


class FileOps(ServiceCore):
    """cp for the SDK, the API and MCP (the CLI's `cp` runs scp with the descriptor)."""

    def check_copy(self, sandbox_id: str, *, caller: Caller | None = None) -> None:
        """Refuse now what a copy would refuse (not found, not ready, an extension that
        cannot): the API's upload asks before it takes the body. Callers that may do
        upkeep read the sandbox first (``get_document``), outside any event loop."""
        from sandboxer import files

        files.copier(self.manager, sandbox_id, caller)

    async def put_file(self, sandbox_id: str, local: Path, remote: str, *,
                       caller: Caller | None = None) -> int:
        """Copy the regular file ``local`` to ``remote`` in a ready sandbox; bytes."""
        return await self.manager.put_file(sandbox_id, local, remote, caller=caller)

    async def get_file(self, sandbox_id: str, remote: str, local: Path, *,
                       caller: Caller | None = None, max_bytes: int | None = None) -> int:
        """Copy a ready sandbox's regular file ``remote`` to ``local`` (0600); bytes."""
        return await self.manager.get_file(sandbox_id, remote, local, caller=caller,
                                           max_bytes=max_bytes)

    def scratch_file(self) -> Path:
        """A new private temporary file of this home (0600, in ``run/files`` 0700); the
        caller removes it."""
        d = self.settings.run_dir / "files"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="cp-", dir=d)
        os.close(fd)
        return Path(name)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """``scratch_file``, removed on exit whatever happened."""
        path = self.scratch_file()
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
