"""``cp`` for every Client, over its own ``upload`` and ``download``, written once."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class _Copies(Protocol):
    def upload(self, sandbox_id: str, local: Path, remote: str) -> int: ...

    def download(self, sandbox_id: str, remote: str, local: Path, *,
                 max_bytes: int | None = None) -> int: ...


class FileCopies:
    """``cp(src, dst)``: exactly one side is ``ID:PATH``."""

    def cp(self: _Copies, src: str, dst: str) -> int:
        from sandboxer.errors import UsageError
        from sandboxer.values import split_remote

        into, out_of = split_remote(dst), split_remote(src)
        if into is not None and out_of is not None:
            raise UsageError("cp copies between this machine and one sandbox, not between "
                             "two sandboxes", hint="copy it out, then in")
        if into is not None:
            return self.upload(into[0], Path(src), into[1])
        if out_of is not None:
            return self.download(out_of[0], out_of[1], Path(dst))
        raise UsageError(f"cp {src} {dst}: neither names a sandbox path",
                         hint="write one side as ID:PATH, e.g. sbx-abcdefghij:notes.txt")
