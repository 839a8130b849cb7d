"""The one model base: unknown keys are errors everywhere."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every sand-boxer model (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)
