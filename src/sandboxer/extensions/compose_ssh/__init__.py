"""ext.compose-ssh: sandboxes as docker compose projects on docker hosts reached over SSH.

``ComposeSSHExtension`` loads on first use; only talking to a target imports asyncssh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

__all__ = ["ComposeSSHExtension"]


def __getattr__(name: str) -> Any:
    if name == "ComposeSSHExtension":
        from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

        return ComposeSSHExtension
    raise AttributeError(name)
