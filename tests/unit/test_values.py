"""Repeated knowledge kept once in sandboxer.values: states, the sandbox id, label pairs."""

from __future__ import annotations

from typing import get_args

import pytest

from sandboxer import values
from sandboxer.models import sandbox


def test_states_agree_with_the_model() -> None:
    assert values.STATES == get_args(sandbox.State) == sandbox.STATES
    assert set(values.LIVE_STATES) | values.FINAL_STATES == set(values.STATES)
    assert not set(values.LIVE_STATES) & values.FINAL_STATES
    assert sandbox.LIVE_STATES is values.LIVE_STATES


def test_new_ids_match_the_one_sandbox_id_rule() -> None:
    assert all(values.SANDBOX_ID.fullmatch(values.new_sandbox_id()) for _ in range(50))
    assert not values.SANDBOX_ID.fullmatch("sbx-aaaaaaaaaa\n")


def test_parse_labels() -> None:
    assert values.parse_labels(["a=1", "b=", "a=2"]) == {"a": "2", "b": ""}
    with pytest.raises(ValueError, match=r"--label 'novalue': expected key=value"):
        values.parse_labels(["novalue"])
    with pytest.raises(ValueError, match=r"^label 'A=1': a label key is not allowed"):
        values.parse_labels(["A=1"], "label")
