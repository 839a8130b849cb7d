"""A target as core keeps it: a name, the extension it belongs to and that extension's own
config document. Each extension validates its config with its own model."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import Field

from sandboxer.models.base import StrictModel

TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def name_problem(name: str) -> str | None:
    """What is wrong with a new target's name (the rule of every extension), or None."""
    if TARGET_NAME.fullmatch(name):
        return None
    return f"target name {name!r}: expected 1-63 of a-z, 0-9 and '-'"


class TargetRecord(StrictModel):
    """A target as the store keeps it: its name, its extension and that extension's own
    config document (validated by the extension's target config model, never by core)."""

    name: str
    extension: str
    config: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
