from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from sandboxer.models.common import (
    SANDBOX_ID,
    format_duration,
    new_sandbox_id,
    parse_duration,
    validate_label,
)
from sandboxer.models.profile import TTL, Profile


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("8h", 28800), ("7d", 604800), (" 2h ", 7200), (30, 30)],
)
def test_durations_parse(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5", "5x", "h", "-1h", "0s", "1.5h", "1h30m", True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("seconds", "text"), [(90, "90s"), (900, "15m"), (86400, "1d"),
                                              (3600 * 36, "36h"), (61, "61s")])
def test_durations_format_round_trip(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_sandbox_ids_are_sbx_plus_10_base32() -> None:
    ids = {new_sandbox_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(SANDBOX_ID.fullmatch(i) for i in ids)


@pytest.mark.parametrize(
    ("key", "value"),
    [("a", "b;rm -rf /"), ("a", "$(id)"), ("a", "x y"), ("a", "`x`"), ("A", "b"),
     ("a", "caf\udcc3"), ("k|", "v"), ("a", "x" * 129)],
)
def test_unsafe_labels_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match="label"):
        validate_label(key, value)


def test_safe_labels_pass() -> None:
    validate_label("consumer", "glas-harness")
    validate_label("team/x.y", "a:b@c+d=e/f")


def test_ttl_default_must_fit_max() -> None:
    with pytest.raises(ValidationError, match=r"ttl.default must not exceed ttl.max"):
        TTL.model_validate({"default": "2d", "max": "1d"})


def test_profile_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Profile.model_validate({"id": "profile.x", "extension": "ext.local", "colour": 1})


def test_profile_ttl_serialises_in_duration_grammar() -> None:
    p = Profile.model_validate({"id": "profile.x", "extension": "ext.local",
                                "ttl": {"default": "90m", "max": "7d"}})
    assert p.model_dump(mode="json")["ttl"] == {"default": "90m", "max": "7d", "retain": None}
