"""Pydantic value types built on sandboxer.values (durations, labels, users, hosts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

from sandboxer.values import (
    LABEL_KEY,
    LABEL_VALUE,
    SANDBOX_ID,
    format_duration,
    iso,
    new_sandbox_id,
    parse_duration,
    safe_repr,
    utcnow,
    validate_host,
    validate_label,
    validate_labels,
    validate_user,
)

__all__ = [
    "LABEL_KEY", "LABEL_VALUE", "SANDBOX_ID", "Duration", "HostName", "Labels", "UserName",
    "format_duration", "iso",
    "new_sandbox_id", "parse_duration", "safe_repr", "utcnow", "validate_label",
    "validate_labels",
]

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
Labels = Annotated[dict[str, str], AfterValidator(validate_labels)]
# Every user and host that may reach an ssh argv (issue 12): one rule, sandboxer.values.
UserName = Annotated[str, AfterValidator(validate_user)]
HostName = Annotated[str, AfterValidator(validate_host)]
