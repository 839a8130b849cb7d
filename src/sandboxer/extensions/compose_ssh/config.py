"""What ext.compose-ssh records for a target: a docker host reached over SSH.

Core stores it as a ``TargetRecord`` (name, extension, this model's document) and hands it
back through ``Host.targets``; only this extension reads or validates the document.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator

from sandboxer.errors import InvalidInput
from sandboxer.models.base import StrictModel
from sandboxer.models.common import HostName, Labels
from sandboxer.models.target import TARGET_NAME, TargetRecord
from sandboxer.values import safe_repr, validate_host, validate_user

EXTENSION = "ext.compose-ssh"
LOCAL = "local"
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")
# What a target's operator may allow beyond the secure default of ext.compose-ssh.
ALLOWABLE = ("privileged", "host-network", "host-pid", "host-ipc", "devices",
             "docker-socket", "host-paths", "extra-capabilities", "shared-namespaces",
             "external-resources", "driver-opts", "host-files", "host-cgroup", "ports",
             "env-file", "build", "extends", "include", "unlisted-keys")
# Record fields that are the record's own, not the config document's.
_RECORD_FIELDS = {"name", "extension", "created_at"}


class TargetConfig(StrictModel):
    """What `sandboxer targets add` records. Never a private key, only its path."""

    name: str
    extension: str = EXTENSION
    url: str
    identity_file: str | None = None
    public_host: HostName | None = None
    capacity: int | None = Field(default=None, ge=1)
    kind: Literal["self-hosted", "cloud"] = "self-hosted"
    host_keys: list[str] = Field(default_factory=list)  # known_hosts lines, first contact
    allow: list[str] = Field(default_factory=list)
    # What profiles pin or prefer by (``placement``), e.g. {"zone": "a", "gpu": "yes"}.
    labels: Labels = Field(default_factory=dict)
    created_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TARGET_NAME.fullmatch(v) or v == LOCAL:
            raise ValueError(
                f"target name {v!r}: expected 1-63 of a-z, 0-9 and '-', not 'local' "
                "(the implicit target for this machine)"
            )
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # urlsplit drops tabs and newlines silently: the URL stored would not be the one
        # checked. Refuse every control character and whitespace up front.
        if _CONTROL.search(v):
            raise ValueError(f"expected ssh://user@host[:port] with no whitespace or control "
                             f"characters, got {safe_repr(v)}")
        parts = urlsplit(v)
        if parts.scheme != "ssh" or not parts.hostname or not parts.username:
            raise ValueError(f"expected ssh://user@host[:port], got {v!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
            raise ValueError(f"expected ssh://user@host[:port] and nothing more, got {v!r}")
        port = parts.port  # raises ValueError for a port beyond 65535 or not a number
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"expected a TCP port 1-65535 in {v!r}, got {port}")
        validate_user(parts.username, "the URL's user")
        validate_host(parts.hostname, "the URL's host")
        return v

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(ALLOWABLE))
        if unknown:
            raise ValueError(f"unknown allow-list entries {unknown}; expected {list(ALLOWABLE)}")
        return sorted(set(v))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 22

    @property
    def user(self) -> str:
        return urlsplit(self.url).username or ""

    @property
    def endpoint_host(self) -> str:
        """Where consumers reach sandboxes on this target."""
        return self.public_host or self.host


def target_config(rec: TargetRecord) -> TargetConfig:
    """The compose config of a recorded target; InvalidInput if it breaks a newer rule."""
    try:
        return TargetConfig.model_validate({**rec.config, "name": rec.name,
                                            "extension": rec.extension,
                                            "created_at": rec.created_at})
    except ValidationError as e:  # recorded before a rule it breaks existed
        raise InvalidInput(
            f"recorded target {rec.name!r} is no longer valid: {e.errors()[0]['msg']}",
            hint=f"remove it with `sandboxer targets remove {rec.name}` and add it again",
        ) from e


def target_record(cfg: TargetConfig) -> TargetRecord:
    """What core stores of a compose target: the config document is every field but the
    record's own (name, extension, created_at)."""
    return TargetRecord(name=cfg.name, extension=cfg.extension, created_at=cfg.created_at,
                        config=cfg.model_dump(mode="json", exclude=_RECORD_FIELDS))
