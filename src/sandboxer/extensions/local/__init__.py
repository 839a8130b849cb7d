"""ext.local: sandboxes jailed with bubblewrap on this machine, reached over SSH.

Importing this package stays light: ``LocalExtension`` (pydantic, the manager's contract)
loads on first use, so the CLI's fast paths can use ``wire`` alone; only the endpoint
daemon imports asyncssh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.extensions.local.extension import LocalExtension

__all__ = ["LocalExtension"]


def __getattr__(name: str) -> Any:
    if name == "LocalExtension":
        from sandboxer.extensions.local.extension import LocalExtension

        return LocalExtension
    raise AttributeError(name)
