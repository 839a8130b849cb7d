"""The `spec` of an ext.vm-packer profile: a Packer-built VM, or a lease on an existing one."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sandboxer.models.base import StrictModel
from sandboxer.models.common import HostName, UserName

_SIZE = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
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


class VMResources(StrictModel):
    """The VM's shape and accelerator."""

    cpus: int = Field(default=1, ge=1, le=64)
    memory: str = "512M"
    disk: str | None = None  # grow the overlay (and the root fs) to this size
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    boot_timeout: int = Field(default=180, ge=5, le=3600)  # seconds until SSH answers

    @field_validator("memory", "disk")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            size_bytes(v)
        return v

    @property
    def memory_mib(self) -> int:
        return max(64, size_bytes(self.memory) >> 20)


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
    attach: AttachSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VMSpec:
        if (self.packer is None) == (self.attach is None):
            raise ValueError("give exactly one of packer (build and boot a VM) or attach "
                             "(lease an existing VM)")
        return self
