"""The one model base: unknown keys are errors everywhere."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sandboxer.models import building


class StrictModel(BaseModel):
    """Base of every sand-boxer model (``extra="forbid"``); validators built at import,
    or at first use in a process that asked for it (``models/building.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False,
                              defer_build=building.defer)

