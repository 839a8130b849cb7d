"""The one model base: unknown keys are errors everywhere."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sandboxer.models import building


class StrictModel(BaseModel):
    """Base of every sand-boxer model (``extra="forbid"``); validators built at import,
    or at first use in a process that asked for it (``models/building.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False,
                              defer_build=building.defer)


def build_all() -> None:
    """Build now the validator of every model imported so far whose build was deferred
    (``models/building.py``), in the calling thread."""
    todo: list[type[StrictModel]] = list(StrictModel.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not cls.__pydantic_complete__:
            # One that cannot be built yet is built at its first use, as before.
            cls.model_rebuild(raise_errors=False)
