"""The documents of cp through the service: the API's files route and the MCP file tools."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from sandboxer.models.base import StrictModel


class FileCopied(StrictModel):
    """One file copied into (``in``) or out of (``out``) a sandbox."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)

    schema_: Literal["sandboxer.file/v1"] = Field("sandboxer.file/v1", alias="schema")
    sandbox_id: str
    path: str = Field(description="the path in the sandbox, as given")
    bytes: int = Field(ge=0)
    direction: Literal["in", "out"]


class FileContent(StrictModel):
    """A sandbox file's content (MCP ``download_file``): UTF-8 text as is, anything else
    base64."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)

    schema_: Literal["sandboxer.file-content/v1"] = Field("sandboxer.file-content/v1",
                                                          alias="schema")
    sandbox_id: str
    path: str
    bytes: int = Field(ge=0)
    encoding: Literal["text", "base64"]
    content: str
