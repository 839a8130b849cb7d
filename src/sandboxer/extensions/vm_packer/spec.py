"""The `spec` of an ext.vm-packer profile: a Packer-built VM, or a lease on an existing one."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sandboxer.models.base import StrictModel
from sandboxer.models.common import HostName, UserName

_SIZE = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_MEMORY = 64 << 20   # below this no kernel of ours boots; say so rather than round up
MAX_MEMORY = 1 << 40
MIN_DISK = 1 << 20
MAX_DISK = 64 << 40
_HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) [A-Za-z0-9+/=]+$")


def size_bytes(text: str) -> int:
    """``512M``, ``2G``, ``2048`` (MiB) as bytes."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected a size like 512M or 8G, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class PackerSpec(StrictModel):
    """Which template builds the image, with its user variables."""

    template: str  # relative to the profile file, else under packer/; or absolute
    vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("vars")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.fullmatch(r"^[A-Za-z_][A-Za-z0-9_-]*$", key):
                raise ValueError(f"expected Packer variable names, got {key!r}")
        return v


def _bounded(text: str, what: str, low: int, high: int) -> str:
    n = size_bytes(text)
    if not low <= n <= high:
        raise ValueError(f"{what} {text!r} is out of range: give {low >> 20}M to "
                         f"{high >> 40}T, like 512M or 2G")
    return text


class VMResources(StrictModel):
    """The VM's shape, its network and accelerator."""

    cpus: int = Field(default=1, ge=1, le=64)
    memory: str = "512M"
    disk: str | None = None  # grow the overlay (and the root fs) to this size
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    boot_timeout: int = Field(default=180, ge=5, le=3600)  # seconds until SSH answers

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        return _bounded(v, "vm.memory", MIN_MEMORY, MAX_MEMORY)

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str | None) -> str | None:
        return None if v is None else _bounded(v, "vm.disk", MIN_DISK, MAX_DISK)

    @property
    def memory_mib(self) -> int:
        return size_bytes(self.memory) >> 20


class SSHSpec(StrictModel):
    """The login of a booted VM (created at boot when the image lacks it)."""

    user: UserName | None = None  # default: the profile's reachability.user


class AttachSpec(StrictModel):
    """An existing VM to lease: no build, no boot."""

    host: HostName
    port: int = Field(default=22, ge=1, le=65535)
    user: UserName
    host_key: str  # "ssh-ed25519 AAAA..." pinned; never learned on first use
    identity: str  # path of the operator's key that may log in as ``user`` (never contents)

    @field_validator("host_key")
    @classmethod
    def _key(cls, v: str) -> str:
        v = " ".join(v.split()[:2])
        if not _HOST_KEY.fullmatch(v):
            raise ValueError("expected an OpenSSH public key line like 'ssh-ed25519 AAAA…'")
        return v


class VMSpec(StrictModel):
    """Either ``packer`` (+ ``vm``, ``ssh``) to boot a VM, or ``attach`` to lease one."""

    packer: PackerSpec | None = None
    vm: VMResources = Field(default_factory=VMResources)
    ssh: SSHSpec = Field(default_factory=SSHSpec)
    # Outbound network through QEMU's user-mode NAT; False = the SSH forward only.
    network: bool = False
    attach: AttachSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VMSpec:
        if (self.packer is None) == (self.attach is None):
            raise ValueError("give exactly one of packer (build and boot a VM) or attach "
                             "(lease an existing VM)")
        if self.attach is not None and self.network:
            raise ValueError("network applies to VMs booted from a Packer image; an "
                             "attached VM's network is its own")
        return self
