"""The `spec` of an ext.compose-ssh profile."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from sandboxer.models.base import StrictModel


class Resources(StrictModel):
    """Limits applied to the main service."""

    cpus: float | None = Field(default=None, gt=0, le=256)
    memory: str | None = None  # docker's syntax: 512m, 2g
    pids: int | None = Field(default=None, ge=16)

    @model_validator(mode="after")
    def _memory(self) -> Resources:
        if self.memory is not None and not re.fullmatch(r"^\d+[bkmg]?$", self.memory.lower()):
            raise ValueError(f"resources.memory: expected e.g. 512m or 2g, got {self.memory!r}")
        return self


class ComposeSpec(StrictModel):
    """A compose project whose main service runs sshd (see images/sandbox-base)."""

    compose_file: str | None = None  # relative to the profile file, or absolute
    compose: dict[str, Any] | None = None  # the compose document inline
    service: str  # the main service: SSH lands here
    ssh_port: int = Field(default=22, ge=1, le=65535)
    pull: Literal["missing", "never", "always"] = "missing"
    # Also wait for every service's healthcheck (compose v2 `up --wait`); the sandbox is
    # ready when SSH answers either way.
    wait: bool = False
    resources: Resources = Field(default_factory=Resources)
    wait_timeout: int = Field(default=180, ge=5, le=3600)

    @model_validator(mode="after")
    def _one_source(self) -> ComposeSpec:
        if (self.compose_file is None) == (self.compose is None):
            raise ValueError("give exactly one of compose_file (a path) or compose (inline)")
        return self
