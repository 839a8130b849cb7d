"""The ``spec`` section of an ext.local profile."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from sandboxer.models.base import StrictModel

_SIZE = re.compile(r" *(\d{1,15}) *([KMGT]?)i?B? *", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")


def parse_size(value: str) -> int:
    """``"2G"`` -> bytes; K/M/G/T suffixes are binary multiples."""
    m = _SIZE.fullmatch(value)
    if not m:
        raise ValueError(f"expected a size like 512M or 2G, got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _at_least(v: str, floor: int, what: str) -> str:
    if parse_size(v) < floor:
        raise ValueError(f"{what} must be at least {floor >> 20}M, got {v!r}")
    return v


class LocalLimits(StrictModel):
    """Bounds of the whole sandbox: every process of every session, and what they write.

    ``memory``, ``cpus`` and ``processes`` are one cgroup per sandbox where the host offers
    one (docs/security.md; ``sandboxer doctor`` says which); ``disk`` is the size of the
    filesystem image mounted on /workspace (root only).
    """

    processes: int = Field(256, ge=8, le=1 << 22,
                           description="tasks in the sandbox (pids cgroup, RLIMIT_NPROC)")
    memory: str = Field("2G", description="memory of the whole sandbox, tmpfs pages included")
    cpus: float = Field(2.0, gt=0, le=1024, description="CPU time, in cores (cgroup quota)")
    disk: str = Field("10G", description="size of /workspace (a filesystem image when root)")
    open_files: int = Field(1024, ge=16, le=1 << 20, description="RLIMIT_NOFILE")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        return _at_least(v, 64 << 20, "memory")

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str) -> str:
        return _at_least(v, 64 << 20, "disk")

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk)


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
        if v is not None and not _HOSTNAME.fullmatch(v):
            raise ValueError(f"expected a hostname label (letters, digits, -), got {v!r}")
        return v
