"""The ``spec`` section of an ext.local profile."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from sandboxer.models.base import StrictModel

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$")


def parse_size(value: str) -> int:
    """``"2G"`` -> bytes; K/M/G/T suffixes are binary multiples."""
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"expected a size like 512M or 2G, got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class LocalLimits(StrictModel):
    """Resource limits applied to every process of the sandbox (rlimits)."""

    processes: int = Field(256, ge=8, description="RLIMIT_NPROC for the sandbox's host uid")
    memory: str = Field("2G", description="RLIMIT_AS per process, e.g. 512M or 2G")
    open_files: int = Field(1024, ge=16, description="RLIMIT_NOFILE")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if parse_size(v) < 64 << 20:
            raise ValueError(f"memory must be at least 64M, got {v!r}")
        return v

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)


class LocalSpec(StrictModel):
    """ext.local: a bubblewrap jail around a workspace directory, reached over SSH."""

    network: bool = Field(False, description="share the host network; False = loopback only")
    limits: LocalLimits = Field(default_factory=LocalLimits)
    shell: str = Field("/bin/sh", description="login shell inside the jail")
    hostname: str | None = Field(None, description="hostname inside; default the sandbox id")

    @field_validator("shell")
    @classmethod
    def _shell(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"shell must be an absolute path, got {v!r}")
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _HOSTNAME.match(v):
            raise ValueError(f"expected a hostname label (letters, digits, -), got {v!r}")
        return v
