"""ext.vm-packer: VMs from Packer-built images, booted with QEMU and reached over SSH.

``VMPackerExtension`` loads on first use, so the CLI's fast paths stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.extensions.vm_packer.extension import VMPackerExtension

__all__ = ["VMPackerExtension"]


def __getattr__(name: str) -> Any:
    if name == "VMPackerExtension":
        from sandboxer.extensions.vm_packer.extension import VMPackerExtension

        return VMPackerExtension
    raise AttributeError(name)
